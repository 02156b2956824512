"""Every workflow in workflows/ and examples/ loads, and runs offline on the fake provider."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import EngineConfig, load_workflow, run_workflow
from engine.spec.models import ModelEntry

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted(p for d in ("workflows", "examples") for p in (ROOT / d).rglob("*.yaml")
                   if p.name != "engine.yaml" and "benchmarks" not in p.parts and "promotions" not in p.parts)
FAKE = EngineConfig(tiers={"local": [ModelEntry(model="fake:local")]})


def test_there_are_workflows():
    names = {p.relative_to(ROOT).as_posix() for p in WORKFLOWS}
    assert {"workflows/classify.yaml", "workflows/extract.yaml", "examples/support_triage/workflow.yaml"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_workflow_loads(path):
    wf = load_workflow(path)
    assert wf.steps


def test_support_triage_offline(fake):
    fake.enqueue({"intent": "card_arrival"}, {"intent": "no_such_intent"}, {"intent": "exchange_rate"})
    wf = ROOT / "examples/support_triage/workflow.yaml"
    tickets = [json.loads(line) for line in (wf.parent / "tickets.jsonl").read_text().splitlines()]
    assert len(tickets) == 40
    first = run_workflow(wf, {"ticket": tickets[0]["ticket"]}, config=FAKE)
    assert first.outputs == {"intent": "card_arrival", "team": "cards_logistics"}
    second = run_workflow(wf, {"ticket": "What rate do you use for euros?"}, config=FAKE)
    assert second.outputs == {"intent": "exchange_rate", "team": "fx_desk"}
    assert second.step("classify").attempts == 2  # the invalid intent was re-asked


def test_classify_workflow_offline(fake):
    fake.enqueue({"label": "Billing"}, {"label": "billing"})
    result = run_workflow(ROOT / "workflows/classify.yaml",
                          {"text": "I was charged twice", "labels": ["shipping", "billing", " billing "]},
                          config=FAKE)
    assert result.outputs == {"label": "billing"}
    assert '"enum": ["shipping", "billing"]' in fake.requests[0].messages[0]["content"]


def test_extract_workflow_offline(fake):
    fake.enqueue({"name": "Dana", "email": None, "extra": 1})
    result = run_workflow(ROOT / "workflows/extract.yaml", {"text": "I'm Dana"}, config=FAKE)
    assert result.outputs == {"record": {"name": "Dana", "email": None}}


def test_invoice_lines_offline(fake):
    def extract(request):
        line = request.messages[1]["content"].removeprefix("Invoice line: ")  # [-1] is a re-ask
        if "Oven" in line:
            return "I cannot read this"
        qty = float(line.split()[0])
        price = float(line.split("@")[-1].split()[0]) if "@" in line else 1.35
        return {"description": line.split(" x ")[-1].split(" @")[0][:80], "quantity": qty, "unit_price": price}

    fake.responder = extract
    wf = ROOT / "examples/invoice_lines/workflow.yaml"
    invoice = (wf.parent / "invoice.txt").read_text()
    result = run_workflow(wf, {"invoice": invoice}, config=FAKE)
    items = result.outputs["items"]
    assert len(items) == 5 and items[4] is None  # the unreadable line is collected, not fatal
    assert [i["quantity"] for i in items[:4]] == [2, 1, 25, 3]
    assert result.outputs["unreadable"][0]["index"] == 4
    assert result.outputs["total"] == {"amount": 96.25, "currency": "EUR", "lines": 4, "unreadable": 1}
    assert len(result.step("items").items) == 5


def test_long_document_offline_chunks_and_reduces(fake):
    def respond(request):
        prompt = request.messages[-1]["content"]
        if prompt.startswith("Summaries of the parts"):
            return {"summary": "Harbour Street floods more; repair drains and restore floodplain."}
        return {"summary": "part " + prompt.split()[1]}

    fake.responder = respond
    config = EngineConfig(tiers={"local": [ModelEntry(model="fake:local", options={"context_window": 1024})]})
    wf = ROOT / "examples/long_document/workflow.yaml"
    result = run_workflow(wf, {"document": (wf.parent / "document.txt").read_text()}, config=config)
    context = result.step("summary").context
    assert context["chunks"] >= 2 and context["reduce_rounds"] == 1 and context["exact"] is False
    assert result.outputs == {"summary": "Harbour Street floods more; repair drains and restore floodplain."}
    reduce_prompt = fake.requests[-1].messages[-1]["content"]
    assert reduce_prompt.count("- part ") == context["chunks"]
