"""The language layer, checked in the parent: an AST allow-list for generated scripts.

A script passes when it only imports allowed pure modules (`policy.ALLOWED_MODULES`) and takes
only their public names; names a module only to read an allowed attribute from it (`json.loads`,
never `j = json`); reads no attribute starting with `_` and none that leads to frames or code;
names no dunder and no dangerous builtin (`open`, `exec`, `eval`, `compile`, `__import__`,
`globals`, `getattr`, ...); calls `str.format` only on a literal whose fields are plain; reads no
attribute by a name held in data either: no `case C(attr=...)` class pattern naming a `_` attribute,
no string literal that is a dunder name, no three-argument `type(...)`, no special method outside
`policy.ALLOWED_DUNDER_METHODS` (so never `__match_args__`), no binding of a `__` name (`case x as
__y`, `except E as __y`, parameters); and defines `solve`. It is checked when a script is proposed, when an artifact is loaded and before
every run; the runtime and OS layers (`child`, `isolation`) hold even when this one is bypassed.
"""

from __future__ import annotations

import ast
import string
from functools import lru_cache

from engine.promotion.sandbox.policy import (
    ALLOWED_DUNDER_METHODS, ALLOWED_MODULES, DENIED_ATTRIBUTES, DENIED_BUILTINS, FORMAT_METHODS, is_dunder,
    module_names)

MAX_SOURCE = 100_000
_DENIED_NODES = (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)


def plain_format(template: str) -> bool:
    """True when a format string's fields are positional or named, never `{0.attr}` or `{0[key]}`."""
    try:
        fields = [f for _, f, spec, _ in string.Formatter().parse(template) if f is not None]
        specs = [spec for _, f, spec, _ in string.Formatter().parse(template) if spec]
    except ValueError:
        return False
    return all("." not in f and "[" not in f for f in fields) and all("{" not in s for s in specs)


class _Checker(ast.NodeVisitor):
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.modules: dict[str, str] = {}  # local name -> allowed module it stands for
        self.parents: dict[int, ast.AST] = {}

    def fail(self, node: ast.AST, message: str) -> None:
        self.problems.append(f"line {getattr(node, 'lineno', '?')}: {message}")

    def generic_visit(self, node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            self.parents[id(child)] = node
        if isinstance(node, _DENIED_NODES):
            self.fail(node, f"{type(node).__name__} is not allowed")
        super().generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            if alias.name not in ALLOWED_MODULES:
                self.fail(node, f"import of '{alias.name}' is not allowed "
                                f"(allowed: {', '.join(ALLOWED_MODULES)})")
            else:
                self.modules[alias.asname or top] = alias.name
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or node.module == "__future__":
            if node.level:
                self.fail(node, "relative imports are not allowed")
            return
        if node.module not in ALLOWED_MODULES:
            self.fail(node, f"import from '{node.module}' is not allowed (allowed: {', '.join(ALLOWED_MODULES)})")
            return
        names = module_names(node.module)
        for alias in node.names:
            bound = alias.asname or alias.name
            if alias.name == "*":
                self.fail(node, "'import *' is not allowed")
            elif alias.name not in names:
                self.fail(node, f"'{node.module}.{alias.name}' is not allowed")
            elif bound in DENIED_BUILTINS or bound.startswith("__"):
                self.fail(node, f"importing '{alias.name}' as '{bound}' shadows a denied name")
            elif bound in self.modules:
                self.fail(node, f"'{bound}' names both the module '{self.modules[bound]}' and "
                                f"'{node.module}.{alias.name}': use one")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id.startswith("__"):
            self.fail(node, f"the name '{node.id}' is not allowed (no dunder names)")
        elif node.id in DENIED_BUILTINS:
            self.fail(node, f"'{node.id}' is not allowed")
        elif node.id in self.modules:
            parent = self.parents.get(id(node))
            if not isinstance(node.ctx, ast.Load):
                self.fail(node, f"'{node.id}' names a module and cannot be reassigned")
            elif not (isinstance(parent, ast.Attribute) and parent.value is node):
                self.fail(node, f"the module '{node.id}' may only be used as '{node.id}.name'")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            self.fail(node, f"attribute '.{node.attr}' is not allowed (no attributes starting with '_')")
        elif node.attr in DENIED_ATTRIBUTES:
            self.fail(node, f"attribute '.{node.attr}' is not allowed")
        elif isinstance(node.value, ast.Name) and node.value.id in self.modules:
            module = self.modules[node.value.id]
            if node.attr not in module_names(module):
                self.fail(node, f"'{module}.{node.attr}' is not allowed")
        elif node.attr in FORMAT_METHODS:
            literal = node.value
            if not (isinstance(literal, ast.Constant) and isinstance(literal.value, str)
                    and plain_format(literal.value)):
                self.fail(node, f"'.{node.attr}' is only allowed on a literal string with plain fields")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.keywords:
            self.fail(node, "class keywords (metaclass=...) are not allowed")
        self._defined(node, node.name)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._defined(node, node.name)
        self.generic_visit(node)

    def _defined(self, node: ast.AST, name: str) -> None:
        if name.startswith("__") and name not in ALLOWED_DUNDER_METHODS:
            self.fail(node, f"defining '{name}' is not allowed")

    def _bound(self, node: ast.AST, name: str | None) -> None:
        if name is not None and name.startswith("__"):
            self.fail(node, f"the name '{name}' is not allowed (no dunder names)")

    def visit_arg(self, node: ast.arg) -> None:
        self._bound(node, node.arg)
        self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self._bound(node, node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        self._bound(node, node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        self._bound(node, node.name)
        self.generic_visit(node)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self._bound(node, node.rest)
        self.generic_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        # `case C(name=p)` reads `subject.name`: the same rules as `subject.name` in code.
        for attr in node.kwd_attrs:
            if attr.startswith("_") or attr in DENIED_ATTRIBUTES:
                self.fail(node, f"the class pattern reads attribute '{attr}', which is not allowed")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and is_dunder(node.value):
            self.fail(node, f"the string '{node.value}' names a dunder attribute, which is not allowed")

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "type" and (len(node.args) != 1 or node.keywords):
            self.fail(node, "'type' may only be called with one argument (no classes made from a dict)")
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global | ast.Nonlocal) -> None:
        for name in node.names:
            if name.startswith("__"):
                self.fail(node, f"the name '{name}' is not allowed")

    visit_Nonlocal = visit_Global


def _imports_first(tree: ast.Module) -> list[ast.AST]:
    """Imports, wherever they are: visited first so that module names are known where used."""
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


@lru_cache(maxsize=256)
def check_script(code: str) -> tuple[str, ...]:
    """Every reason `code` is refused (empty: it passes the language layer)."""
    if len(code) > MAX_SOURCE:
        return (f"the script is {len(code)} characters (at most {MAX_SOURCE})",)
    try:
        tree = ast.parse(code, filename="promoted.py")
    except (SyntaxError, ValueError) as e:
        return (f"the script does not parse: {e}",)
    except RecursionError:
        return ("the script nests too deeply",)
    checker = _Checker()
    for node in _imports_first(tree):
        checker.visit(node)
    checker.problems.clear()
    try:
        checker.visit(tree)
    except RecursionError:
        return ("the script nests too deeply",)
    problems = list(dict.fromkeys(checker.problems))
    if not any(isinstance(n, ast.FunctionDef) and n.name == "solve" for n in tree.body):
        problems.append("the script defines no top-level 'def solve(inputs)'")
    return tuple(problems[:20])
