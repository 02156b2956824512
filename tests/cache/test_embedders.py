"""Embedders: the offline default (all-MiniLM-L6-v2 from its PyPI package), hashing, and the
OpenAI endpoint at the HTTP level against a local server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from engine.cache.embedders import HashEmbedder, MiniLMEmbedder, OpenAIEmbedder, get_embedder, minilm_path
from engine.errors import AuthenticationError, ConfigError, RateLimitError


def test_hash_embedder_is_deterministic_unit_and_near_for_respellings():
    e = HashEmbedder()
    a, b, c = e.embed(["Where is my card?", "where is my  card", "exchange rate for euros"])
    assert np.allclose(e.embed(["Where is my card?"])[0], a)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-6)
    assert a @ b > 0.8 > a @ c


def test_minilm_runs_offline_from_the_package(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (minilm_path() / "model.safetensors").is_file()
    e = get_embedder("minilm")
    assert isinstance(e, MiniLMEmbedder)
    v = e.embed(["I lost my card", "My card has gone missing", "What is the exchange rate?"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.linalg.norm(v, axis=1) == pytest.approx([1, 1, 1], abs=1e-5)
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2]


def test_unknown_embedder_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown embedder"):
        get_embedder("nope")


class _Handler(BaseHTTPRequestHandler):
    status = 200
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        _Handler.seen.append({"auth": self.headers["authorization"], "body": body, "path": self.path})
        if _Handler.status != 200:
            self.send_response(_Handler.status)
            self.send_header("retry-after", "3")
            self.end_headers()
            self.wfile.write(b'{"error": "nope"}')
            return
        data = [{"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(body["input"])][::-1]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"data": data}).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.status, _Handler.seen = 200, []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_openai_embedder_http(server):
    e = OpenAIEmbedder("text-embedding-3-small", api_key="sk-test", base_url=server)
    v = e.embed(["ab", "abcd"])
    assert _Handler.seen[0]["path"] == "/v1/embeddings" and _Handler.seen[0]["auth"] == "Bearer sk-test"
    assert _Handler.seen[0]["body"] == {"model": "text-embedding-3-small", "input": ["ab", "abcd"]}
    assert np.allclose(v, np.array([[2, 1], [4, 1]]) / np.linalg.norm([[2, 1], [4, 1]], axis=1, keepdims=True))
    assert e.name == "openai:text-embedding-3-small"


@pytest.mark.parametrize("status, error", [(401, AuthenticationError), (429, RateLimitError)])
def test_openai_embedder_maps_http_errors(server, status, error):
    _Handler.status = status
    with pytest.raises(error) as info:
        OpenAIEmbedder(api_key="sk-test", base_url=server).embed(["x"])
    if status == 429:
        assert info.value.retry_after == 3.0


def test_openai_embedder_without_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(AuthenticationError):
        OpenAIEmbedder().embed(["x"])


def _tiny_static_model(folder):
    """A real model2vec model on MiniLM's own tokenizer, with vectors made so that texts sharing
    words are near each other (one random vector per token)."""
    import numpy as np
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    from engine.cache.embedders import minilm_path

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    vectors = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), 32)).astype(np.float32)
    StaticModel(vectors, tokenizer).save_pretrained(str(folder))
    return folder


def test_static_embedder_loads_a_model2vec_folder_and_embeds_unit_rows(tmp_path, monkeypatch):
    import numpy as np

    from engine.cache.embedders import StaticEmbedder, get_embedder, unregister_embedder

    folder = _tiny_static_model(tmp_path / "static")
    embedder = get_embedder(f"static:{folder}")
    assert isinstance(embedder, StaticEmbedder)
    vectors = embedder.embed(["my card has not arrived", "my card has not arrived yet", "exchange rate"])
    assert vectors.shape == (3, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    # `static` alone reads $ENGINE_STATIC_EMBEDDER (else $ENGINE_HOME/models/minilm-static)
    unregister_embedder("static")
    monkeypatch.setenv("ENGINE_STATIC_EMBEDDER", str(folder))
    assert np.allclose(get_embedder("static").embed(["exchange rate"]), vectors[2:])
    unregister_embedder("static")


def test_static_embedder_without_a_model_says_how_to_build_one(tmp_path):
    import pytest

    from engine.cache.embedders import StaticEmbedder
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="examples/static_embedder/build.py"):
        StaticEmbedder(tmp_path / "missing")
