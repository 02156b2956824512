"""Parent and child runs: a sub-workflow step (`workflow:`) runs its child as a run of its own,
tagged `parent_run` and `parent_step`; `engine runs show` follows the links both ways."""

from __future__ import annotations

from typing import Any

from engine.store import reports


def child_runs(store: Any, run_id: str, step_order: list[str] | None = None) -> list[dict[str, Any]]:
    """The runs started by `run_id`'s sub-workflow steps: in `step_order` (the parent's steps),
    then item order, then start time."""
    out = []
    for r in reports.child_runs(store, run_id):
        tags: dict[str, Any] = r["tags"] if isinstance(r.get("tags"), dict) else {}
        out.append({"id": r["id"], "workflow": r["workflow"], "status": r["status"], "cost": r["cost"],
                    "step": tags.get("parent_step"), "item": tags.get("parent_item")})
    rank = {s: i for i, s in enumerate(step_order or [])}
    out.sort(key=lambda c: (rank.get(c["step"], len(rank)), c["item"] if c["item"] is not None else -1))
    return out


def with_links(store: Any, run: dict[str, Any]) -> dict[str, Any]:
    """`run` (as `store.run` gives it) with `parent` ({id, step} or None) and `children`."""
    tags: dict[str, Any] = run["tags"] if isinstance(run.get("tags"), dict) else {}
    parent = tags.get("parent_run")
    return {**run, "parent": {"id": parent, "step": tags.get("parent_step")} if parent else None,
            "children": child_runs(store, run["id"], [s["step_id"] for s in run.get("steps") or []])}
