"""Jinja2 templating: strict rendering, typed single-expression values, reference analysis.

A template that is exactly one expression (``"{{ steps.classify.output.intent }}"``) evaluates to
the expression's native value (a list stays a list); anything else renders to a string. Missing
variables are always errors (``StrictUndefined``), never empty strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)

class _Environment(ImmutableSandboxedEnvironment):
    """`a.b` on a mapping reads its key `b` first, so a step or field named like a dict method
    (`steps.items.output`, `row.keys`) means the value, not the method."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


ENV = _Environment(
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)
ENV.filters["tojson_compact"] = lambda v: __import__("json").dumps(v, ensure_ascii=False)


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
    try:
        value = compiled(**context) if kind == "expr" else compiled.render(**context)
    except jinja2.UndefinedError as e:
        raise TemplateError(f"undefined variable: {e.message}") from e
    except jinja2.TemplateError as e:
        raise TemplateError(str(e)) from e
    if isinstance(value, jinja2.Undefined):
        raise TemplateError("expression evaluated to an undefined value")
    return value


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
