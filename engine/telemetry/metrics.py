"""Prometheus metrics of this process's runs, in the text exposition format (no dependency).

    engine_runs_total{workflow,status}                      runs finished
    engine_run_duration_seconds_sum / _count{workflow}      run latency
    engine_llm_calls_total{workflow,tier,model,outcome}     provider calls (valid, invalid, error, skipped)
    engine_tokens_total{workflow,model,direction}           tokens in (input) and out (output)
    engine_cost_usd_total{workflow}                         what the calls cost
    engine_answers_total{workflow,source,trust}             llm steps answered, by what served them
                                                            (llm, cache, lookup, ...) and trust level
    engine_errors_total{kind}                               provider errors, invalid outputs, budget
                                                            refusals, failed steps by step kind
    engine_check_queue_pending / _peak, engine_check_queue_submitted_total / _dropped_total
                                                            quality checks off the request path
                                                            (passed in by the server: `gauges`)

Counters are per process (each `engine serve --workers N` worker has its own; Prometheus sums
them across scrape targets).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

Labels = tuple[tuple[str, str], ...]

_HELP = {
    "engine_runs_total": ("counter", "Workflow runs finished, by workflow and status."),
    "engine_run_duration_seconds": ("summary", "Run latency in seconds."),
    "engine_llm_calls_total": ("counter", "LLM provider calls, by tier, model and outcome."),
    "engine_tokens_total": ("counter", "LLM tokens, by model and direction (input, output)."),
    "engine_cost_usd_total": ("counter", "Cost of LLM calls in US dollars."),
    "engine_answers_total": ("counter", "LLM steps answered, by source (llm, cache, lookup, ...) and trust."),
    "engine_errors_total": ("counter", "Errors by kind: provider, invalid_output, budget, step_<kind>."),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


class RunMetrics:
    """Counters of finished runs (thread-safe); `exposition()` renders them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))

    def _add(self, name: str, labels: Labels, value: float = 1.0) -> None:
        self._counters[name][labels] += value

    def observe(self, result: Any) -> None:
        wf = str(result.workflow)
        with self._lock:
            self._add("engine_runs_total", (("workflow", wf), ("status", str(result.status))))
            self._add("engine_run_duration_seconds_sum", (("workflow", wf),), result.latency_ms / 1000)
            self._add("engine_run_duration_seconds_count", (("workflow", wf),))
            for step in result.steps:
                for call in step.calls:
                    model = str(call.get("model") or "")
                    outcome = str(call.get("outcome") or "")
                    self._add("engine_llm_calls_total", (("workflow", wf), ("tier", str(call.get("tier") or "")),
                                                         ("model", model), ("outcome", outcome)))
                    for direction, key in (("input", "tokens_in"), ("output", "tokens_out")):
                        if call.get(key):
                            self._add("engine_tokens_total", (("workflow", wf), ("model", model),
                                                              ("direction", direction)), call[key])
                    if call.get("cost"):
                        self._add("engine_cost_usd_total", (("workflow", wf),), call["cost"])
                    if outcome == "error":
                        self._add("engine_errors_total", (("kind", "provider"),))
                    elif outcome == "invalid":
                        self._add("engine_errors_total", (("kind", "invalid_output"),))
                    elif outcome == "skipped" and call.get("reason") == "budget":
                        self._add("engine_errors_total", (("kind", "budget"),))
                if step.kind == "llm" and step.status == "ok" and step.served_by:
                    self._add("engine_answers_total", (("workflow", wf), ("source", str(step.served_by)),
                                                       ("trust", str(step.trust or "none"))))
                if step.status == "failed":
                    self._add("engine_errors_total", (("kind", f"step_{step.kind}"),))

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name` over the series whose labels include `labels` (for tests and tools)."""
        with self._lock:
            series = dict(self._counters.get(name, {}))
        return sum(v for k, v in series.items() if set(labels.items()) <= set(k))

    def exposition(self, gauges: dict[str, float] | None = None) -> str:
        """The Prometheus text format (version 0.0.4) of the counters and `gauges`
        (name -> value; a name ending in `_total` is typed a counter)."""
        with self._lock:
            counters = {name: dict(series) for name, series in self._counters.items()}
        lines: list[str] = []
        for family, (kind, text) in _HELP.items():
            lines.append(f"# HELP {family} {text}")
            lines.append(f"# TYPE {family} {kind}")
            names = [f"{family}_sum", f"{family}_count"] if kind == "summary" else [family]
            for name in names:
                for labels, value in sorted(counters.get(name, {}).items()):
                    lines.append(f"{name}{_labels(labels)} {_number(value)}")
        for name, value in sorted((gauges or {}).items()):
            lines.append(f"# TYPE {name} {'counter' if name.endswith('_total') else 'gauge'}")
            lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"
