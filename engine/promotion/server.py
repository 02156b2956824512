"""The promotion `Server`: accepted artifacts answer an llm step before its tiers, at zero tokens.

serve:
- for each artifact the manifest lists for the step (lookup, then classifier, then script), unless
  it is demoted or stale: a lookup hit, a classifier answer above its calibrated threshold, or a
  script answer that passes the step's schema, is served with `served_by = "lookup" | "classifier"
  | "script"` and no tokens; a miss, an abstaining classifier or an abstaining/failing script falls
  through (the tiers answer and the call is logged, so the next mining round can extend the table);
- an artifact recorded under another prompt/schema hash than the step's is marked `stale`;
- a `promote.spot_check` share of hits is checked against trusted evidence, never against the
  cheap tier whose answers may have built the artifact: a person's label for the input when there
  is one (free), else the step's reference tier (see `engine.quality`), whose answer is then
  served. With neither (no reference tier, or it cannot answer) the artifact is served and no
  check is recorded. When disagreement over the last `demote_window` spot checks exceeds
  `demote_threshold` (by default with 95% one-sided confidence, see `disagreement_bound`), the
  artifact is demoted (the step goes back to the llm), reason recorded.
- an accepted `router` answers nothing: it is handed to the step's cascade on the call, which
  decides with it whether the cheapest tier is asked (`engine.quality.cascade`); the reference
  checks of the answers it sent there count toward its agreement (`settle`), and it is demoted
  when they disagree too often.
observe:
- proposals in shadow mode answer alongside the llm; agreement with trusted answers (reference or
  verified) is recorded, outputs unchanged.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

from engine.errors import EngineError
from engine.hashing import StringInputMemo, canonical_json
from engine.promotion import records
from engine.promotion.artifacts import MANIFEST, Artifact, load_artifacts, promotions_dir
from engine.promotion.classifier_serving import shadow_model
from engine.promotion.mining import input_key
from engine.promotion.sandbox import SandboxResult
from engine.promotion.sandbox.worker import serve_one
from engine.promotion.verify import validated
from engine.quality.compare import answers_agree
from engine.quality.stats import disagreement_bound
from engine.quality.router import CHEAP
from engine.spec.quality import AUTO
from engine.quality.trust import LABELLED, REFERENCE, TRUSTED, UNVERIFIED, VERIFIED, Verdict
from engine.steps.base import StepContext, StepOutcome
from engine.providers.calls import ProviderCalls, drive
from engine.steps.llm import LLMCall, ask_tiers_calls, compiled
from engine.store import promotions as promotion_store
from engine.store import quality as quality_store

_MISS = object()
_rng = random.Random()
_rng_lock = threading.Lock()


def seed(value: int) -> None:
    """Seed the spot-check sampler (benchmarks and tests)."""
    with _rng_lock:
        _rng.seed(value)


def _sample(rate: float) -> bool:
    if rate <= 0:
        return False
    with _rng_lock:
        return _rng.random() < rate


__all__ = ["PromotionServer", "disagreement_bound", "promotion_server", "seed"]


def spot_sampled(ctx: StepContext, rate: float) -> bool:
    """Whether this step execution is a spot check: drawn once per execution, so the early and
    the full serving paths agree."""
    if rate <= 0:  # nothing to draw (the common case of a served lookup)
        return False
    drawn = ctx.__dict__.get("_spot_check")
    if drawn is None:
        drawn = ctx.__dict__["_spot_check"] = _sample(rate)
    return bool(drawn)


def answer(kind: str, table: dict[str, Any], code: str, normalize: list[str], call: LLMCall,
           model: Any = None) -> SandboxResult:
    if kind == "lookup":
        key = input_key(call.values, normalize)
        return SandboxResult(output=table[key]) if key in table else SandboxResult(abstained=True)
    if kind == "classifier":
        from engine.promotion.classifier_serving import classify

        return validated(classify(model, call.values), call.spec, call.schema)
    return validated(serve_one(code, call.values), call.spec, call.schema)  # the script's long-lived worker


class PromotionServer:
    def __init__(self, workflow: str, store: Any, artifacts: list[Artifact], statuses: dict[str, str],
                 shadows: list[records.Promotion], workflow_path: str | None = None):
        self.workflow = workflow
        self.workflow_path = workflow_path
        self.store = store
        self.artifacts: dict[str, list[Artifact]] = {}
        for art in artifacts:
            self.artifacts.setdefault(art.step_id, []).append(art)
        self.statuses = statuses
        self._keys: StringInputMemo[str] = StringInputMemo()
        """lookup keys per (normalize flags, raw input items)"""
        self.shadows: dict[str, list[records.Promotion]] = {}
        for p in shadows:
            self.shadows.setdefault(p.step_id, []).append(p)
        self.labels: dict[str, dict[str, Any]] = {}
        """step -> input hash -> the latest person's label under the artifact's schema."""
        self.corrected: dict[str, set[str]] = {}
        """artifact id -> lookup keys whose row a label contradicts (the label is served instead)."""
        if store is not None:
            self._load_labels()

    def _load_labels(self) -> None:
        """People's labels outrank every artifact: a lookup row a label contradicts serves the label
        (and is counted a disagreeing `label` check of the artifact, once); a classifier or script
        answer for a labelled input is the label."""
        for step_id, arts in self.artifacts.items():
            by_hash: dict[str, Any] = {}
            for art in arts:
                for row in quality_store.labels(self.store, self.workflow, step_id, art.schema_hash):
                    if row["kind"] != "label" and row["kind"] != "confirm":
                        continue
                    output = json.loads(row["output"]) if isinstance(row["output"], str) else row["output"]
                    values = json.loads(row["input"]) if isinstance(row["input"], str) else row["input"]
                    by_hash[row["input_hash"]] = output
                    if art.kind != "lookup" or not isinstance(values, dict):
                        continue
                    key = input_key(values, art.normalize)
                    if key in art.table and canonical_json(art.table[key]) != canonical_json(output):
                        art.table = {**art.table, key: output}  # this server's copy, never the file
                        fresh = key not in self.corrected.setdefault(art.id, set())
                        self.corrected[art.id].add(key)
                        if fresh and not promotion_store.has_check(self.store, art.id, "label", row["input_hash"]):
                            records.record_check(self.store, art.id, "label", row["input_hash"], None, output, False)
            if by_hash:
                self.labels[step_id] = by_hash

    @classmethod
    def for_workflow(cls, workflow: Any, store: Any) -> PromotionServer | None:
        """The server for a loaded workflow, or None when it has nothing to serve or shadow."""
        if store is None:
            return None
        artifacts = load_artifacts(promotions_dir(workflow.path, workflow.name)) if workflow.path else []
        rows = promotion_store.statuses(store, workflow.name)
        statuses = {r["id"]: r["status"] for r in rows}
        shadow_ids = [r["id"] for r in rows if r["shadow"] and r["status"] == "proposed"]
        shadows = [records.get(store, pid) for pid in shadow_ids]
        if not artifacts and not shadows:
            return None
        return cls(workflow.name, store, artifacts, statuses, shadows,
                   str(workflow.path) if workflow.path else None)

    def serve_early(self, ctx: StepContext, spec: Any, values: dict[str, Any]) -> StepOutcome | None:
        """A lookup hit answered from the step's inputs alone, before its prompt is rendered or
        hashed (the in-process fast path). Anything else (a script, a stale or spot-checked
        artifact) returns None and takes the full path, `serve`."""
        arts = self.artifacts.get(ctx.step_id)
        if not arts:
            return None
        static = compiled(spec)
        for art in arts:
            if art.kind != "lookup":
                return None
            status = self.statuses.get(art.id, "accepted")
            if status in ("demoted", "rejected", "superseded", "stale"):
                continue
            if art.prompt_hash != static.prompt_hash or art.schema_hash != static.schema_hash:
                return None  # `serve` marks it stale
            key = self._key(values, art.normalize)
            output = art.table.get(key, _MISS)
            if output is _MISS:
                continue
            if art.id in self.corrected and key in self.corrected[art.id]:
                return StepOutcome(output=output, served_by="label", provider="feedback", trust=LABELLED)
            if spot_sampled(ctx, spec.promote.spot_check):
                return None  # `serve` runs the spot check
            return StepOutcome(output=output, served_by="lookup", provider="promotion",
                               model=f"{art.id} v{art.version}", trust=VERIFIED)
        return None

    def _key(self, values: dict[str, Any], normalize: list[str]) -> str:
        """`input_key`, remembered for inputs whose values are all strings (a repeated input is
        looked up without normalising and encoding it again)."""
        key = self._keys.get(tuple(normalize), values, lambda: input_key(values, normalize))
        assert key is not None
        return key

    def serve(self, ctx: StepContext, call: LLMCall) -> StepOutcome | None:
        return drive(self.serve_calls(ctx, call))

    def serve_calls(self, ctx: StepContext, call: LLMCall) -> ProviderCalls[StepOutcome | None]:
        """`serve` as a generator of provider calls (a spot check asks the reference tier): the
        llm step drives it, so under `arun` the reference call is awaited, not blocking the loop."""
        for art in self.artifacts.get(call.step_id, []):
            status = self.statuses.get(art.id, "accepted")
            if status in ("demoted", "rejected", "superseded"):
                continue
            if (art.prompt_hash, art.schema_hash) != (call.prompt_hash, call.schema_hash):
                if status != "stale":
                    self._mark(art, "stale", "the step's prompt or schema changed; re-verify before serving")
                continue
            if status == "stale" or art.refused:
                continue
            if art.kind == "lora":  # an accepted adapter: the step's local-tier calls load it
                call.adapters[art.tier or "local"] = art.path
                continue
            if art.kind == "router":  # decides before the tiers (engine.quality.cascade), answers nothing
                route = call.spec.route
                if (route.enabled if route is not None else call.spec.tier == AUTO):
                    call.router = art.model
                continue
            result = answer(art.kind, art.table, art.code, art.normalize, call, art.model)
            if not result.answered:
                continue  # a miss: the tiers answer, the call is logged
            label = self.labels.get(call.step_id, {}).get(call.input_hash, _MISS)
            if label is not _MISS:  # a person's label outranks the artifact
                agree = canonical_json(label) == canonical_json(result.output)
                if not agree and art.kind != "lookup" and not promotion_store.has_check(
                        self.store, art.id, "label", call.input_hash):
                    records.record_check(self.store, art.id, "label", call.input_hash, result.output, label, False)
                return StepOutcome(output=label, served_by=art.kind if agree else "label",
                                   provider="promotion" if agree else "feedback",
                                   model=f"{art.id} v{art.version}" if agree else None, trust=LABELLED)
            if spot_sampled(ctx, call.spec.promote.spot_check):
                return (yield from self._spot_check(ctx, call, art, result.output))
            return StepOutcome(output=result.output, served_by=art.kind, provider="promotion",
                               model=f"{art.id} v{art.version}", confidence=result.confidence,
                               trust=VERIFIED if art.kind == "lookup" else UNVERIFIED)
        return None

    def _spot_check(self, ctx: StepContext, call: LLMCall, art: Artifact,
                    served: Any) -> ProviderCalls[StepOutcome]:
        from engine.quality.cascade import policy_for

        artifact = StepOutcome(output=served, served_by=art.kind, provider="promotion",
                               model=f"{art.id} v{art.version}")
        label = self._label(call)
        quality = policy_for(call.spec, ctx.config)
        if label is not None:
            outcome = StepOutcome(output=label, served_by="label", provider="feedback", trust=LABELLED)
        elif quality.reference is None:
            return artifact  # nothing trusted to compare with: serve it, record no check
        else:
            try:
                outcome = yield from ask_tiers_calls(ctx, call, tiers=[quality.reference], policy=quality,
                                                     purpose="spot_check")
            except EngineError:  # the reference failed: serve the artifact, record no check
                return artifact
            outcome.trust = REFERENCE
        agree = answers_agree(quality, served, outcome.output)
        records.record_check(self.store, art.id, "spot", call.input_hash, served, outcome.output, agree)
        policy = call.spec.promote
        recent = promotion_store.recent_checks(self.store, art.id, "spot", policy.demote_window)
        n, k = len(recent), len(recent) - sum(recent)
        if n >= policy.demote_min_checks and k:
            bound = disagreement_bound(k, n, policy.demote_confidence)
            if bound > policy.demote_threshold:
                evidence = (f" (at {policy.demote_confidence:.0%} confidence: >= {bound:.1%})"
                            if policy.demote_confidence else "")
                self._mark(art, "demoted",
                           f"spot checks disagreed {k}/{n} ({k / n:.1%}){evidence} > "
                           f"{policy.demote_threshold:.0%} over the last {n}")
        if outcome.served_by == "label":
            return StepOutcome(output=outcome.output, served_by=art.kind if agree else "label",
                               provider="promotion" if agree else "feedback",
                               model=f"{art.id} v{art.version}" if agree else None, trust=LABELLED)
        return outcome

    def _label(self, call: LLMCall) -> Any:
        """The latest person's label for this input under the step's schema, if any."""
        rows = [r for r in quality_store.labels(self.store, self.workflow, call.step_id, call.schema_hash)
                if r["input_hash"] == call.input_hash]
        return rows[-1]["output"] if rows else None

    def _mark(self, art: Artifact, status: str, reason: str) -> None:
        self.statuses[art.id] = status
        if not promotion_store.exists(self.store, art.id):
            # An artifact from git whose proposal this store never saw: adopt it, so its state persists.
            records.insert(self.store, records.Promotion(
                id=art.id, workflow=self.workflow, workflow_path=self.workflow_path, step_id=art.step_id,
                kind=art.kind, status="accepted", prompt_hash=art.prompt_hash, schema_hash=art.schema_hash,
                fingerprint="", artifact=art.path.name, version=art.version, reason="adopted from the manifest"))
        records.update(self.store, art.id, status=status, reason=reason, event=status, detail=reason)

    def settle(self, ctx: StepContext, call: LLMCall, outcome: StepOutcome, verdict: Verdict) -> None:
        """A reference check of an answer the step's router sent to the cheap tier counts toward the
        router's agreement (`routed` checks); when disagreement over the last `demote_window` of them
        exceeds the router's `demote_threshold` (default 1 - target_agreement; at
        `demote_confidence`), the router is demoted and every input takes the cascade again."""
        model = call.router
        if model is None or outcome.routed != CHEAP or self.store is None:
            return
        art = next((a for a in self.artifacts.get(call.step_id, []) if a.id == model.meta.get("promotion")), None)
        if art is None or self.statuses.get(art.id, "accepted") != "accepted":
            return
        records.record_check(self.store, art.id, "routed", call.input_hash, outcome.output, verdict.answer,
                             verdict.agree)
        policy = call.spec.promote
        route = call.spec.route
        threshold = (route.demote_threshold if route is not None and route.demote_threshold is not None
                     else 1 - model.target_agreement)
        recent = promotion_store.recent_checks(self.store, art.id, "routed", policy.demote_window)
        n, k = len(recent), len(recent) - sum(recent)
        if n >= policy.demote_min_checks and k:
            bound = disagreement_bound(k, n, policy.demote_confidence)
            if bound > threshold:
                evidence = f" (at {policy.demote_confidence:.0%} confidence: >= {bound:.1%})" if policy.demote_confidence else ""
                self._mark(art, "demoted", f"routed answers disagreed with the reference {k}/{n} ({k / n:.1%})"
                                           f"{evidence} > {threshold:.1%} over the last {n} checks")

    def observe(self, ctx: StepContext, call: LLMCall, outcome: StepOutcome) -> None:
        if outcome.trust not in TRUSTED:
            return  # shadow agreement with an unverified answer proves nothing
        for p in self.shadows.get(call.step_id, []):
            if (p.prompt_hash, p.schema_hash) != (call.prompt_hash, call.schema_hash):
                continue
            table = {r["key"]: r["output"] for r in p.payload.get("rows", [])}
            result = answer(p.kind, table, p.payload.get("code", ""), p.payload.get("normalize", []), call,
                            shadow_model(p))
            if result.answered:
                agree = canonical_json(result.output) == canonical_json(outcome.output)
                records.record_check(self.store, p.id, "shadow", call.input_hash, result.output,
                                     outcome.output, agree)


_built: dict[tuple[int, str, str], tuple[tuple[Any, ...], Any, PromotionServer | None, float]] = {}
_dirs: dict[tuple[str, str], Any] = {}
RECHECK_S = 1.0
"""How often a built server re-checks what another process may have changed (the manifest's
mtime, the store's `data_version()`); this process's own promotion writes count at once."""


def _signature(workflow: Any, store: Any) -> tuple[Any, ...]:
    mtime = None
    if workflow.path:
        key = (str(workflow.path), workflow.name)
        directory = _dirs.get(key)
        if directory is None:
            directory = _dirs[key] = promotions_dir(workflow.path, workflow.name)
        try:
            mtime = (directory / MANIFEST).stat().st_mtime_ns
        except OSError:
            pass
    version = store.data_version()
    return (mtime, version, records.GENERATION[0], quality_store.LABELS_GENERATION[0])


def promotion_server(workflow: Any, store: Any) -> PromotionServer | None:
    """The workflow's server, rebuilt only when its manifest or the promotions may have changed,
    so a run neither reads the manifest nor queries the promotions table (see `RECHECK_S`)."""
    if store is None or not hasattr(store, "data_version"):
        return PromotionServer.for_workflow(workflow, store)
    key = (id(store), workflow.name, str(workflow._path))
    hit = _built.get(key)
    now = time.monotonic()
    if (hit is not None and hit[1] is store and hit[0][2] == records.GENERATION[0]
            and hit[0][3] == quality_store.LABELS_GENERATION[0]):
        if now - hit[3] < RECHECK_S:
            return hit[2]
        signature = _signature(workflow, store)
        if signature == hit[0]:
            _built[key] = (signature, store, hit[2], now)
            return hit[2]
    signature = _signature(workflow, store)
    server = PromotionServer.for_workflow(workflow, store)
    _built[key] = (signature, store, server, now)
    return server
