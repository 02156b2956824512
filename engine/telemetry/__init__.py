"""Telemetry: OpenTelemetry spans (run -> step -> llm call) and Prometheus metrics of runs.

    from engine import telemetry
    telemetry.enable_tracing()        # spans to the global tracer provider (pip install 'engine[otel]')
    telemetry.enable_metrics()        # counters behind `engine serve`'s /metrics
    ENGINE_TRACING=1 engine serve ... # the same from the environment

Off by default and free when off: the run loop checks one module-level boolean (`ACTIVE`) when a
run finishes, and only then hands the finished `RunResult` to the tracer and the counters. Spans
are built from the run's records after it finished (steps carry their start; llm calls within a
step follow each other), so no context travels through the run loop's threads or event loop.
"""

from __future__ import annotations

import os
import time
from typing import Any

ACTIVE = False
"""True when tracing or metrics are on: the run loop's one check."""
_tracing: Any = None
"""`engine.telemetry.tracing.RunTracer` while tracing is on."""
_metrics: Any = None
"""`engine.telemetry.metrics.RunMetrics` while metrics are on."""


def enable_tracing(tracer_provider: Any = None) -> None:
    """Emit a span per run, step and llm call to `tracer_provider` (default: the global one;
    when none is configured and the OpenTelemetry SDK is installed, an SDK provider that exports
    over OTLP when `opentelemetry-exporter-otlp` is installed)."""
    global _tracing, ACTIVE
    from engine.telemetry.tracing import RunTracer

    _tracing = RunTracer(tracer_provider)
    ACTIVE = True


def disable_tracing() -> None:
    global _tracing, ACTIVE
    _tracing = None
    ACTIVE = _metrics is not None


def enable_metrics() -> Any:
    """Count runs, calls, tokens, cost, answers by source and trust and errors by kind (this
    process); returns the `RunMetrics` (its `exposition()` is the /metrics body)."""
    global _metrics, ACTIVE
    from engine.telemetry.metrics import RunMetrics

    if _metrics is None:
        _metrics = RunMetrics()
    ACTIVE = True
    return _metrics


def disable_metrics() -> None:
    global _metrics, ACTIVE
    _metrics = None
    ACTIVE = _tracing is not None


def run_metrics() -> Any:
    """The `RunMetrics` while metrics are on, else None."""
    return _metrics


def observe_run(result: Any, started: float) -> None:
    """A run finished (`started`: its `time.perf_counter()` at the start): spans and counters."""
    tracing, counters = _tracing, _metrics
    if tracing is not None:
        end_ns = time.time_ns()
        tracing.record(result, started, end_ns - int((time.perf_counter() - started) * 1e9), end_ns)
    if counters is not None:
        counters.observe(result)


if os.environ.get("ENGINE_TRACING", "").lower() in ("1", "true", "yes", "on"):
    try:
        enable_tracing()
    except Exception as e:  # noqa: BLE001 - a missing package must not stop runs: say so once, trace nothing
        import sys

        print(f"engine: ENGINE_TRACING is set but tracing is off: {e}", file=sys.stderr)
