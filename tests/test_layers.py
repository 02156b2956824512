"""engine/ is built in layers, each importing only its own layer and the ones below (the drawing is
in docs/architecture.md): no module imports a layer above its own, no two modules import each other
(directly or round a longer loop), and no module imports another's private (`_name`) names.

Like the store's SQL boundary (tests/store/test_boundary.py), this reads the source with `ast`:
every `import` counts, also one inside a function (a deferred import is still a dependency), except
under `if TYPE_CHECKING:` (annotations only, never run). `import a.b.c` is a dependency on `a.b.c`,
not on its parent packages (as import-linter counts it)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "engine"

LAYERS: list[tuple[str, list[str]]] = [  # bottom first; a module belongs to its longest matching entry
    ("foundation", ["engine.errors", "engine.clock", "engine.hashing", "engine.strict_json", "engine.templating",
                    "engine.telemetry"]),
    ("providers and store", ["engine.providers", "engine.tokens", "engine.store"]),
    ("workflow model", ["engine.spec", "engine.skills", "engine.config", "engine.pricing", "engine.routing",
                        "engine.budgets", "engine.inputs", "engine.quality.spec", "engine.quality.trust",
                        "engine.provider_batch"]),
    ("answer checks", ["engine.quality", "engine.cache.embedders", "engine.compress"]),
    ("steps", ["engine.steps", "engine.quality.cascade", "engine.quality.judge", "engine.quality.compression"]),
    ("servers", ["engine.cache", "engine.promotion", "engine.serving"]),
    ("runner", ["engine.runner"]),
    ("services", ["engine.api", "engine.batch", "engine.executors", "engine.lineage", "engine.reporting",
                  "engine.report_html", "engine.export", "engine.distill", "engine.http_guard",
                  "engine.quality.feedback", "engine.quality.queue", "engine.quality.report",
                  "engine.promotion.review", "engine.skills.testing"]),
    ("interfaces", ["engine", "engine.__main__", "engine.cli", "engine.http", "engine.ui"]),
]
"""`engine` alone is the package's own `__init__` (the public API), not everything under it.
`engine.testing` (test support) is in no layer: nothing in the engine may import it."""

KNOWN_CYCLES: list[set[str]] = []  # none: asking tiers lives in engine.steps.asking, imported by all
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in ENGINE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(name: str, source: str) -> list[tuple[int, str, str | None]]:
    """(line, imported engine module, imported name or None) for each import in a module's source."""
    is_package = MODULES.get(name, Path()).name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(source)
    skip = _type_checking_only(tree)
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "engine"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            if base.split(".")[0] != "engine":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub, None) if sub in MODULES else (node.lineno, base, alias.name))
    return found


def layer_of(name: str) -> int | None:
    best, layer = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            hit = name == prefix or (prefix != "engine" and name.startswith(prefix + "."))
            if hit and len(prefix) > best:
                best, layer = len(prefix), index
    return layer


def _graph() -> dict[str, list[tuple[int, str, str | None]]]:
    return {name: imports_of(name, path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if layer_of(m) is None and m.split(".")[:2] != ["engine", "testing"]]
    assert not unplaced, f"place these in LAYERS (and docs/architecture.md): {unplaced}"


def test_layers_import_downward_only():
    offenders = []
    for name, imports in _graph().items():
        own = layer_of(name)
        for line, target, _ in imports:
            if target.split(".")[:2] == ["engine", "testing"]:
                offenders.append(f"{name}:{line} imports test support {target}")
                continue
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                offenders.append(f"{name}:{line} ({LAYERS[own][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not offenders, "imports up the layers (docs/architecture.md):\n" + "\n".join(offenders)


def test_no_import_cycles_but_the_known_one():
    graph: dict[str, set[str]] = defaultdict(set)
    for name, imports in _graph().items():
        graph[name].update(t for _, t, _ in imports if t in MODULES and t != name)
    found = cycles(graph)
    assert [c for c in found if c not in KNOWN_CYCLES] == [], "modules that import each other"
    # the known cycle may shrink or go; it must not take in more modules
    assert all(any(c <= known for known in KNOWN_CYCLES) for c in found)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(name: str, source: str) -> list[tuple[int, str, str]]:
    """(line, module, name) for each private name of another engine module that a module imports
    (`from engine.x import _y`) or reads off it (`from engine import x` ... `x._y`)."""
    found = [(line, target, imported) for line, target, imported in imports_of(name, source)
             if imported and _private(imported) and target != name]
    tree = ast.parse(source)
    bound: dict[str, str] = {}  # local name -> the engine module it is
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for (_, target, imported), alias in zip(imports_of(name, ast.unparse(node)), node.names):
                if imported is None and (alias.asname or isinstance(node, ast.ImportFrom)):
                    bound[alias.asname or alias.name] = target
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and bound.get(node.value.id, name) != name):
            found.append((node.lineno, bound[node.value.id], node.attr))
    return found


def test_no_private_names_cross_modules():
    offenders = {(name, target, private) for name, path in MODULES.items()
                 for _, target, private in private_uses(name, path.read_text(encoding="utf-8"))}
    assert offenders <= KNOWN_PRIVATE, f"private names of another module: {sorted(offenders - KNOWN_PRIVATE)}"


def test_the_architecture_doc_draws_every_layer():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [f"{layer}: {p}" for layer, prefixes in LAYERS for p in [layer, *prefixes]
               if (f"`{p}`" if p != layer else p) not in doc]
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_the_checks_see_violations():
    """An upward import, a private name and a cycle in made-up source are each found."""
    assert layer_of("engine.store.sqlite") < layer_of("engine.runner")  # type: ignore[operator]
    assert layer_of("engine.quality.feedback") > layer_of("engine.quality.compare")  # type: ignore[operator]
    assert layer_of("engine") == layer_of("engine.cli.core") and layer_of("engine.newpackage.module") is None
    assert imports_of("engine.store.sqlite", "def f():\n    from engine.runner import run_step\n") == [
        (2, "engine.runner", "run_step")]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine.config import EngineConfig\n"
    assert imports_of("engine.routing", source) == []
    assert imports_of("engine.steps.llm", "from . import base\nfrom .base import _x\n") == [
        (1, "engine.steps.base", None), (2, "engine.steps.base", "_x")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert private_uses("engine.steps.foreach", "from engine.steps import llm\nllm._log(1)\nllm.log(2)\n") == [
        (2, "engine.steps.llm", "_log")]
    assert private_uses("engine.steps.llm", "def _log(): pass\nfrom engine.steps import llm\nllm._log()\n") == []
