"""Proposing a classifier for an llm step (see `engine.promotion.classifier`).

A step qualifies when its output schema is a closed set and `promote.classifier.enabled`. It is
trained on the step's trusted pairs (`engine.promotion.training`) once there are `min_pairs` of
them; when a classifier is already accepted under the step's current prompt and schema, a new
version is trained only after the new trusted pairs reach `retrain_share` of the pairs it was
trained on. A model whose calibration finds no threshold at `target_precision` is recorded as
`unverified` (its report kept), not proposed; a rejected one is not proposed again unchanged.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import numpy as np

from engine.hashing import canonical_json, sha256
from engine.promotion import records
from engine.promotion.classifier import closed_schema, train_classifier
from engine.promotion.mining import monthly_savings
from engine.promotion.records import Promotion
from engine.promotion.training import input_text, trusted_log, trusted_pairs
from engine.spec.models import LLMSpec, Workflow

EMBED_BATCH = 256


def embed_all(name: str, texts: list[str], *, label: str = "embedding trusted pairs") -> np.ndarray:
    """Embed with the named embedder in batches, with a progress bar when there are many."""
    from engine.cache.embedders import get_embedder

    embedder = get_embedder(name)
    if len(texts) <= EMBED_BATCH:
        return embedder.embed(texts) if texts else np.zeros((0, 1), dtype=np.float32)
    from rich.console import Console
    from rich.progress import Progress

    parts = []
    with Progress(console=Console(file=sys.stderr), transient=True) as progress:
        task = progress.add_task(label, total=len(texts))
        for start in range(0, len(texts), EMBED_BATCH):
            parts.append(embedder.embed(texts[start:start + EMBED_BATCH]))
            progress.advance(task, min(EMBED_BATCH, len(texts) - start))
    return np.vstack(parts)


def propose_classifier(wf: Workflow, step_id: str, spec: LLMSpec, store: Any, notes: list[str], *,
                       embed: Callable[[str, list[str]], np.ndarray] = embed_all) -> Promotion | None:
    """Train and record a classifier proposal (or an `unverified` one); None when nothing new."""
    cfg = spec.promote.classifier
    if not cfg.enabled or spec._templated_schema or not closed_schema(spec.schema_):
        return None
    log = trusted_log(store, wf.name, step_id, spec)
    pairs = trusted_pairs(log)
    if len(pairs) < cfg.min_pairs:
        notes.append(f"{step_id}: no classifier yet ({len(pairs)} trusted input/answer pairs, need "
                     f"promote.classifier.min_pairs = {cfg.min_pairs})")
        return None
    hashes = (log.prompt_hash, log.schema_hash)
    live = [p for p in records.find(store, workflow=wf.name, step_id=step_id, kind="classifier", status="accepted")
            if (p.prompt_hash, p.schema_hash) == hashes]
    if live:
        trained = int(live[-1].verification.get("pairs", 0))
        need = max(1, math.ceil(cfg.retrain_share * trained))
        if len(pairs) - trained < need:
            notes.append(f"{step_id}: classifier {live[-1].id} (v{live[-1].version}) is current: "
                         f"{max(0, len(pairs) - trained)} new trusted pairs, a new version needs {need}")
            return None
    settings = cfg.model_dump(by_alias=True)
    fingerprint = sha256(canonical_json([wf.name, step_id, "classifier", *hashes, settings,
                                         [(p.key, canonical_json(p.output)) for p in pairs]]))
    previous = records.find(store, fingerprint=fingerprint)
    if any(p.status == "rejected" for p in previous):
        notes.append(f"{step_id}: the same classifier was rejected before; not proposed again")
        return None
    for prev in previous:
        if prev.status in ("proposed", "unverified"):
            if prev.status == "unverified":
                notes.append(f"{step_id}: classifier {prev.id} failed calibration on these same {len(pairs)} "
                             f"pairs: {prev.reason}")
            return prev if prev.status == "proposed" else None
    texts = [input_text(p.values, cfg.input) for p in pairs]
    result = train_classifier(texts, [p.output for p in pairs], lambda t: embed(cfg.embedder, t),
                              embedder=cfg.embedder, input_field=cfg.input, target_precision=cfg.target_precision,
                              c=cfg.c, held_out=cfg.held_out, score=cfg.score,
                              repeats=cfg.repeats)
    trust: dict[str, int] = {}
    for pair in pairs:
        for level, n in pair.evidence.items():
            trust[level] = trust.get(level, 0) + n
    verification = {**result.report, "evidence": "trusted", "trust": trust, "passed": result.model is not None}
    held = result.report.get("held_out") or {}
    coverage = float(held.get("coverage", 0.0)) if result.model is not None else 0.0
    savings = monthly_savings(log, round(coverage * log.executions), round(coverage * log.tokens),
                              coverage * log.cost)
    status = "proposed" if result.model is not None else "unverified"
    if status == "proposed":
        for old in records.find(store, workflow=wf.name, step_id=step_id, kind="classifier", status="proposed"):
            records.update(store, old.id, status="superseded", event="superseded", detail="a newer proposal replaced it")
    version_note = f"retrain of {live[-1].id} (v{live[-1].version})" if live else None
    return records.insert(store, Promotion(
        id="cl-" + sha256(fingerprint + str(len(previous)))[:8], workflow=wf.name,
        workflow_path=str(wf.path) if wf.path else None, step_id=step_id, kind="classifier", status=status,
        prompt_hash=log.prompt_hash, schema_hash=log.schema_hash, fingerprint=fingerprint,
        payload={"model": result.model.to_dict() if result.model is not None else None,
                 "normalize": list(spec.promote.normalize), "retrain_of": live[-1].id if live else None,
                 "examples": [{"input": p.values, "output": p.output} for p in pairs[:10]]},
        verification=verification, savings=savings,
        reason=result.reason if result.model is None else version_note))
