"""The small batch project of the Ray tests (tests/batch/test_ray_executor.py, test_ray_nodes.py)
and of the PostgreSQL restart test: an `echo` workflow (a script step, then an llm step on a fake tier with a
delay) and a count of each item's finished runs in the store."""

from __future__ import annotations

import textwrap
from pathlib import Path

WORKFLOW = """\
name: echo
inputs: {text: {type: string}}
steps:
  - id: upper
    inputs: {text: "{{ inputs.text }}"}
    script: helpers.py:upper
  - id: label
    inputs: {text: "{{ steps.upper.output }}"}
    llm:
      tier: standard
      prompt: "Label: {{ text }}"
      schema: {type: object, properties: {label: {type: string}}, required: [label]}
      max_tokens: 20
outputs:
  text: "{{ steps.upper.output }}"
  label: "{{ steps.label.output.label }}"
"""


def project(root: Path, store_url: str, delay_ms: int = 0) -> Path:
    """engine.yaml (the store, a fake `standard` tier answering after `delay_ms`), helpers.py and
    echo.yaml in `root`; returns the workflow's path."""
    (root / "engine.yaml").write_text(textwrap.dedent(f"""\
        store: "{store_url}"
        quality: {{sample: 0}}
        tiers:
          standard:
            - model: fake:medium
              options: {{replies: ['{{"label": "ok"}}'], delay_ms: {delay_ms}}}
        """))
    (root / "helpers.py").write_text("def upper(text):\n    return text.upper()\n")
    (root / "echo.yaml").write_text(WORKFLOW)
    return root / "echo.yaml"


def finished_per_item(store_url: str, batch_id: str) -> dict[int, int]:
    """item index -> how many finished (ok or failed) runs the batch has for it."""
    from engine.runner import open_store

    store = open_store(store_url)
    field, params = store.json_field("tags", "item")
    batch, bparams = store.json_field("tags", "batch")
    rows = store.query(f"SELECT {field} AS item, COUNT(*) AS n FROM runs WHERE {batch} = ? "
                       "AND status IN ('ok', 'failed') GROUP BY 1", [*params, *bparams, batch_id])
    return {int(r["item"]): r["n"] for r in rows}
