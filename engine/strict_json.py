"""Strict JSON for replies and outputs: what a schema-checked value must also be.

A reply is accepted only when it is at most `MAX_REPLY_CHARS` long, parses as JSON without
NaN/Infinity, nests at most `MAX_DEPTH` deep, holds only valid Unicode (no lone surrogates) and
passes its JSON Schema with `format` checked (jsonschema's FormatChecker: date, date-time, email,
uri, ipv4, uuid, ...). Anything else raises `ValueError` with a short message: the llm step then
re-asks or escalates; a hostile reply never crashes the run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from functools import lru_cache
from typing import TYPE_CHECKING, Any


def _import_jsonschema() -> Any:
    """jsonschema, imported without its `iri` checks' grammar. jsonschema imports `rfc3987_syntax`
    (the `iri` and `iri-reference` formats) when it is itself imported, and that module compiles a
    Lark grammar: about 3 s of CPU on a 2-core machine, paid by every process that imports the
    engine (the CLI, each serve and Ray worker) whether or not a schema uses those formats. So
    jsonschema is imported with that module hidden, and the two checks are registered here to
    import it on their first use: the formats are checked as before."""
    if "jsonschema" in sys.modules or "rfc3987_syntax" in sys.modules \
            or importlib.util.find_spec("rfc3987_syntax") is None:
        import jsonschema

        return jsonschema
    sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # `import` raises ImportError
    try:
        import jsonschema
    finally:
        if sys.modules.get("rfc3987_syntax", 0) is None:
            del sys.modules["rfc3987_syntax"]
    for cls in (jsonschema.Draft7Validator, jsonschema.Draft201909Validator, jsonschema.Draft202012Validator):
        for name, rule in (("iri", "iri"), ("iri-reference", "iri_reference")):
            if name not in cls.FORMAT_CHECKER.checkers:
                cls.FORMAT_CHECKER.checks(name, raises=ValueError)(_iri_check(rule))
    return jsonschema


def _iri_check(rule: str) -> Any:
    def check(instance: object) -> bool:
        if not isinstance(instance, str):
            return True
        from rfc3987_syntax import is_valid_syntax

        return bool(is_valid_syntax(rule, instance))

    return check


if TYPE_CHECKING:
    import jsonschema
else:
    jsonschema = _import_jsonschema()

MAX_REPLY_CHARS = 1_000_000
MAX_DEPTH = 64
_DETAIL = 200


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in strict JSON")


def check_size(text: str, max_chars: int = MAX_REPLY_CHARS) -> None:
    if len(text) > max_chars:
        raise ValueError(f"the reply is {len(text):,} characters (at most {max_chars:,})")


def loads(text: str, *, max_chars: int = MAX_REPLY_CHARS) -> Any:
    """Parse `text` as strict JSON, or raise ValueError naming the problem."""
    check_size(text, max_chars)
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"the reply nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise ValueError(f"the reply is not valid JSON ({_short(str(e))})") from None
    check(value)
    return value


def check(value: Any) -> None:
    """Raise ValueError unless `value` is strict JSON data: finite numbers, valid Unicode, shallow."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise ValueError(f"the reply nests deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for k, v in item.items():
                    if not isinstance(k, str):
                        raise ValueError("object keys must be strings")
                    _check_text(k)
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in item
                             if not (type(v) is int or type(v) is bool or v is None))  # nothing to check in these
        elif isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                raise ValueError(f"{item} is not valid JSON (the output must be strict JSON)")
        elif item is not None and not isinstance(item, (bool, int)):
            raise ValueError(f"{type(item).__name__} is not JSON data")


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the reply contains invalid Unicode (a lone surrogate)") from None


@lru_cache(maxsize=256)
def _validator_for(schema_json: str) -> jsonschema.Draft202012Validator:
    cls = jsonschema.Draft202012Validator
    return cls(json.loads(schema_json), format_checker=cls.FORMAT_CHECKER)


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A cached Draft 2020-12 validator for `schema` that checks `format` (looked up by the schema
    object's identity first: the hot path validates the same workflow's schemas on every run)."""
    hit = _by_id.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):  # YAML gave it non-JSON keys or values (dates, ints as keys)
        cls = jsonschema.Draft202012Validator
        return cls(schema, format_checker=cls.FORMAT_CHECKER)
    found = _validator_for(key)
    if len(_by_id) > 4096:
        _by_id.clear()
    _by_id[id(schema)] = (schema, found)
    return found


_by_id: dict[int, tuple[dict[str, Any], jsonschema.Draft202012Validator]] = {}


def schema_problems(schema: dict[str, Any], value: Any, limit: int = 5) -> list[str]:
    """'path: message' for the first `limit` schema errors (messages shortened), [] when valid."""
    try:
        errors = sorted(validator(schema).iter_errors(value), key=lambda e: [str(p) for p in e.path])
    except RecursionError:
        return ["(root): the value nests too deeply to validate"]
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {_short(e.message)}"
            for e in errors[:limit]]


def _short(text: str) -> str:
    return text if len(text) <= _DETAIL else text[:_DETAIL] + "…"
