"""Jinja2 templating: strict rendering, typed single-expression values, reference analysis.

A template that is exactly one expression (``"{{ steps.classify.output.intent }}"``) evaluates to
the expression's native value (a list stays a list); anything else renders to a string. Missing
variables are always errors (``StrictUndefined``), never empty strings.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)

MAX_RENDER_CHARS = 10_000_000
"""The largest value a template may make or render (characters of text, items of a list)."""
MAX_RENDER_WORK = 100_000_000
"""The most characters and items one render may make in all (every operator, call, filter and
the output together): what bounds time when a loop makes many values each under the cap."""
MAX_LOOP_STEPS = 1_000_000
"""The most `{% for %}` iterations one render may run (nested loops count every inner step)."""
MAX_INT_BITS = 100_000
"""The largest integer (in bits) arithmetic in a template may make."""


class _Budget:
    """What one render has spent so far: loop steps and characters/items made."""

    __slots__ = ("steps", "work")

    def __init__(self) -> None:
        self.steps = 0
        self.work = 0


class _Current(threading.local):
    budget: _Budget | None = None


_CURRENT = _Current()
"""The budget of the render running on this thread (a jinja render runs on its caller's thread)."""


def _refuse(what: str) -> SecurityError:
    return SecurityError(f"template render budget: {what}")


def _size(value: Any, limit: int) -> int:
    """How many characters/items `value` holds, counted through nested lists and mappings,
    stopping once past `limit` (so the count costs at most about `limit` steps)."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, dict):
            total += len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > MAX_INT_BITS:
            raise _refuse(f"an integer of more than {MAX_INT_BITS:,} bits")
    return total


def _charge(value: Any) -> Any:
    """Check a value a template made against the caps, and charge it to the render's budget."""
    if isinstance(value, (str, list, tuple, dict, set, frozenset, bytes, int)):
        size = _size(value, MAX_RENDER_CHARS)
        if size > MAX_RENDER_CHARS:
            raise _refuse(f"a value of more than {MAX_RENDER_CHARS:,} characters/items")
        budget = _CURRENT.budget
        if budget is not None:
            budget.work += size
            if budget.work > MAX_RENDER_WORK:
                raise _refuse(f"more than {MAX_RENDER_WORK:,} characters/items made in all")
    return value


def _no_big_ints(args: Any, kwargs: Any) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_RENDER_CHARS:
            raise _refuse(f"a size argument of {value:,} (at most {MAX_RENDER_CHARS:,})")


_WIDE_FORMAT = re.compile(r"%[^a-zA-Z%]*(?:\*|\d{8,})|\{[^{}]*(?:\{|\d{8,})")
"""A `%` or `{}` format with a width of 8+ digits, or one given by an argument (`*`, `{:{w}}`)."""


def _check_format(template: Any) -> None:
    if isinstance(template, str) and _WIDE_FORMAT.search(template):
        raise _refuse("a format width of 8 or more digits, or one taken from an argument")


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        count = text.count(old) if old else len(text) + 1
        if len(text) + count * (len(new) - len(old)) > MAX_RENDER_CHARS:
            raise _refuse(f"replace() would make more than {MAX_RENDER_CHARS:,} characters")


def _check_join(separator: Any, items: Any) -> None:
    if isinstance(items, (list, tuple)):
        size = _size(items, MAX_RENDER_CHARS) + len(str(separator)) * len(items)
        if size > MAX_RENDER_CHARS:
            raise _refuse(f"join() would make more than {MAX_RENDER_CHARS:,} characters")


def _check_lines(text: Any, width: Any) -> None:
    """indent/wordwrap-like growth: `width` more characters on every line."""
    if isinstance(text, str) and isinstance(width, str):
        width = len(width)
    if isinstance(text, str) and isinstance(width, int) and (text.count("\n") + 1) * width > MAX_RENDER_CHARS:
        raise _refuse(f"the result would be more than {MAX_RENDER_CHARS:,} characters")


def _check_str_method(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _no_big_ints(args, kwargs)
    if name in ("format", "format_map"):
        _check_format(text)
    elif name == "replace" and len(args) >= 2:
        _check_replace(text, args[0], args[1])
    elif name == "join" and args:
        _check_join(text, args[0])
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tab, int) and text.count("\t") * tab > MAX_RENDER_CHARS:
            raise _refuse(f"expandtabs() would make more than {MAX_RENDER_CHARS:,} characters")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                if times > 0 and _size(seq, MAX_RENDER_CHARS) * times > MAX_RENDER_CHARS:
                    raise _refuse(f"repeating a value {times:,} times makes more than "
                                  f"{MAX_RENDER_CHARS:,} characters/items")
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise _refuse(f"an integer of more than {MAX_INT_BITS:,} bits")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0 and (
                left.bit_length() * right > MAX_INT_BITS):
            raise _refuse(f"an integer of more than {MAX_INT_BITS:,} bits")
        if isinstance(left, float) or isinstance(right, float):
            return
    elif operator == "%":
        _check_format(left)


class _Guard(NodeTransformer):
    """Route what a template makes through the budget: every `{% for %}` iterates through
    `environment.engine_loop` (steps counted), every filter result and `~` concatenation through
    `environment.engine_charge` (size checked and charged)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _environment_call("engine_loop", node.iter)
        return node

    def visit_FilterBlock(self, node: nodes.FilterBlock) -> nodes.Node:
        node.body = [self.visit(child) for child in node.body]  # its filter stays a Filter node
        return node

    def visit_Filter(self, node: nodes.Filter) -> nodes.Node:
        self.generic_visit(node)
        return _environment_call("engine_charge", node)

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _environment_call("engine_charge", node)


def _environment_call(name: str, arg: nodes.Node) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(name, lineno=arg.lineno), [arg], [], None, None,
                      lineno=arg.lineno)


class _Environment(ImmutableSandboxedEnvironment):
    """`a.b` on a mapping reads its key `b` first, so a step or field named like a dict method
    (`steps.items.output`, `row.keys`) means the value, not the method.

    Rendering is budgeted (a SecurityError past a cap): operators that repeat or grow values
    (`*`, `**`, `+`, `%`), string methods and filters are checked before they run where their
    arguments alone could ask for too much, and every value they make is size-checked after;
    loops count their steps; the rendered text is checked as it is produced."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return _charge(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if getattr(__obj, "__func__", None) in _GUARDS:
            return __context.call(__obj, *args, **kwargs)
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            _check_str_method(owner, getattr(method, "__name__", ""), args, kwargs)
        return _charge(super().call(__context, __obj, *args, **kwargs))

    def engine_loop(self, iterable: Any) -> Any:
        """Count each step of a `{% for %}` against the render's budget."""
        budget = _CURRENT.budget or _Budget()
        for item in iterable:
            budget.steps += 1
            if budget.steps > MAX_LOOP_STEPS:
                raise _refuse(f"more than {MAX_LOOP_STEPS:,} loop steps")
            yield item

    def engine_charge(self, value: Any) -> Any:
        return _charge(value)

    def _generate(self, source: nodes.Template, name: str | None, filename: str | None,
                  defer_init: bool = False) -> str:
        return super()._generate(_Guard().visit(source), name, filename, defer_init=defer_init)


_GUARDS = {_Environment.engine_loop, _Environment.engine_charge}


def _guard_filter(fn: Any, check: Any) -> Any:
    """A filter whose arguments are checked before it runs (its jinja pass-arg marks kept)."""
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return fn(*args, **kwargs)

    return functools.wraps(fn)(guarded)


def _filter_checks() -> dict[str, Any]:
    def ints(*args: Any, **kwargs: Any) -> None:
        _no_big_ints(args, kwargs)

    def indent(s: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
        ints(s, width, *args, **kwargs)
        _check_lines(s, kwargs.get("width", width))

    def wordwrap(env: Any, s: Any, width: Any = 79, *args: Any, **kwargs: Any) -> None:
        ints(width, *args, **kwargs)
        wrap = kwargs.get("wrapstring") or (args[1] if len(args) > 1 else None)
        if isinstance(s, str) and isinstance(wrap, str):
            _check_lines(s + "\n" * (len(s) // max(1, width if isinstance(width, int) else 1)), wrap)

    def format_(value: Any, *args: Any, **kwargs: Any) -> None:
        ints(*args, **kwargs)
        _check_format(value)

    def replace(eval_ctx: Any, s: Any, old: Any, new: Any, *args: Any, **kwargs: Any) -> None:
        ints(*args, **kwargs)
        _check_replace(s, old, new)

    def join(eval_ctx: Any, value: Any, d: Any = "", *args: Any, **kwargs: Any) -> None:
        _check_join(kwargs.get("d", d), value)

    return {"indent": indent, "wordwrap": wordwrap, "format": format_, "replace": replace, "join": join}


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:  # noqa: A002
    if not all(isinstance(v, int) for v in (n, min, max)) or n * max > 100_000:
        raise _refuse("lipsum() of more than 100,000 words")
    from jinja2.utils import generate_lorem_ipsum

    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


ENV = _Environment(
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)
ENV.filters["tojson_compact"] = lambda v: __import__("json").dumps(v, ensure_ascii=False)


def _size_arguments(*args: Any, **kwargs: Any) -> None:
    """Any other filter: no size-like argument past the cap (the filtered value itself aside)."""
    _no_big_ints(args[1:], kwargs)


_CHECKS = _filter_checks()
for _name, _fn in list(ENV.filters.items()):
    ENV.filters[_name] = _guard_filter(_fn, _CHECKS.get(_name, _size_arguments))
ENV.globals["lipsum"] = _lipsum


def budgeted_environment(**options: Any) -> jinja2.Environment:
    """A sandboxed environment with `ENV`'s render budget, guarded filters and globals, and
    delimiters of its own (a skill's `[[ ]]` params): run its templates through `render_budgeted`."""
    env = _Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False, **options)
    env.filters.update(ENV.filters)
    env.globals["lipsum"] = _lipsum
    return env


def render_budgeted(compiled: Any, context: dict[str, Any]) -> Any:
    """Evaluate a compiled expression (a callable) or render a `jinja2.Template` of a
    `budgeted_environment` under a render budget of its own, a template's text size-checked as it
    is produced. jinja's errors pass through (a `SecurityError` past a cap)."""
    outer = _CURRENT.budget
    _CURRENT.budget = _Budget()
    try:
        return _render_text(compiled, context) if isinstance(compiled, jinja2.Template) else compiled(**context)
    finally:
        _CURRENT.budget = outer


class TemplateError(Exception):
    """A template failed to parse or render; wrapped into SpecError/StepError by callers."""


@dataclass(frozen=True)
class Reference:
    """A dotted reference found in a template, e.g. ('steps', 'classify', 'output', 'intent')."""

    path: tuple[str, ...]


def _single_expression(source: str) -> str | None:
    m = _SINGLE_EXPR.match(source)
    if m and "{{" not in m.group("expr") and "{%" not in source:
        return m.group("expr").strip()
    return None


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"^{_NAME}(?:\.{_NAME})*$")
_PLACEHOLDER = re.compile(rf"\{{\{{\s*({_NAME})\s*\}}\}}")
_KEYWORDS = {"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else",
             "loop", "self", "range", "dict", "lipsum", "cycler", "joiner", "namespace"}
_DICT_ATTRS = set(dir(dict))


class _Path:
    """A precompiled `{{ a.b.c }}`: plain dict lookups, the jinja expression as the fallback for
    anything else (a missing key, a non-dict, a name that is also a dict method)."""

    def __init__(self, parts: tuple[str, ...], fallback: Any):
        self.parts, self.fallback = parts, fallback

    def __call__(self, **context: Any) -> Any:
        value: Any = context
        for part in self.parts:
            if type(value) is not dict or part not in value or part in _DICT_ATTRS:
                return self.fallback(**context)
            value = value[part]
        return value


class _Format:
    """A precompiled template made of literal text and `{{ name }}` placeholders only: joined
    with `str()`, as jinja does; jinja renders it when a name is missing (for its error)."""

    def __init__(self, pieces: list[tuple[bool, str]], fallback: Any):
        self.pieces, self.fallback = pieces, fallback

    def render(self, **context: Any) -> str:
        out = []
        for is_name, text in self.pieces:
            if not is_name:
                out.append(text)
            elif text in context:
                value = context[text]
                out.append(value if type(value) is str else str(value))
            else:
                return str(self.fallback.render(**context))
        return "".join(out)


def _fast_template(source: str, compiled: Any) -> _Format | None:
    if "{%" in source or "{#" in source or "\r" in source or "{{" in _PLACEHOLDER.sub("", source):
        return None
    pieces: list[tuple[bool, str]] = []
    at = 0
    for m in _PLACEHOLDER.finditer(source):
        if m.group(1) in _KEYWORDS:
            return None
        if m.start() > at:
            pieces.append((False, source[at:m.start()]))
        pieces.append((True, m.group(1)))
        at = m.end()
    if at < len(source):
        pieces.append((False, source[at:]))
    return _Format(pieces, compiled)


@lru_cache(maxsize=4096)
def _compile(source: str) -> tuple[str, Any]:
    """Compile once per distinct template (every step's templates are compiled when its workflow
    loads and reused by every run). Plain references and simple placeholders get a fast path that
    gives the same result as jinja without its render machinery."""
    expr = _single_expression(source)
    try:
        if expr is not None:
            compiled = ENV.compile_expression(expr, undefined_to_none=False)
            if _DOTTED.match(expr) and expr.split(".")[0] not in _KEYWORDS:
                return "expr", _Path(tuple(expr.split(".")), compiled)
            return "expr", compiled
        template = ENV.from_string(source)
        return "template", _fast_template(source, template) or template
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template syntax error: {e.message} (template line {e.lineno})") from e


def plain_name(source: Any) -> str | None:
    """The variable a template that is exactly ``{{ name }}`` reads (its value is that variable's,
    the same object), or None for any other template or value."""
    if not isinstance(source, str) or "{{" not in source:
        return None
    try:
        kind, compiled = _compile(source)
    except TemplateError:
        return None
    if type(compiled) is _Path and len(compiled.parts) == 1 and compiled.parts[0] not in _DICT_ATTRS:
        return compiled.parts[0]
    return None


def check_syntax(source: str) -> None:
    """Raise TemplateError if `source` does not parse."""
    _compile(source)


def render(source: Any, context: dict[str, Any]) -> Any:
    """Render a template value. Non-strings pass through; dicts/lists are rendered recursively."""
    if isinstance(source, dict):
        return {k: render(v, context) for k, v in source.items()}
    if isinstance(source, list):
        return [render(v, context) for v in source]
    if not isinstance(source, str) or ("{{" not in source and "{%" not in source):
        return source
    kind, compiled = _compile(source)
    outer = _CURRENT.budget
    if type(compiled) is not _Path:  # a plain lookup makes nothing: no budget to keep
        _CURRENT.budget = _Budget()
    try:
        value = compiled(**context) if kind == "expr" else _render_text(compiled, context)
    except jinja2.UndefinedError as e:
        raise TemplateError(f"undefined variable: {e.message}") from e
    except jinja2.TemplateError as e:
        raise TemplateError(str(e)) from e
    except RecursionError:
        raise TemplateError("the template recurses too deeply") from None
    except MemoryError:
        raise TemplateError("the template needs more memory than there is") from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as e:
        raise TemplateError(f"{type(e).__name__}: {e}") from e
    finally:
        _CURRENT.budget = outer
    if isinstance(value, jinja2.Undefined):
        raise TemplateError("expression evaluated to an undefined value")
    return value


def _render_text(compiled: Any, context: dict[str, Any]) -> str:
    """Render a template, checking the size of the text as it is produced."""
    if isinstance(compiled, _Format):
        return compiled.render(**context)
    out: list[str] = []
    size = 0
    for piece in compiled.generate(**context):
        size += len(piece)
        if size > MAX_RENDER_CHARS:
            raise _refuse(f"the rendered text is more than {MAX_RENDER_CHARS:,} characters")
        out.append(piece)
    return "".join(out)


def render_text(source: str, context: dict[str, Any]) -> str:
    """Render a template to text (prompts, keys)."""
    value = render(source, context) if ("{{" in source or "{%" in source) else source
    return value if isinstance(value, str) else str(value)


def evaluate_condition(source: str | bool, context: dict[str, Any]) -> bool:
    """Evaluate a `when:` condition: a bare expression or a ``{{ }}`` template."""
    if isinstance(source, bool):
        return source
    text = source if ("{{" in source or "{%" in source) else "{{ " + source + " }}"
    value = render(text, context)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "none", "no")
    return bool(value)


def _parse(source: str) -> nodes.Template:
    try:
        return ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template syntax error: {e.message} (template line {e.lineno})") from e


def _dotted(node: nodes.Node) -> tuple[str, ...] | None:
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            parts.append(str(node.arg.value))
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return tuple(reversed(parts))
        else:
            return None


def references(source: Any, *, condition: bool = False) -> list[Reference]:
    """Every dotted variable reference in a template (longest chains only)."""
    if isinstance(source, dict):
        return [r for v in source.values() for r in references(v, condition=condition)]
    if isinstance(source, list):
        return [r for v in source for r in references(v, condition=condition)]
    if not isinstance(source, str):
        return []
    if condition and "{{" not in source and "{%" not in source:
        source = "{{ " + source + " }}"
    tree = _parse(source)
    found: list[Reference] = []
    inner: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        if id(node) in inner:
            continue
        child = node
        while isinstance(child, (nodes.Getattr, nodes.Getitem)):
            child = child.node
            inner.add(id(child))
        path = _dotted(node)
        if path and not (isinstance(node, nodes.Name) and node.ctx != "load"):
            found.append(Reference(path))
    return found


def free_variables(source: str) -> set[str]:
    """Top-level names a template reads (excluding names it assigns itself)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(_parse(source)))
