"""`engine cache stats / clear / inspect`."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from engine import run_workflow
from engine.cli import cli

from cache_helpers import label_workflow


def test_stats_clear_inspect(project, fake, vectors):
    vectors({"a": [1.0, 0.0, 0.0], "b": [0.95, math.sqrt(1 - 0.95 ** 2), 0.0]})
    fake.enqueue({"label": "spam"})
    wf = project(label_workflow(cache="        semantic: {threshold: 0.9, embedder: vectors}\n"))
    first = run_workflow(wf, {"text": "a"})
    run_workflow(wf, {"text": "a"})
    near = run_workflow(wf, {"text": "b"})
    runner = CliRunner()

    stats = json.loads(runner.invoke(cli, ["cache", "stats", "--json"]).output)
    assert stats == [{
        # 2 entries: "a" (with its vector) and the exact entry the semantic hit left for "b"
        "workflow": "label", "step_id": "classify", "entries": 2, "vectors": 1, "lookups": 3, "exact_hits": 1,
        "semantic_hits": 1, "hit_rate": 2 / 3,
        "tokens_saved": 2 * (first.tokens_in + first.tokens_out), "cost_saved": stats[0]["cost_saved"],
        # a single-tier step has no reference: its answers stay unverified, and are served as such
        "unverified_hits": 2, "bypassed": 0, "entries_by_trust": {"unverified": 2}}]
    assert abs(stats[0]["cost_saved"] - 2 * first.cost) < 1e-12 and first.cost > 0
    table = runner.invoke(cli, ["cache", "stats"])
    assert table.exit_code == 0 and "66.7%" in table.output

    hits = json.loads(runner.invoke(cli, ["cache", "inspect", "--run", near.run_id[:8], "--json"]).output)
    assert len(hits) == 1 and hits[0]["kind"] == "semantic"
    assert abs(hits[0]["similarity"] - 0.95) < 1e-6 and hits[0]["entry_text"] == "a"
    assert hits[0]["entry_output"] == {"label": "spam"}
    assert hits[0]["trust"] == "unverified" and hits[0]["entry_trust"] == "unverified"
    shown = runner.invoke(cli, ["cache", "inspect"]).output
    assert "semantic" in shown and "served unverified" in shown

    assert "removed 0" in runner.invoke(cli, ["cache", "clear", "--step", "other"]).output
    assert "removed 2 cache entries" in runner.invoke(cli, ["cache", "clear", "--step", "classify"]).output
    fake.enqueue({"label": "ham"})
    assert run_workflow(wf, {"text": "b"}).outputs == {"label": "ham"}  # cleared: the in-memory index too


def test_run_tenant_flag(project, fake):
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    wf = project(label_workflow())
    runner = CliRunner()
    assert json.loads(runner.invoke(cli, ["run", str(wf), "-i", "text=x", "--tenant", "a", "-q"]).output)["label"] == "spam"
    assert json.loads(runner.invoke(cli, ["run", str(wf), "-i", "text=x", "--tenant", "b", "-q"]).output)["label"] == "ham"
    assert json.loads(runner.invoke(cli, ["run", str(wf), "-i", "text=x", "--tenant", "a", "-q"]).output)["label"] == "spam"
