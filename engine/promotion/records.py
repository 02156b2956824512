"""Promotion records in the store: proposals and their fate, shadow/spot checks, events.

Statuses:
    proposed     waiting for a person (may run in shadow)
    unverified   a script that missed the agreement threshold: not proposed, its report kept
    accepted     materialized: an artifact beside the workflow serves the step
    rejected     remembered (with the reason) so the same proposal is not made again
    superseded   replaced by a newer proposal or a newer accepted version
    stale        the step's prompt or schema changed: not served until re-verified
    demoted      spot checks disagreed too often: the step went back to the llm
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.errors import UserError
from engine.store import promotions as promotion_store
from engine.clock import now_iso

JSON_FIELDS = ("payload", "verification", "savings")
LIVE = ("accepted",)


class PromotionNotFoundError(UserError):
    """No promotion matches the id given."""


@dataclass
class Promotion:
    id: str
    workflow: str
    workflow_path: str | None
    step_id: str
    kind: str
    """lookup | classifier | script | lora | router"""
    status: str
    prompt_hash: str
    schema_hash: str
    fingerprint: str
    payload: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    savings: dict[str, Any] = field(default_factory=dict)
    shadow: int = 0
    artifact: str | None = None
    version: int | None = None
    reason: str | None = None
    created_at: str = ""
    decided_at: str | None = None

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        for key in JSON_FIELDS:
            data[key] = json.dumps(data[key], ensure_ascii=False, default=str)
        return data


def _from_row(row: dict[str, Any]) -> Promotion:
    data = dict(row)
    for key in JSON_FIELDS:
        data[key] = json.loads(data[key]) if isinstance(data.get(key), str) else (data.get(key) or {})
    data["shadow"] = int(data.get("shadow") or 0)
    return Promotion(**data)


GENERATION = [0]
"""Bumped on every insert/update of a promotion in this process: servers built before reload."""


def insert(store: Any, promotion: Promotion) -> Promotion:
    GENERATION[0] += 1
    promotion.created_at = promotion.created_at or now_iso()
    promotion_store.insert(store, promotion.row())
    promotion_store.add_event(store, promotion.id, promotion.status, promotion.reason)
    return promotion


def update(store: Any, promotion_id: str, *, event: str | None = None, detail: str | None = None,
           **fields: Any) -> None:
    GENERATION[0] += 1
    for key in JSON_FIELDS:
        if key in fields:
            fields[key] = json.dumps(fields[key], ensure_ascii=False, default=str)
    promotion_store.update(store, promotion_id, fields)
    if event:
        promotion_store.add_event(store, promotion_id, event, detail)


def get(store: Any, promotion_id: str) -> Promotion:
    rows = promotion_store.by_id_or_prefix(store, promotion_id)
    if len(rows) != 1:
        raise PromotionNotFoundError(
            f"no promotion '{promotion_id}'" if not rows else f"'{promotion_id}' is ambiguous")
    return _from_row(rows[0])


def find(store: Any, *, workflow: str | None = None, step_id: str | None = None,
         status: str | tuple[str, ...] | None = None, kind: str | None = None,
         fingerprint: str | None = None) -> list[Promotion]:
    statuses = (status,) if isinstance(status, str) else status
    return [_from_row(r) for r in promotion_store.find(store, workflow=workflow, step_id=step_id, statuses=statuses,
                                                       kind=kind, fingerprint=fingerprint)]


def record_check(store: Any, promotion_id: str, mode: str, input_hash: str, served: Any, llm: Any,
                 agree: bool) -> None:
    promotion_store.add_check(store, promotion_id, mode, input_hash, json.dumps(served, ensure_ascii=False),
                              json.dumps(llm, ensure_ascii=False), agree)
