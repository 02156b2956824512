"""A project whose cloud tiers point at in-process OpenAI / Anthropic servers (batch APIs included)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any


from engine import Engine
from engine.batch import run_batch
from engine.provider_batch import ProviderBatchOptions
from engine.testing.batch_servers import FakeProviderServer

WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: %(tier)s
      system: You label messages as spam or ham.
      prompt: "Label this: {{ text }}"
      schema:
        type: object
        properties: {label: {enum: [spam, ham]}}
        required: [label]
        additionalProperties: false
      max_tokens: 20
      retries: 1
%(extra)s
outputs:
  label: "{{ steps.classify.output.label }}"
"""

TEXTS = ["buy cheap pills now", "see you at lunch", "buy gold today", "meeting moved to 3pm",
         "buy one get one free", "happy birthday mum"]


def label_of(messages: list[dict[str, Any]]) -> str:
    text = next(m["content"] for m in messages if m["role"] == "user")
    if not isinstance(text, str):
        text = json.dumps(text)
    return "spam" if "buy" in text else "ham"


def good_answer(messages: list[dict[str, Any]], model: str) -> Any:
    return {"label": label_of(messages)}


class Project:
    def __init__(self, root: Path, server: FakeProviderServer):
        self.root = root
        self.server = server

    def write(self, tier: str = "openai", extra: str = "", config_extra: str = "", batch_flag: bool = False,
              texts: list[str] | None = None) -> tuple[Path, Path]:
        flag = "\n" + " " * 18 + "batch: true" if batch_flag else ""
        (self.root / "engine.yaml").write_text(textwrap.dedent(f"""\
            tiers:
              openai:
                - model: openai:gpt-4o-mini{flag}
                  options: {{base_url: "{self.server.base_url}/v1"}}
              anthropic:
                - model: anthropic:claude-haiku-4-5{flag}
                  options: {{base_url: "{self.server.base_url}"}}
              local:
                - model: fake:small
                  input_price: 0
                  output_price: 0
            """) + config_extra)
        wf = self.root / "workflow.yaml"
        wf.write_text(WORKFLOW % {"tier": tier, "extra": extra})
        items = self.root / "items.jsonl"
        items.write_text("".join(json.dumps({"id": f"m{i}", "text": t}) + "\n"
                                 for i, t in enumerate(texts if texts is not None else TEXTS)))
        return wf, items

    def run(self, wf: Path, items: Path, options: ProviderBatchOptions | None = None, **kwargs: Any) -> Any:
        engine = Engine()
        try:
            return run_batch(engine, wf, items, self.root / "out.jsonl",
                             provider_batch=options if options is not None else fast(), **kwargs)
        finally:
            engine.close()

    def outputs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.root / "out.jsonl").read_text().splitlines()]


def fast(**kwargs: Any) -> ProviderBatchOptions:
    return ProviderBatchOptions(poll_s=0.01, **kwargs)
