"""The dependency graph of a workflow's steps, derived from their template references.

A step depends on every step its `inputs`, `when` and `for_each` read (`steps.<id>...`). The
runner starts a step as soon as everything it reads is done, so independent steps run at the same
time; results and the log keep the workflow's order. `mermaid(wf)` draws the graph
(`engine validate --graph`); a cycle is a load-time error naming its steps.
"""

from __future__ import annotations

from typing import Any

from engine.templating import TemplateError, references


def step_reads(step: Any) -> list[str]:
    """Ids of the steps `step` reads, in first-seen order (unknown ids included; the loader
    reports them). Templates that do not parse read nothing here (the loader reports them too)."""
    found: list[str] = []
    sources: list[tuple[Any, bool]] = [(step.inputs, False), (step.for_each, False)]
    if step.when is not None:
        sources.append((step.when, True))
    for template, condition in sources:
        if template is None:
            continue
        try:
            refs = references(template, condition=condition)
        except TemplateError:
            continue
        for ref in refs:
            if len(ref.path) >= 2 and ref.path[0] == "steps" and ref.path[1] not in found:
                found.append(ref.path[1])
    return found


def dependencies(steps: list[Any]) -> dict[str, list[str]]:
    """step id -> ids of the known steps it reads (a step reading itself included)."""
    ids = {s.id for s in steps}
    return {s.id: [d for d in step_reads(s) if d in ids] for s in steps}


def find_cycle(deps: dict[str, list[str]], order: list[str]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None. Deterministic: searched in `order`."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in deps.get(node, []):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in order:
        if node not in state:
            found = visit(node)
            if found:
                return found  # each step reads the next
    return None


def mermaid(workflow: Any) -> str:
    """The step graph as Mermaid flowchart text: one node per step (id, kind, fan-out), an edge
    from each step to the steps that read it."""
    deps = dependencies(workflow.steps)
    lines = ["flowchart TD"]
    for step in workflow.steps:
        label = f"{step.id}<br/>{step.kind}"
        if step.kind == "llm" and step.llm is not None:
            label += f" · {step.llm.tier}"
            if step.llm.context is not None:
                label += f" · {step.llm.context.what}"
        if step.kind == "workflow":
            label += f" · {step.workflow}"
        if step.for_each is not None:
            label += f"<br/>for_each {step.item_name}"
        shape = ("[[", "]]") if step.kind == "workflow" else ("[", "]")
        lines.append(f'    {step.id}{shape[0]}"{_escape(label)}"{shape[1]}')
    for step in workflow.steps:
        for dep in deps[step.id]:
            lines.append(f"    {dep} --> {step.id}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace('"', "#quot;")
