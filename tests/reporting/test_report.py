"""`build_report` and `engine report`: groups, filters, tags, baseline, HTML chart."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from engine import run_workflow
from engine.cli import cli
from engine.config import load_config
from engine.errors import ProviderUnavailableError, ReportError
from engine.reporting import ReportFilter, build_report, parse_time
from engine.runner import open_store

WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: standard
      prompt: "Label this: {{ text }}"
      schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label]}
      max_tokens: 12
      cache: false
      retries: 0
      escalate: [premium]
"""
CONFIG = """
tiers:
  standard:
    - {model: "fake:a", input_price: 1, output_price: 2}
    - {model: "fake:b", input_price: 1, output_price: 2}
  premium:
    - {model: "fake:p", input_price: 10, output_price: 30, cached_input_price: 1}
"""


@pytest.fixture
def history(project, fake):
    wf = project(WORKFLOW, config=CONFIG)
    fake.enqueue({"label": "ham"})                                  # run 1: standard/a
    run_workflow(wf, {"text": "one"}, tags={"user": "ann"})
    fake.enqueue(ProviderUnavailableError("down"), {"label": "ham"})  # run 2: fallback to b
    run_workflow(wf, {"text": "two"}, tags={"user": "bob"})
    fake.enqueue("junk", {"label": "spam"})                          # run 3: escalates to premium
    run_workflow(wf, {"text": "three"}, tags={"user": "ann"})
    return open_store(load_config().store_path())


def test_groups_and_totals(history):
    report = build_report(history, by=["workflow", "step", "tier", "model", "source", "tag:user"])
    t = report.totals
    assert {r["key"]: r["steps"] for r in report.groups["step"]} == {"classify": 3}
    assert (t["runs"], t["steps"], t["calls"], t["fallbacks"], t["escalations"]) == (3, 3, 5, 1, 1)
    calls = history.query("SELECT SUM(cost) AS c, SUM(tokens_in) AS i FROM llm_calls")[0]
    assert t["cost"] == pytest.approx(calls["c"]) and t["tokens_in"] == calls["i"]
    by_source = {r["key"]: r for r in report.groups["source"]}
    assert set(by_source) == {"llm:standard", "llm:premium"} and by_source["llm:standard"]["steps"] == 2
    assert {r["key"]: r["steps"] for r in report.groups["model"]} == {"fake:a": 1, "fake:b": 1, "fake:p": 1}
    assert {r["key"]: r["steps"] for r in report.groups["tag:user"]} == {"ann": 2, "bob": 1}
    # the baseline prices every step at the dearest model (fake:p): more than what was paid
    assert t["baseline_cost"] > t["cost"] > 0 and t["savings"] == pytest.approx(t["baseline_cost"] - t["cost"])
    assert report.timeline and {r["source"] for r in report.timeline} == {"llm:standard", "llm:premium"}


def test_run_record_carries_the_baseline(history):
    run = history.query("SELECT * FROM runs ORDER BY started_at LIMIT 1")[0]
    step = history.query("SELECT * FROM steps WHERE run_id = ?", [run["id"]])[0]
    call = history.query("SELECT * FROM llm_calls WHERE run_id = ?", [run["id"]])[0]
    assert run["baseline_cost"] == pytest.approx((call["tokens_in"] * 10 + call["tokens_out"] * 30) / 1e6)
    assert step["baseline_cost"] == pytest.approx(run["baseline_cost"])


def test_filters(history):
    assert build_report(history, ReportFilter(tags={"user": "bob"})).totals["runs"] == 1
    assert build_report(history, ReportFilter(workflow="other")).totals["runs"] == 0
    assert build_report(history, ReportFilter(step="classify")).totals["runs"] == 3
    assert build_report(history, ReportFilter(since="1h")).totals["runs"] == 3
    assert build_report(history, ReportFilter(until="2000-01-01")).totals["runs"] == 0
    with pytest.raises(ReportError):
        parse_time("yesterday")
    with pytest.raises(ReportError):
        build_report(history, by=["colour"])


def test_cli_tables_json_and_html(history, tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["report", "--by", "model", "--by", "tag:user"])
    assert out.exit_code == 0, out.output
    assert "fake:p" in out.output and "by tag:user" in out.output and "3 runs" in out.output
    html = tmp_path / "report.html"
    out = runner.invoke(cli, ["report", "--tag", "user=ann", "--html", str(html), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["totals"]["runs"] == 2
    page = html.read_text()
    assert "<svg" in page and "<rect" in page and "llm:premium" in page and "tag user=ann" in page
    bad = runner.invoke(cli, ["report", "--since", "last tuesday"])
    assert bad.exit_code == 2 and "not a time" in bad.output


def test_cache_hits_show_as_their_own_source_with_a_baseline(project, fake):
    wf = project(WORKFLOW.replace("cache: false", "cache: true"), config=CONFIG)
    fake.enqueue({"label": "ham"})
    run_workflow(wf, {"text": "same"})
    hit = run_workflow(wf, {"text": "same"})
    assert hit.step("classify").served_by == "cache" and hit.cost == 0 and hit.baseline_cost > 0
    report = build_report(open_store(load_config().store_path()), by=["source"])
    rows = {r["key"]: r for r in report.groups["source"]}
    assert rows["cache"]["cost"] == 0 and rows["cache"]["baseline_cost"] > 0 and rows["cache"]["calls"] == 0


def test_answers_by_trust_level_and_source(project, fake, tmp_path):
    """Per step: the share of answers served at each trust level and by each source."""
    wf = project(WORKFLOW.replace("cache: false", "cache: true"), config=CONFIG)
    fake.enqueue({"label": "ham"})                 # standard answers: unverified
    run_workflow(wf, {"text": "one"})
    run_workflow(wf, {"text": "one"})              # a cache hit of that unverified entry
    fake.enqueue("junk", {"label": "spam"})        # escalates: the reference answers
    run_workflow(wf, {"text": "two"})
    report = build_report(open_store(load_config().store_path()))
    (served,) = report.served
    assert served["answers"] == 3
    assert served["trust"] == {"reference": 1, "verified": 0, "labelled": 0, "unverified": 2}
    assert served["source"]["llm"] == 2 and served["source"]["cache"] == 1
    assert served["trust_share"]["unverified"] == pytest.approx(2 / 3)
    runner = CliRunner()
    out = runner.invoke(cli, ["report"]).output
    assert "how much nobody checked" in out and "66.7%" in out
    html = tmp_path / "r.html"
    runner.invoke(cli, ["report", "--html", str(html)])
    page = html.read_text()
    assert "Answers by trust level and source" in page and "unverified 66.7%" in page
