"""The unit of work of a batch run, whatever executes it: one line of the `--inputs` file
(`BatchItem`), and the line written to the output file for it (`result_line`). `engine.batch` reads
the items and drives an executor; the executors (threads in `engine.batch`, `engine.executors.ray`)
turn each into a run and a result line."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.runner import RunResult
from engine.spec.models import Workflow


@dataclass
class BatchItem:
    index: int
    line: int
    id: Any = None
    inputs: dict[str, Any] | None = None
    error: str | None = None
    """The line could not be read as an item (bad JSON, not an object)."""


MAX_INPUTS_BYTES = 1 << 30
"""The largest `--inputs` file (1 GiB): checked before it is read."""


def _read_inputs_file(path: Path) -> str:
    """The text of a regular file of at most MAX_INPUTS_BYTES; a device, pipe or socket is refused
    before it is opened (reading /dev/zero would never end)."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"--inputs '{path}' is not a regular file (devices, pipes and sockets are not read)")
    if info.st_size > MAX_INPUTS_BYTES:
        raise UserError(f"--inputs '{path}' is {info.st_size:,} bytes (at most {MAX_INPUTS_BYTES:,})")
    with path.open("rb") as f:
        data = f.read(MAX_INPUTS_BYTES + 1)
    if len(data) > MAX_INPUTS_BYTES:
        raise UserError(f"--inputs '{path}' is more than {MAX_INPUTS_BYTES:,} bytes")
    return data.decode("utf-8")


def read_items(path: Path, workflow: Workflow, id_field: str = "id") -> list[BatchItem]:
    items: list[BatchItem] = []
    try:
        lines = _read_inputs_file(path).splitlines()
    except OSError as e:
        raise UserError(f"cannot read --inputs '{path}': {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"--inputs '{path}' is not UTF-8 text (byte offset {e.start})") from None
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        item = BatchItem(index=len(items), line=n)
        items.append(item)
        try:
            value = json.loads(raw)
        except ValueError as e:
            item.error = f"line {n}: not valid JSON ({e})"
            continue
        except RecursionError:
            item.error = f"line {n}: the JSON nests too deeply"
            continue
        if not isinstance(value, dict):
            item.error = f"line {n}: expected a JSON object of inputs, got {type(value).__name__}"
            continue
        if id_field in value:
            item.id = value[id_field]
        item.inputs = {k: v for k, v in value.items() if k in workflow.inputs}
    return items


def served_labels(result: RunResult) -> list[str]:
    """'llm/<tier>', 'batch/<tier>' (a provider batch answered), 'script', 'cache', ..."""
    def label(s: Any) -> str:
        if s.served_by != "llm" or not s.tier:
            return str(s.served_by)
        batched = any(a.get("provider_batch") and a.get("outcome") == "valid" for a in s.calls)
        return f"{'batch' if batched else 'llm'}/{s.tier}"

    return [label(s) for s in result.steps if s.status == "ok" and s.served_by]


def result_line(item: BatchItem, result: RunResult) -> dict[str, Any]:
    line: dict[str, Any] = {"index": item.index}
    if item.id is not None:
        line["id"] = item.id
    line["status"] = result.status
    if result.ok:
        line["outputs"] = result.outputs
    else:
        line["error"] = result.error
    if result.run_id:
        line["run_id"] = result.run_id
    return line
