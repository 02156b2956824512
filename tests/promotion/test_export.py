"""`engine export`: trusted pairs only, de-duplicated, stratified train/validation, both formats."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from engine import run_workflow
from engine.cli import cli
from engine.quality.feedback import give_feedback

from classifier_helpers import phrasings, topic_of, topic_workflow


@pytest.fixture
def topics(fake):
    fake.responder = topic_of
    return fake


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_openai_format_with_validation_split(project, topics):
    path = topic_workflow(project)
    texts = phrasings(60, seed=1)
    for text in texts + texts[:10] + [texts[0].upper()]:  # repeats and a case variant: one pair each
        run_workflow(path, {"text": text})
    result = CliRunner().invoke(cli, ["export", "classify", "-w", str(path), "--format", "openai", "--val", "0.2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["counts"]["train"] + summary["counts"]["val"] == 60
    assert summary["counts"]["val"] == sum(n["val"] for n in summary["labels"].values())
    assert 9 <= summary["counts"]["val"] <= 15
    assert set(summary["labels"]) == {"card", "transfer", "refund"}
    assert all(n["train"] >= 1 for n in summary["labels"].values())
    train = _read(path.parent / "export/topics/classify/train.jsonl")
    val = _read(path.parent / "export/topics/classify/val.jsonl")
    assert len(train) == summary["counts"]["train"] and len(val) == summary["counts"]["val"]
    row = train[0]
    roles = [m["role"] for m in row["messages"]]
    assert roles == ["system", "user", "assistant"]
    assert "JSON Schema" in row["messages"][0]["content"] and row["messages"][1]["content"].startswith("Topic of: ")
    text = row["messages"][1]["content"].removeprefix("Topic of: ")
    assert json.loads(row["messages"][2]["content"]) == topic_of_messages(row["messages"])
    users = [r["messages"][1]["content"] for r in train + val]
    assert len(users) == len(set(users)) and text in {t for t in texts}


def topic_of_messages(messages):
    from engine.providers.base import CompletionRequest

    return topic_of(CompletionRequest(model="x", messages=messages[:2], max_tokens=1))


def test_export_chat_format_and_trust(project, topics):
    """Only trusted pairs: without a reference tier nothing exports until a person labels answers."""
    path = topic_workflow(project)
    path.write_text(path.read_text().replace("quality: {reference: local}", "quality: {}"))
    texts = phrasings(12, seed=2)
    outs = [run_workflow(path, {"text": t}) for t in texts]
    refused = CliRunner().invoke(cli, ["export", "classify", "-w", str(path)])
    assert refused.exit_code == 2 and "no trusted pairs" in refused.output
    from engine.runner import open_store
    from pathlib import Path

    store = open_store(Path(".engine/engine.db"))
    for out in outs[:5]:
        give_feedback(store, out.run_id, "classify", output={"topic": "refund"})  # people's labels win
    result = CliRunner().invoke(cli, ["export", "classify", "-w", str(path), "--format", "chat", "--val", "0",
                                      "-o", "out"])
    assert result.exit_code == 0, result.output
    rows = _read(path.parent / "out/train.jsonl")
    assert len(rows) == 5 and not (path.parent / "out/val.jsonl").exists()
    assert all([m["role"] for m in r["prompt"]] == ["system", "user"] for r in rows)
    assert all(r["completion"] == [{"role": "assistant", "content": '{"topic": "refund"}'}] for r in rows)
    assert "labelled 5" in result.output and "refund" in result.output


def test_export_errors_are_one_line(project, topics):
    path = topic_workflow(project)
    bad = CliRunner().invoke(cli, ["export", "nope", "-w", str(path)])
    assert bad.exit_code == 2 and "no llm step 'nope'" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(cli, ["export", "classify", "-w", str(path), "--val", "1.5"])
    assert bad.exit_code == 2
