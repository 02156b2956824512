"""The review workflow behind `engine promotions ...`: one library call per command.

    propose   mine the log and record proposals (lookups, verified scripts)
    list      proposals and their status
    show      evidence, examples, table or code, verification report, savings, the diff of accepting
    accept    write the versioned artifact beside the workflow and link it in the manifest
    reject    remember the proposal (and why) so it is not proposed again unchanged
    shadow    run a proposal alongside the llm without changing outputs
    verify    re-verify a stale or demoted artifact under the step's current prompt/schema
    status    what is materialized, how often it serves, shadow and spot-check agreement, demotions
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import load_config
from engine.errors import UserError
from engine.promotion import records
from engine.promotion.artifacts import (FileChange, load_artifacts, plan_accept, promotions_dir,
                                        rehash_entry, write_changes)
from engine.promotion.mining import input_key, mine_step, step_hashes
from engine.promotion.proposals import ProposeReport, propose_promotions
from engine.promotion.records import Promotion
from engine.promotion.verify import script_answerer, table_answerer, verify
from engine.spec.loader import load_workflow
from engine.spec.models import LLMSpec, Workflow
from engine.store import promotions as promotion_store
from engine.clock import now_iso


class PromotionStateError(UserError):
    """The promotion cannot take this action in its current state."""


def open_review_store(workflow: str | Path | None = None) -> Any:
    from engine.runner import open_store

    config = load_workflow(workflow).config if workflow is not None else load_config()
    return open_store(config.store_url())


def propose(store: Any, workflow: str | Path | None = None, *, step: str | None = None,
            scripts: bool = True, script_tier: str | None = None,
            classifiers: bool = True, routers: bool = True) -> list[tuple[str, ProposeReport]]:
    """Propose for one workflow, or for every workflow the store has runs of (by their paths)."""
    if workflow is not None:
        paths = [Path(workflow)]
    else:
        paths = [Path(p) for p in promotion_store.workflow_paths(store) if Path(p).is_file()]
        if not paths:
            raise UserError("no logged runs with a workflow file to mine; name a workflow")
    out = []
    for path in paths:
        wf = load_workflow(path)
        out.append((wf.name, propose_promotions(wf, store, step=step, scripts=scripts, script_tier=script_tier,
                                                classifiers=classifiers, routers=routers)))
    return out


def list_promotions(store: Any, *, workflow: str | None = None, status: str | None = None,
                    all_: bool = False, step: str | None = None, kind: str | None = None) -> list[Promotion]:
    found = records.find(store, workflow=workflow, status=status, step_id=step, kind=kind)
    if status is None and not all_:
        found = [p for p in found if p.status not in ("superseded",)]
    return found


@dataclass
class Detail:
    promotion: Promotion
    events: list[dict[str, Any]]
    checks: dict[str, dict[str, int]]
    changes: list[FileChange] = field(default_factory=list)
    root: Path | None = None


def _workflow_of(p: Promotion) -> Workflow:
    if not p.workflow_path or not Path(p.workflow_path).is_file():
        raise PromotionStateError(f"{p.id}: its workflow file is gone ({p.workflow_path})")
    return load_workflow(p.workflow_path)


def _step_spec(wf: Workflow, step_id: str) -> LLMSpec:
    step = wf.step(step_id)
    assert step.llm is not None
    return step.llm


def _plan(store: Any, p: Promotion, wf: Workflow) -> tuple[int, Path, list[FileChange]]:
    assert wf.path is not None
    live = records.find(store, workflow=p.workflow, step_id=p.step_id, kind=p.kind, status="accepted")
    return plan_accept(
        promotions_dir(wf.path, wf.name), promotion_id=p.id, workflow=wf.name, step_id=p.step_id, kind=p.kind,
        hashes=(p.prompt_hash, p.schema_hash), normalize=list(p.payload.get("normalize") or
                                                              _step_spec(wf, p.step_id).promote.normalize),
        rows=[{"input": r["input"], "output": r["output"]} for r in p.payload.get("rows", [])],
        code=p.payload.get("code"), verification=p.verification,
        model=p.payload if p.kind == "lora" else p.payload.get("model"),
        merge_previous=any((x.prompt_hash, x.schema_hash) == (p.prompt_hash, p.schema_hash) for x in live))


def show(store: Any, promotion_id: str) -> Detail:
    p = records.get(store, promotion_id)
    detail = Detail(p, promotion_store.events(store, p.id), promotion_store.check_stats(store, p.id))
    if p.status == "proposed":
        wf = _workflow_of(p)
        _, _, detail.changes = _plan(store, p, wf)
        assert wf.path is not None
        detail.root = Path(wf.path).resolve().parent
    return detail


def accept(store: Any, promotion_id: str, *, dry_run: bool = False) -> Detail:
    """Write the artifact and link it in the manifest; a demoted one is re-activated."""
    p = records.get(store, promotion_id)
    wf = _workflow_of(p)
    assert wf.path is not None
    root = Path(wf.path).resolve().parent
    if p.status == "demoted":
        if not dry_run:
            records.update(store, p.id, status="accepted", reason=None, decided_at=now_iso(), event="accepted",
                           detail="re-activated after demotion")
        return Detail(records.get(store, p.id), promotion_store.events(store, p.id),
                      promotion_store.check_stats(store, p.id))
    if p.status != "proposed":
        raise PromotionStateError(f"{p.id} is {p.status}; only proposed (or demoted) promotions can be accepted")
    if step_hashes(_step_spec(wf, p.step_id)) != (p.prompt_hash, p.schema_hash):
        raise PromotionStateError(f"{p.id} was mined under an older prompt/schema of step '{p.step_id}'; "
                                  f"run `engine promotions propose` again")
    version, path, changes = _plan(store, p, wf)
    if not dry_run:
        write_changes(changes)
        for old in records.find(store, workflow=p.workflow, step_id=p.step_id, kind=p.kind,
                                status=("accepted", "stale", "demoted")):
            records.update(store, old.id, status="superseded", event="superseded", detail=f"replaced by {p.id}")
        records.update(store, p.id, status="accepted", artifact=str(path.relative_to(root)), version=version,
                       decided_at=now_iso(), event="accepted", detail=str(path.relative_to(root)), shadow=0)
    return Detail(records.get(store, p.id), promotion_store.events(store, p.id),
                  promotion_store.check_stats(store, p.id), changes, root)


def reject(store: Any, promotion_id: str, reason: str) -> Promotion:
    p = records.get(store, promotion_id)
    if p.status not in ("proposed", "unverified"):
        raise PromotionStateError(f"{p.id} is {p.status}; only proposed or unverified promotions can be rejected")
    records.update(store, p.id, status="rejected", reason=reason, decided_at=now_iso(), shadow=0,
                   event="rejected", detail=reason)
    return records.get(store, p.id)


def set_shadow(store: Any, promotion_id: str, on: bool = True) -> Promotion:
    p = records.get(store, promotion_id)
    if p.status != "proposed":
        raise PromotionStateError(f"{p.id} is {p.status}; only proposed promotions run in shadow")
    records.update(store, p.id, shadow=int(on), event="shadow on" if on else "shadow off")
    return records.get(store, p.id)


def reverify(store: Any, promotion_id: str) -> dict[str, Any]:
    """Verify an accepted/stale/demoted artifact on the calls logged under the step's current
    hashes; when it passes, the manifest entry is re-pointed at them and it serves again."""
    p = records.get(store, promotion_id)
    if p.status not in ("accepted", "stale", "demoted"):
        raise PromotionStateError(f"{p.id} is {p.status}; only materialized promotions can be re-verified")
    wf = _workflow_of(p)
    assert wf.path is not None
    spec = _step_spec(wf, p.step_id)
    if p.kind == "router":
        raise PromotionStateError(f"{p.id} is a router: it is retrained, not re-verified; run "
                                  f"`engine promotions propose` once the step has new checks or labels")
    directory = promotions_dir(wf.path, wf.name)
    art = next((a for a in load_artifacts(directory) if a.id == p.id), None)
    if art is None:
        raise PromotionStateError(f"{p.id}: no artifact for it in {directory}")
    log = mine_step(store, wf.name, p.step_id, spec)
    groups = [g for g in log.groups.values() if g.answerable]  # trusted answers only (promote.evidence)
    normalize = art.normalize
    if art.kind == "classifier":
        from engine.promotion.classifier_serving import classify

        model = art.model
        answerer = lambda inputs: [classify(model, v) for v in inputs]  # noqa: E731
    else:
        answerer = (table_answerer(art.table, lambda v: input_key(v, normalize)) if art.kind == "lookup"
                    else script_answerer(art.code))
    report = verify(answerer, groups, spec, spec.promote.min_agreement)
    report.pop("agreeing_keys", None)
    if report["passed"]:
        change = rehash_entry(directory, p.id, (log.prompt_hash, log.schema_hash))
        if change is not None:
            write_changes([change])
        records.update(store, p.id, status="accepted", reason=None, prompt_hash=log.prompt_hash,
                       schema_hash=log.schema_hash, event="re-verified",
                       detail=f"agreement {report['agreement']:.1%} on {report['answered']} inputs")
    else:
        promotion_store.add_event(store, p.id, "re-verify failed",
                          f"agreement {report['agreement']:.1%} on {report['answered']} of {report['pairs']} inputs")
    return report


@dataclass
class StatusRow:
    promotion: Promotion
    serves: int
    spot: dict[str, int]
    shadow: dict[str, int]
    demoted_reason: str | None
    executions: int = 0
    """Successful executions of the step (whatever served them): `serves / executions` is the share."""

    @property
    def share(self) -> float:
        return self.serves / self.executions if self.executions else 0.0


def status(store: Any, *, workflow: str | None = None) -> list[StatusRow]:
    rows: list[StatusRow] = []
    shown = ("accepted", "stale", "demoted", "proposed")
    for p in records.find(store, workflow=workflow, status=shown):
        if p.status == "proposed" and not p.shadow and not promotion_store.check_stats(store, p.id):
            continue
        stats = promotion_store.check_stats(store, p.id)
        served = promotion_store.served_by_promotion(store, p.workflow, p.step_id, p.kind, p.id)
        rows.append(StatusRow(p, int(served), stats.get("spot", {"checks": 0, "agree": 0}),
                              stats.get("shadow", {"checks": 0, "agree": 0}),
                              p.reason if p.status in ("demoted", "stale") else None,
                              sum(promotion_store.serve_counts(store, p.workflow, p.step_id).values())))
    return rows

