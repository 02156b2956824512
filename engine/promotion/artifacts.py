"""Materialized artifacts: versioned files beside the workflow, reviewable in git.

    <workflow dir>/promotions/<workflow name>/
        manifest.yaml                 which artifact serves which step, under which prompt/schema hash
        <step>.lookup.v<N>.json       a lookup table: one {"input": ..., "output": ...} row per line
        <step>.script.v<N>.py         a generated script: `solve(inputs) -> output | None`
        <step>.classifier.v<N>.json   a distilled classifier: labels, coefficients, threshold (plain JSON)
        <step>.lora.v<N>.gguf         a LoRA adapter for the step's local tier (`engine distill`)
        <step>.router.v<N>.json       a learned router: coefficients, threshold (plain JSON)

The manifest links artifacts to steps: at run time a step is served by the artifacts listed for it
(lookup, then classifier, then script) while their recorded hashes match the step's current prompt and schema.
"""

from __future__ import annotations

import difflib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.promotion.mining import input_key
from engine.promotion.sandbox import check_script

MANIFEST = "manifest.yaml"
KIND_ORDER = {"lookup": 0, "classifier": 1, "script": 2, "lora": 3, "router": 4}
"""The order a step's artifacts answer in: exact rows, then the calibrated classifier, then scripts
(a `lora` adapter answers nothing itself: the step's local tier loads it; a `router` neither: it
decides, when nothing before it answered, whether the cheapest tier is asked)."""
SUFFIX = {"lookup": "json", "classifier": "json", "script": "py", "lora": "gguf", "router": "json"}
_HEADER = ("# Materialized promotions: written by `engine promotions accept`, read at run time.\n"
           "# Each entry serves one llm step while its prompt_hash/schema_hash match the step's.\n")


def promotions_dir(workflow_path: str | Path, workflow_name: str) -> Path:
    return Path(workflow_path).resolve().parent / "promotions" / workflow_name


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        return {"steps": {}}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data.setdefault("steps", {})
    return data


def manifest_text(data: dict[str, Any]) -> str:
    return _HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def table_text(workflow: str, step_id: str, version: int, hashes: tuple[str, str], normalize: list[str],
               rows: list[dict[str, Any]]) -> str:
    """A lookup table file: a header object, then one row per line (small, stable git diffs)."""
    rows = sorted(rows, key=lambda r: input_key(r["input"], normalize))
    head = {"workflow": workflow, "step": step_id, "version": version, "prompt_hash": hashes[0],
            "schema_hash": hashes[1], "normalize": normalize}
    lines = [json.dumps({"input": r["input"], "output": r["output"]}, ensure_ascii=False, sort_keys=True)
             for r in rows]
    body = ",\n  ".join(lines)
    meta = json.dumps(head, ensure_ascii=False)[1:-1]
    return "{" + meta + ',\n "rows": [\n  ' + body + "\n ]}\n"


def script_text(promotion_id: str, step_id: str, version: int, code: str, verification: dict[str, Any]) -> str:
    summary = (f"agreement {verification.get('agreement', 0):.1%} on {verification.get('answered', 0)} answered "
               f"of {verification.get('pairs', 0)} logged inputs (coverage {verification.get('coverage', 0):.1%}, "
               f"held-out agreement {verification.get('held_out', {}).get('agreement', 0):.1%})")
    return (f"# Generated for step '{step_id}' (promotion {promotion_id}, v{version}).\n"
            f"# Verified: {summary}.\n"
            f"# Runs sandboxed: `solve(inputs) -> output`, or None to fall through to the llm.\n\n"
            + code.strip() + "\n")


def classifier_text(workflow: str, step_id: str, version: int, hashes: tuple[str, str],
                    model: dict[str, Any]) -> str:
    """A classifier file: plain JSON, one coefficient row per line (labels first, readable)."""
    head = {"workflow": workflow, "step": step_id, "version": version, "prompt_hash": hashes[0],
            "schema_hash": hashes[1], **{k: v for k, v in model.items() if k not in ("coef", "intercept")}}
    meta = json.dumps(head, ensure_ascii=False)[1:-1]
    rows = ",\n  ".join(json.dumps(r) for r in model.get("coef", []))
    return ("{" + meta + ',\n "intercept": ' + json.dumps(model.get("intercept", [])) +
            ',\n "coef": [\n  ' + rows + "\n ]}\n")


@dataclass
class FileChange:
    path: Path
    before: str
    after: str

    def diff(self, root: Path | None = None) -> str:
        name = str(self.path.relative_to(root)) if root else str(self.path)
        return "".join(difflib.unified_diff(
            self.before.splitlines(keepends=True), self.after.splitlines(keepends=True),
            fromfile=f"a/{name}" if self.before else "/dev/null", tofile=f"b/{name}", n=2))


@dataclass
class Artifact:
    """One manifest entry, loaded: answers a step's inputs, or None on a miss."""

    id: str
    kind: str
    step_id: str
    version: int
    prompt_hash: str
    schema_hash: str
    path: Path
    normalize: list[str] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    refused: tuple[str, ...] = ()
    """Why the sandbox's static check refuses this script (never served then)."""
    model: Any = None
    """A classifier's `ClassifierModel` or a router's `RouterModel` (parsed from plain JSON; nothing executable)."""
    tier: str | None = None
    """A LoRA adapter's tier (its llamacpp model loads the adapter)."""


_cache: dict[tuple[Path, int], list[Artifact]] = {}
_cache_lock = threading.Lock()


def load_artifacts(directory: Path) -> list[Artifact]:
    """Every artifact the manifest lists (cached by the manifest's mtime)."""
    path = directory / MANIFEST
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return []
    with _cache_lock:
        hit = _cache.get((path, mtime))
    if hit is not None:
        return hit
    out: list[Artifact] = []
    for step_id, entries in (read_manifest(directory).get("steps") or {}).items():
        for entry in entries or []:
            file = directory / entry["file"]
            art = Artifact(id=entry["id"], kind=entry["kind"], step_id=step_id, version=int(entry["version"]),
                           prompt_hash=entry["prompt_hash"], schema_hash=entry["schema_hash"], path=file,
                           normalize=list(entry.get("normalize") or []), tier=entry.get("tier"))
            if art.kind == "lookup":
                data = json.loads(file.read_text(encoding="utf-8"))
                art.normalize = list(data.get("normalize") or art.normalize)
                art.table = {input_key(r["input"], art.normalize): r["output"] for r in data["rows"]}
            elif art.kind == "lora":
                if not file.is_file():
                    art.refused = (f"{file.name}: missing",)
            elif art.kind == "router":
                from engine.quality.router import RouterFormatError, RouterModel

                try:
                    art.model = RouterModel.from_dict(json.loads(file.read_text(encoding="utf-8")))
                    art.model.meta = {**art.model.meta, "promotion": art.id, "version": art.version}
                except (RouterFormatError, ValueError) as e:
                    art.refused = (f"{file.name}: {e}",)  # never used
            elif art.kind == "classifier":
                from engine.promotion.classifier import ClassifierFormatError, ClassifierModel

                try:
                    art.model = ClassifierModel.from_dict(json.loads(file.read_text(encoding="utf-8")))
                except (ClassifierFormatError, ValueError) as e:
                    art.refused = (f"{file.name}: {e}",)  # never served
            else:
                art.code = file.read_text(encoding="utf-8")
                art.refused = check_script(art.code)  # checked again on load: the file may have been edited
            out.append(art)
    out.sort(key=lambda a: (a.step_id, KIND_ORDER.get(a.kind, 9)))
    with _cache_lock:
        _cache[(path, mtime)] = out
    return out


def lookup_rows(directory: Path, step_id: str) -> list[dict[str, Any]]:
    """The rows of the step's current lookup table (empty when it has none)."""
    for entry in read_manifest(directory)["steps"].get(step_id) or []:
        if entry["kind"] == "lookup":
            return list(json.loads((directory / entry["file"]).read_text(encoding="utf-8"))["rows"])
    return []


def plan_accept(directory: Path, *, promotion_id: str, workflow: str, step_id: str, kind: str,
                hashes: tuple[str, str], normalize: list[str], rows: list[dict[str, Any]] | None = None,
                code: str | None = None, verification: dict[str, Any] | None = None,
                merge_previous: bool = True, model: dict[str, Any] | None = None) -> tuple[int, Path, list[FileChange]]:
    """What accepting writes: (version, artifact path, file changes). Nothing is written yet.
    A lookup's new version merges the step's current table with the new rows when that table is
    live under the same prompt/schema hashes (`merge_previous`); a stale or demoted one is not
    carried over."""
    manifest = read_manifest(directory)
    entries = list(manifest["steps"].get(step_id) or [])
    previous = next((e for e in entries if e["kind"] == kind), None)
    version = int(previous["version"]) + 1 if previous else 1
    suffix = SUFFIX[kind]
    path = directory / f"{step_id}.{kind}.v{version}.{suffix}"
    if kind == "lora":  # the adapter was written by `engine distill`, under its own version
        path = directory / str((model or {}).get("file", path.name))
        version = int((model or {}).get("version", version))
    prev_text = (directory / previous["file"]).read_text(encoding="utf-8") if previous and kind != "lora" else ""
    if kind == "lookup":
        same_hashes = previous is not None and (previous["prompt_hash"], previous["schema_hash"]) == hashes
        carried = lookup_rows(directory, step_id) if merge_previous and same_hashes else []
        merged = {input_key(r["input"], normalize): r for r in carried}
        merged.update({input_key(r["input"], normalize): r for r in rows or []})
        text = table_text(workflow, step_id, version, hashes, normalize, list(merged.values()))
    elif kind == "lora":
        text = ""
    elif kind in ("classifier", "router"):  # the same layout: settings first, one coefficient row per line
        text = classifier_text(workflow, step_id, version, hashes, model or {})
    else:
        text = script_text(promotion_id, step_id, version, code or "", verification or {})
    entry = {"id": promotion_id, "kind": kind, "version": version, "file": path.name,
             "prompt_hash": hashes[0], "schema_hash": hashes[1], "normalize": normalize}
    if kind == "lora":
        entry["tier"] = str((model or {}).get("tier", "local"))
    entries = [e for e in entries if e["kind"] != kind] + [entry]
    entries.sort(key=lambda e: KIND_ORDER.get(e["kind"], 9))
    new_manifest = {"workflow": workflow, "steps": {**manifest["steps"], step_id: entries}}
    old_manifest_text = (directory / MANIFEST).read_text(encoding="utf-8") if (directory / MANIFEST).is_file() else ""
    changes = [FileChange(directory / MANIFEST, old_manifest_text, manifest_text(new_manifest))]
    if kind != "lora":
        changes.append(FileChange(path, prev_text, text))
    return version, path, changes


def rehash_entry(directory: Path, promotion_id: str, hashes: tuple[str, str]) -> FileChange | None:
    """Re-point a manifest entry at the step's current hashes (after re-verification)."""
    manifest = read_manifest(directory)
    path = directory / MANIFEST
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    for entries in manifest["steps"].values():
        for entry in entries or []:
            if entry["id"] == promotion_id:
                entry["prompt_hash"], entry["schema_hash"] = hashes
                return FileChange(path, before, manifest_text(manifest))
    return None


def write_changes(changes: list[FileChange]) -> None:
    for change in changes:
        change.path.parent.mkdir(parents=True, exist_ok=True)
        change.path.write_text(change.after, encoding="utf-8")
