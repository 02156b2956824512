"""What a generated script may use: the one allow-list the static check and the child share.

Only pure standard-library modules, and of each only its public, non-module names (minus the few
that evaluate strings or traverse attributes by name, which would bypass the attribute guard).
"""

from __future__ import annotations

import importlib
import types
from functools import lru_cache

ALLOWED_MODULES: tuple[str, ...] = (
    "bisect", "cmath", "collections", "datetime", "decimal", "difflib", "fractions", "functools", "heapq",
    "html", "itertools", "json", "math", "operator", "re", "statistics", "string", "textwrap", "typing",
    "unicodedata",
)

# Public names that would undo the language layer: string/attribute traversal, eval of strings.
DENIED_NAMES: dict[str, frozenset[str]] = {
    "string": frozenset({"Formatter"}),
    "operator": frozenset({"attrgetter", "methodcaller"}),
    "typing": frozenset({"get_type_hints", "ForwardRef", "get_overloads", "no_type_check_decorator"}),
    # update_wrapper/wraps copy and set attributes named by strings (`assigned=("__globals__",)`).
    "functools": frozenset({"singledispatch", "singledispatchmethod", "update_wrapper", "wraps"}),
    "json": frozenset({"load", "dump"}),
}

DENIED_BUILTINS: frozenset[str] = frozenset({
    "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "getattr", "setattr",
    "delattr", "breakpoint", "input", "help", "exit", "quit", "memoryview", "copyright", "credits", "license",
})

# Attributes that lead to frames, code objects or another scope's variables.
DENIED_ATTRIBUTES: frozenset[str] = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code", "ag_await",
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "f_trace", "tb_frame", "tb_next",
    "co_code", "co_consts", "func_globals", "cell_contents", "mro",
})

FORMAT_METHODS: frozenset[str] = frozenset({"format", "format_map"})

# The special methods a script's classes may define. Every other dunder name is refused: some are
# read by the interpreter by name and would hand a script attributes it may not read itself
# (`__match_args__` names the attributes a `case C(x)` pattern reads), others run at moments the
# script does not control (`__del__`, `__set_name__`, `__init_subclass__`).
ALLOWED_DUNDER_METHODS: frozenset[str] = frozenset({
    "__init__", "__post_init__", "__repr__", "__str__", "__format__", "__hash__", "__bool__", "__len__",
    "__iter__", "__next__", "__reversed__", "__contains__", "__getitem__", "__setitem__", "__delitem__",
    "__missing__", "__call__", "__enter__", "__exit__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__",
    "__ge__", "__int__", "__float__", "__index__", "__round__", "__neg__", "__pos__", "__abs__", "__invert__",
    *(f"__{p}{op}__" for op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "and",
                                  "or", "xor", "lshift", "rshift") for p in ("", "r", "i")),
})


def is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


@lru_cache(maxsize=None)
def module_names(module: str) -> frozenset[str]:
    """The names a script may take from an allowed module."""
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
    return frozenset(n for n in names if not n.startswith("_") and hasattr(mod, n)
                     and not isinstance(getattr(mod, n), types.ModuleType)
                     and n not in DENIED_NAMES.get(module, frozenset()))


def allowed_names() -> dict[str, list[str]]:
    return {m: sorted(module_names(m)) for m in ALLOWED_MODULES}
