from __future__ import annotations

import pytest

from engine import run_workflow
from engine.errors import ConfigError, ProviderTimeoutError
from engine.providers.base import CompletionRequest, Provider
from engine.providers.fake import FakeProvider
from engine.providers.registry import get_provider, register_provider, unregister_provider


def test_builtins_come_from_entry_points():
    unregister_provider("fake")
    provider = get_provider("fake")
    assert isinstance(provider, FakeProvider) and isinstance(provider, Provider)
    assert get_provider("fake") is provider  # one shared instance
    unregister_provider("fake")


def test_unknown_provider_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown provider 'nope' \(known: .*fake.*llamacpp"):
        get_provider("nope")


def test_queue_order_errors_and_requests_kept():
    fake = FakeProvider().enqueue("a", {"b": 1}, ProviderTimeoutError("slow"))
    req = CompletionRequest(model="m", messages=[{"role": "user", "content": "hi there"}], max_tokens=5)
    assert fake.complete(req).text == "a"
    assert fake.complete(req).text == '{"b": 1}'
    with pytest.raises(ProviderTimeoutError):
        fake.complete(req)
    assert len(fake.requests) == 3 and fake.complete.__self__ is fake


def test_seeded_replies_from_config_for_offline_examples(project):
    wf = project(
        """\
        name: offline
        inputs: {q: {type: string}}
        steps:
          - id: ask
            inputs: {q: "{{ inputs.q }}"}
            llm: {prompt: "{{ q }}", schema: {type: string}, max_tokens: 5}
        """,
        config="""
        tiers:
          local:
            - model: fake:demo
              options: {replies: ['"one"', '"two"']}
        """,
    )
    register_provider("fake", FakeProvider())
    try:
        assert [run_workflow(wf, {"q": str(i)}).outputs["ask"] for i in range(3)] == ["one", "two", "one"]
    finally:
        unregister_provider("fake")
