"""Proposing a learned router for an llm step (see `engine.quality.router`).

A step qualifies when it has `route:` (enabled) or `tier: auto`, and its chain has a monitored
cheapest tier with a reference after it. The evidence is the step's own: every input whose answer
from the cheapest tier (under the step's current prompt and schema) was compared with the
reference (reference checks of served answers, and of answers escalated for low confidence) or with
a person's label (a label outranks the checks of its input). Once there are `min_examples` inputs a
router is trained; when one is already accepted, a new version is trained only after the new
evidence reaches `retrain_share` of what it was trained on. A router that finds no usable signal
is still proposed, saying so: it sends every input up, which saves the cheap call. A rejected one
is not proposed again unchanged.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np

from engine.hashing import canonical_json, sha256
from engine.promotion import records
from engine.promotion.classifier_proposal import embed_all
from engine.promotion.mining import step_hashes
from engine.promotion.records import Promotion
from engine.quality.cascade import policy_for
from engine.quality.router import input_text, train_router
from engine.spec.models import LLMSpec, RouteSpec, Workflow
from engine.spec.quality import AUTO
from engine.store import quality as quality_store


def route_settings(spec: LLMSpec) -> RouteSpec | None:
    """The step's router settings: `route:`, else the defaults under `tier: auto`; None: no router.
    Without an `embedder` of its own the router embeds like the step's semantic cache, if any."""
    cfg = spec.route if spec.route is not None else (RouteSpec() if spec.tier == AUTO else None)  # type: ignore[call-arg]
    if cfg is None or not cfg.enabled:
        return None
    semantic = spec.cache.semantic if spec.cache is not None else None
    if "embedder" not in cfg.model_fields_set and semantic is not None:
        cfg = cfg.model_copy(update={"embedder": semantic.embedder})
    return cfg


def router_evidence(store: Any, workflow: str, step_id: str, tier: str,
                    hashes: tuple[str, str]) -> list[tuple[str, dict[str, Any], bool, str]]:
    """(input hash, input, the cheap tier agreed, source: check | label) per distinct input, sorted
    by input hash."""
    answers: dict[str, tuple[dict[str, Any], Any]] = {}
    for row in quality_store.tier_answers(store, workflow, step_id, tier, *hashes):
        values = json.loads(row["input"]) if isinstance(row["input"], str) else row["input"]
        output = json.loads(row["output"]) if isinstance(row["output"], str) else row["output"]
        if isinstance(values, dict):
            answers[row["input_hash"]] = (values, output)
    verdicts: dict[str, tuple[bool, str]] = {}
    for row in quality_store.tier_checks(store, workflow, step_id, tier):
        if row["input_hash"] in answers:
            verdicts[row["input_hash"]] = (row["status"] == "agree", "check")  # the latest check wins
    for row in quality_store.labels(store, workflow, step_id, hashes[1]):
        if row["kind"] not in ("label", "confirm") or row["input_hash"] not in answers:
            continue
        label = json.loads(row["output"]) if isinstance(row["output"], str) else row["output"]
        verdicts[row["input_hash"]] = (canonical_json(label) == canonical_json(answers[row["input_hash"]][1]), "label")
    return [(h, answers[h][0], agree, source) for h, (agree, source) in sorted(verdicts.items())]


def propose_router(wf: Workflow, step_id: str, spec: LLMSpec, store: Any, notes: list[str], *,
                   embed: Callable[[str, list[str]], np.ndarray] = embed_all) -> Promotion | None:
    """Train and record a router proposal; None when the step has none to propose."""
    cfg = route_settings(spec)
    if cfg is None or spec._templated_schema:
        return None
    from engine.config import load_config

    policy = policy_for(spec, wf.config or load_config())
    cheap = policy.chain[0] if policy.chain else None
    if cheap is None or len(policy.chain) < 2 or not policy.monitored(cheap):
        notes.append(f"{step_id}: no router: its cheapest tier has no reference after it to learn from")
        return None
    hashes = step_hashes(spec)
    evidence = router_evidence(store, wf.name, step_id, cheap, hashes)
    if len(evidence) < cfg.min_examples:
        notes.append(f"{step_id}: no router yet ({len(evidence)} inputs with a checked or labelled answer of "
                     f"'{cheap}', need route.min_examples = {cfg.min_examples})")
        return None
    live = [p for p in records.find(store, workflow=wf.name, step_id=step_id, kind="router", status="accepted")
            if (p.prompt_hash, p.schema_hash) == hashes]
    if live:
        trained = int(live[-1].verification.get("examples", 0))
        need = max(1, math.ceil(cfg.retrain_share * trained))
        if len(evidence) - trained < need:
            notes.append(f"{step_id}: router {live[-1].id} (v{live[-1].version}) is current: "
                         f"{max(0, len(evidence) - trained)} new examples, a new version needs {need}")
            return None
    settings = cfg.model_dump(by_alias=True)
    fingerprint = sha256(canonical_json([wf.name, step_id, "router", *hashes, cheap, settings,
                                         [(h, agree) for h, _, agree, _ in evidence]]))
    previous = records.find(store, fingerprint=fingerprint)
    if any(p.status == "rejected" for p in previous):
        notes.append(f"{step_id}: the same router was rejected before; not proposed again")
        return None
    for prev in previous:
        if prev.status == "proposed":
            return prev
    result = train_router([input_text(values, cfg.input) for _, values, _, _ in evidence],
                          [agree for _, _, agree, _ in evidence], lambda t: embed(cfg.embedder, t),
                          embedder=cfg.embedder, cheap_tier=cheap, input_field=cfg.input,
                          target_agreement=cfg.target_agreement, c=cfg.c, folds=cfg.folds)
    sources: dict[str, int] = {}
    for _, _, _, source in evidence:
        sources[source] = sources.get(source, 0) + 1
    verification = {**result.report, "evidence": sources, "passed": True, "no_signal": result.reason is not None}
    for old in records.find(store, workflow=wf.name, step_id=step_id, kind="router", status="proposed"):
        records.update(store, old.id, status="superseded", event="superseded", detail="a newer proposal replaced it")
    version_note = f"retrain of {live[-1].id} (v{live[-1].version})" if live else None
    reason = "; ".join(x for x in (result.reason, version_note) if x) or None
    return records.insert(store, Promotion(
        id="rt-" + sha256(fingerprint + str(len(previous)))[:8], workflow=wf.name,
        workflow_path=str(wf.path) if wf.path else None, step_id=step_id, kind="router", status="proposed",
        prompt_hash=hashes[0], schema_hash=hashes[1], fingerprint=fingerprint,
        payload={"model": result.model.to_dict(), "normalize": [], "retrain_of": live[-1].id if live else None},
        verification=verification, savings={}, reason=reason))
