"""OpenTelemetry spans of finished runs, following the GenAI semantic conventions.

    engine.run <workflow>            engine.run_id, engine.status, engine.cost, engine.tokens_in/out
      engine.step <step id>          engine.step.kind, engine.served_by, engine.trust, engine.cache.hit,
                                     engine.lookup.hit, engine.escalations, engine.cost
        chat <model>                 gen_ai.operation.name=chat, gen_ai.system, gen_ai.request.model,
                                     gen_ai.response.model, gen_ai.usage.input_tokens/output_tokens,
                                     engine.tier, engine.outcome, engine.reason, engine.cost

A run's span is a child of the span current where the run was called (an HTTP request's, a
batch's), so runs join the caller's trace. A failed step or call sets the span's status to ERROR.
Needs `opentelemetry-api` (the `otel` extra brings the SDK too).
"""

from __future__ import annotations

from typing import Any

from engine.errors import UserError

GEN_AI_SYSTEMS = {"openai": "openai", "openai_compat": "openai", "anthropic": "anthropic",
                  "llamacpp": "llama.cpp", "fake": "fake"}
"""`gen_ai.system` by provider name (others pass through)."""


def _provider(tracer_provider: Any) -> Any:
    from opentelemetry import trace

    if tracer_provider is not None:
        return tracer_provider
    current = trace.get_tracer_provider()
    if not isinstance(current, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return current
    try:  # nothing configured: the SDK's provider, exporting over OTLP when the exporter is there
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return current
    provider = TracerProvider()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found]
    except ImportError:
        OTLPSpanExporter = None
    if OTLPSpanExporter is not None:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


class RunTracer:
    """Turns a finished `RunResult` into spans with explicit start and end times."""

    def __init__(self, tracer_provider: Any = None):
        try:
            from opentelemetry import trace
        except ImportError:
            raise UserError("tracing needs OpenTelemetry: pip install 'engine[otel]'") from None
        self.trace = trace
        self.tracer = _provider(tracer_provider).get_tracer("engine")

    def record(self, result: Any, started: float, start_ns: int, end_ns: int) -> None:
        trace = self.trace
        run = self.tracer.start_span(f"engine.run {result.workflow}", start_time=start_ns, attributes={
            "engine.workflow": result.workflow, "engine.run_id": result.run_id, "engine.status": result.status,
            "engine.cost": float(result.cost), "engine.tokens_in": int(result.tokens_in),
            "engine.tokens_out": int(result.tokens_out), "engine.latency_ms": float(result.latency_ms)})
        if not result.ok:
            run.set_status(trace.Status(trace.StatusCode.ERROR, result.error or "failed"))
        parent = trace.set_span_in_context(run)
        for step in result.steps:
            step_start = start_ns + int(max(0.0, step.started - started) * 1e9) if step.started else start_ns
            step_end = step_start + int(step.latency_ms * 1e6)
            attributes: dict[str, Any] = {
                "engine.step.id": step.step_id, "engine.step.kind": step.kind, "engine.step.status": step.status,
                "engine.cost": float(step.cost), "engine.attempts": int(step.attempts)}
            if step.served_by:
                attributes["engine.served_by"] = step.served_by
            if step.trust:
                attributes["engine.trust"] = step.trust
            if step.tier:
                attributes["engine.tier"] = step.tier
            if step.kind == "llm":
                attributes["engine.cache.hit"] = step.served_by == "cache"
                attributes["engine.lookup.hit"] = step.served_by not in (None, "llm", "cache")
                attributes["engine.escalations"] = sum(
                    1 for a in step.calls if a.get("reason") in ("escalate", "low_confidence"))
                if step.cache:
                    attributes["engine.cache.kind"] = str(step.cache.get("kind"))
                if step.model:
                    attributes["gen_ai.request.model"] = step.model
                attributes["gen_ai.usage.input_tokens"] = int(step.tokens_in)
                attributes["gen_ai.usage.output_tokens"] = int(step.tokens_out)
            span = self.tracer.start_span(f"engine.step {step.step_id}", context=parent, start_time=step_start,
                                          attributes=attributes)
            if step.status == "failed":
                span.set_status(trace.Status(trace.StatusCode.ERROR, step.error or "failed"))
            at = step_start
            step_context = trace.set_span_in_context(span)
            for call in step.calls:
                self._call(call, step_context, at)
                at += int((call.get("latency_ms") or 0.0) * 1e6)
            span.end(end_time=max(step_end, at))
        run.end(end_time=end_ns)

    def _call(self, call: dict[str, Any], context: Any, start_ns: int) -> None:
        model = str(call.get("model") or "")
        provider = str(call.get("provider") or "")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.system": GEN_AI_SYSTEMS.get(provider, provider),
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": int(call.get("tokens_in") or 0),
            "gen_ai.usage.output_tokens": int(call.get("tokens_out") or 0),
            "engine.tier": str(call.get("tier") or ""), "engine.outcome": str(call.get("outcome") or ""),
            "engine.cost": float(call.get("cost") or 0.0), "engine.attempt": int(call.get("attempt") or 1)}
        if call.get("served_model"):
            attributes["gen_ai.response.model"] = str(call["served_model"])
        if call.get("finish_reason"):
            attributes["gen_ai.response.finish_reasons"] = [str(call["finish_reason"])]
        if call.get("reason"):
            attributes["engine.reason"] = str(call["reason"])
        if call.get("trust"):
            attributes["engine.trust"] = str(call["trust"])
        span = self.tracer.start_span(f"chat {model}", context=context, start_time=start_ns, attributes=attributes,
                                      kind=self.trace.SpanKind.CLIENT)
        if call.get("outcome") == "error":
            span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, str(call.get("error") or "")))
        span.end(end_time=start_ns + int((call.get("latency_ms") or 0.0) * 1e6))

