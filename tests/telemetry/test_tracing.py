"""OpenTelemetry spans: run -> step -> llm call with the GenAI semantic-convention attributes and
the engine's own (cost, served_by, trust, cache hits, escalations), read with the SDK's in-memory
exporter; nothing is emitted once tracing is off."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine import Engine, telemetry

WORKFLOW = """\
name: triage
inputs: {text: {type: string}}
steps:
  - id: prep
    inputs: {text: "{{ inputs.text }}"}
    script: helpers.py:prep
  - id: ask
    inputs: {text: "{{ steps.prep.output }}"}
    llm:
      tier: local
      escalate: [premium]
      retries: 0
      cache: true
      prompt: "Label: {{ text }}"
      schema: {type: object, properties: {label: {type: string}}, required: [label]}
      max_tokens: 20
outputs:
  label: "{{ steps.ask.output.label }}"
"""


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.enable_tracing(provider)
    try:
        yield exporter
    finally:
        telemetry.disable_tracing()


def test_spans_nest_run_step_call_with_gen_ai_attributes(project, fake, tmp_path, spans):
    wf = project(WORKFLOW, files={"helpers.py": "def prep(text):\n    return text.strip()\n"})
    fake.enqueue("not json at all", {"label": "billing"})  # the local tier fails, premium answers
    with Engine(store=tmp_path / "s.db") as engine:
        first = engine.run(wf, {"text": " my card "})
        second = engine.run(wf, {"text": " my card "})  # the same input: the exact cache answers
    assert first.outputs == second.outputs == {"label": "billing"}
    finished = spans.get_finished_spans()
    runs = [s for s in finished if s.name == "engine.run triage"]
    assert [r.attributes["engine.run_id"] for r in runs] == [first.run_id, second.run_id]
    run = runs[0]
    assert run.parent is None and run.attributes["engine.status"] == "ok"
    assert run.attributes["engine.cost"] == pytest.approx(first.cost) and first.cost > 0
    children = {s.name: s for s in finished if s.parent is not None and s.parent.span_id == run.context.span_id}
    assert set(children) == {"engine.step prep", "engine.step ask"}
    prep, ask = children["engine.step prep"], children["engine.step ask"]
    assert prep.attributes["engine.served_by"] == "script" and prep.start_time <= ask.start_time
    assert ask.attributes["engine.served_by"] == "llm" and ask.attributes["engine.escalations"] == 1
    assert ask.attributes["engine.cache.hit"] is False and ask.attributes["engine.trust"] == first.step("ask").trust
    assert ask.attributes["gen_ai.usage.input_tokens"] == first.step("ask").tokens_in > 0
    calls = sorted((s for s in finished if s.parent is not None and s.parent.span_id == ask.context.span_id),
                   key=lambda s: s.start_time)
    assert [c.attributes["gen_ai.request.model"] for c in calls] == ["small", "large"]
    assert [c.attributes["engine.outcome"] for c in calls] == ["invalid", "valid"]
    assert calls[0].attributes["engine.reason"] == "escalate"
    assert all(c.attributes["gen_ai.system"] == "fake" and c.attributes["gen_ai.operation.name"] == "chat"
               for c in calls)
    premium = first.step("ask").calls[-1]
    assert calls[1].attributes["gen_ai.usage.input_tokens"] == premium["tokens_in"]
    assert calls[1].attributes["gen_ai.usage.output_tokens"] == premium["tokens_out"]
    assert calls[1].attributes["engine.cost"] == pytest.approx(premium["cost"])
    assert ask.start_time <= calls[0].start_time <= calls[0].end_time <= calls[1].start_time <= ask.end_time
    assert run.start_time <= prep.start_time and ask.end_time <= run.end_time
    cached = next(s for s in finished if s.name == "engine.step ask" and s.parent.span_id == runs[1].context.span_id)
    assert cached.attributes["engine.served_by"] == "cache" and cached.attributes["engine.cache.hit"] is True
    assert not [s for s in finished if s.parent is not None and s.parent.span_id == cached.context.span_id]


def test_a_failed_run_marks_its_spans_as_errors(project, fake, tmp_path, spans):
    from opentelemetry.trace import StatusCode

    from engine.errors import ProviderError

    wf = project(WORKFLOW, files={"helpers.py": "def prep(text):\n    return text\n"})
    fake.enqueue(ProviderError("down", provider="fake", model="small"), "still not json")
    with Engine(store=tmp_path / "s.db") as engine:
        result = engine.run(wf, {"text": "x"})
    assert not result.ok
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert finished["engine.run triage"].status.status_code == StatusCode.ERROR
    assert finished["engine.step ask"].status.status_code == StatusCode.ERROR
    assert finished["chat small"].status.status_code == StatusCode.ERROR
    assert finished["chat large"].attributes["engine.outcome"] == "invalid"


def test_tracing_off_emits_nothing(project, fake, tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.enable_tracing(provider)
    telemetry.disable_tracing()
    assert telemetry.ACTIVE is (telemetry.run_metrics() is not None)
    wf = project(WORKFLOW, files={"helpers.py": "def prep(text):\n    return text\n"})
    fake.enqueue({"label": "a"})
    with Engine(store=tmp_path / "s.db") as engine:
        assert engine.run(wf, {"text": "x"}).ok
    assert exporter.get_finished_spans() == ()
