"""Fault injection at the HTTP layer: 30% of calls fail (429, 500, timeouts, malformed JSON).

200 runs through the openai adapter on a mock transport, four at a time. Every run ends either
successful (through fallbacks, re-asks, escalation) or with a clear LLMStepError, and the store's
cost, token and attempt records add up to what the server actually answered.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from sdkmock import MockServer

from engine import LLMStepError, run_workflow
from engine.config import load_config
from engine.providers.openai import OpenAIProvider
from engine.providers.registry import register_provider, unregister_provider
from engine.runner import open_store

WORKFLOW = """\
name: faults
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: standard
      prompt: "Label this: {{ text }}"
      schema:
        type: object
        properties: {label: {enum: [spam, ham]}}
        required: [label]
        additionalProperties: false
      max_tokens: 16
      retries: 1
      escalate: [premium]
"""
CONFIG = """
fallbacks: {cooldown_s: 0.02, allowed_fails: 2}
tiers:
  standard:
    - model: openai:gpt-4o-mini
    - model: openai:gpt-4.1-mini
  premium:
    - model: openai:gpt-4o
"""
FAULTS = ["429", "500", "timeout", "malformed_body", "malformed_json"]


class FlakyServer:
    def __init__(self, seed: int = 7, rate: float = 0.3):
        self.rng = random.Random(seed)
        self.rate = rate
        self.lock = threading.Lock()
        self.answered = {"requests": 0, "ok": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached": 0}
        self.injected = {f: 0 for f in FAULTS}
        self.mock = MockServer(openai, self.handle)

    def handle(self, body, request):
        http = self.mock.http
        with self.lock:
            self.answered["requests"] += 1
            fault = self.rng.choice(FAULTS) if self.rng.random() < self.rate else None
            if fault:
                self.injected[fault] += 1
            label = self.rng.choice(["spam", "ham"])
            prompt = 50 + self.rng.randrange(50)
            cached = self.rng.choice([0, 32])
            if fault in (None, "malformed_json"):
                self.answered["ok"] += 1
                self.answered["prompt_tokens"] += prompt
                self.answered["completion_tokens"] += 6
                self.answered["cached"] += cached
        if fault == "429":
            return http.Response(429, json={"error": {"message": "Rate limit", "type": "requests",
                                                      "code": "rate_limit_exceeded"}},
                                 headers={"retry-after": "0.01"})
        if fault == "500":
            return http.Response(500, json={"error": {"message": "server error", "type": "server_error"}})
        if fault == "timeout":
            raise http.ReadTimeout("read timed out", request=request)
        if fault == "malformed_body":
            return http.Response(200, content=b'{"id": "chatcmpl-1", "choices": [{"ind',
                                 headers={"content-type": "application/json"})
        content = '{"label": "' + label + '"' if fault == "malformed_json" else '{"label": "' + label + '"}'
        return http.Response(200, json={
            "id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 6, "total_tokens": prompt + 6,
                      "prompt_tokens_details": {"cached_tokens": cached}}})


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    server = FlakyServer()
    register_provider("openai", OpenAIProvider(http_client=server.mock.client))
    yield server
    unregister_provider("openai")


def test_200_runs_under_30_percent_faults(project, flaky):
    wf = project(WORKFLOW, config=CONFIG)

    def one(i):
        try:
            return run_workflow(wf, {"text": f"message {i}"})
        except LLMStepError as e:
            return e

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(one, range(200)))

    ok = [o for o in outcomes if not isinstance(o, Exception)]
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert len(ok) + len(failed) == 200
    assert all(set(o.outputs) == {"classify"} and o.outputs["classify"]["label"] in ("spam", "ham") for o in ok)
    assert all("no valid output after" in str(e) for e in failed)
    assert len(ok) >= 180  # fallbacks and escalation carry nearly every run through
    assert all(flaky.injected[f] > 0 for f in FAULTS)
    served_by_fallback = [o for o in ok if o.step("classify").calls[0]["outcome"] != "valid"]
    assert served_by_fallback  # some runs only succeeded by moving on

    store = open_store(load_config().store_path())
    calls = store.query("SELECT * FROM llm_calls WHERE workflow = 'faults'")
    made = [c for c in calls if c["outcome"] != "skipped"]
    assert len(made) == flaky.answered["requests"]  # one record per HTTP request, none lost
    assert sum(c["tokens_in"] for c in calls) == flaky.answered["prompt_tokens"]
    assert sum(c["tokens_out"] for c in calls) == flaky.answered["completion_tokens"]
    assert sum(c["cached_tokens"] for c in calls) == flaky.answered["cached"]
    errors = [c for c in calls if c["outcome"] == "error"]
    assert len(errors) == sum(flaky.injected[f] for f in ("429", "500", "timeout", "malformed_body"))
    assert all(c["reason"] == "fallback" for c in errors)
    assert sum(c["outcome"] == "invalid" for c in calls) == flaky.injected["malformed_json"]

    runs = store.query("SELECT * FROM runs WHERE workflow = 'faults'")
    steps = {s["run_id"]: s for s in store.query("SELECT * FROM steps")}
    assert len(runs) == 200
    for run in runs:
        mine = [c for c in calls if c["run_id"] == run["id"]]
        assert run["cost"] == pytest.approx(sum(c["cost"] for c in mine), abs=1e-12)
        assert steps[run["id"]]["attempts"] == sum(c["outcome"] != "skipped" for c in mine)
        assert steps[run["id"]]["cost"] == pytest.approx(run["cost"], abs=1e-12)
        assert (run["status"] == "ok") == any(c["outcome"] == "valid" for c in mine)
    assert sum(r["cost"] for r in runs) == pytest.approx(sum(c["cost"] for c in calls))
    assert sum(r["cost"] for r in runs) > 0
