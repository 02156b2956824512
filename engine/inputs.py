"""Run inputs: coercion of CLI strings by schema type, defaults, and validation."""

from __future__ import annotations

import json
from typing import Any, Iterable

import jsonschema

from engine.errors import InputError
from engine.strict_json import validator
from engine.spec.models import Workflow


def _surrogate_at(text: str) -> int | None:
    """The position of the first lone surrogate in `text` (not encodable as UTF-8), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _shown(text: str) -> str:
    """`text` safe to print: lone surrogates and other oddities as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def find_surrogate(value: Any) -> tuple[str, int, str] | None:
    """Where the first lone surrogate is in `value` (strings in dicts and lists, keys included):
    (place, character position, the character as an escape), or None. Iterative: any depth."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, place = stack.pop()
        if isinstance(item, str):
            at = _surrogate_at(item)
            if at is not None:
                return place, at, _shown(item[at])
        elif isinstance(item, dict):
            children: list[tuple[Any, str]] = []
            for key, child in item.items():
                name = str(key)
                at = _surrogate_at(name)
                if at is not None:
                    return f"{place}.{_shown(name)}" if place else _shown(name), at, _shown(name[at])
                children.append((child, f"{place}.{name}" if place else name))
            stack.extend(reversed(children))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(child, f"{place}[{i}]") for i, child in enumerate(item)]))
    return None


def _surrogate_problem(what: str, place: str, at: int, char: str) -> str:
    code = int(char[2:], 16) if char.startswith("\\u") else 0
    hint = f": the byte 0x{code - 0xdc00:02x}, not UTF-8 text" if 0xdc80 <= code <= 0xdcff else ""
    where = f" '{place}'" if place else ""
    return f"{what}{where}: character {at} is a lone surrogate ({char}{hint})"


def check_text(what: str, value: Any) -> None:
    """InputError naming the place (input, key path, character position) of a lone surrogate:
    text that is not Unicode (undecodable command-line bytes, a `\\ud800` escape in JSON)."""
    found = find_surrogate(value)
    if found is not None:
        raise InputError(_surrogate_problem(what, *found))


def coerce_cli_value(schema: dict[str, Any], raw: str) -> Any:
    """`--input n=3` gives the string '3'; a schema of type integer wants 3."""
    kind = schema.get("type")
    if kind in (None, "string") or (isinstance(kind, list) and "string" in kind):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # validation will name the problem


def parse_cli_inputs(workflow: Workflow, pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--input '{pair}': expected key=value")
        key, raw = pair.split("=", 1)
        check_text("--input", {key: raw})
        out[key] = coerce_cli_value(workflow.inputs.get(key, {}), raw)
    return out


def parse_inputs_json(text: str) -> dict[str, Any]:
    """`--inputs-json`: a JSON object (strict JSON: no NaN/Infinity), else InputError."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise InputError("--inputs-json nests too deeply") from None
    except ValueError as e:
        raise InputError(f"--inputs-json is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InputError(f"--inputs-json must be a JSON object of name -> value, not {type(value).__name__}")
    check_text("--inputs-json: input", value)
    return value


def parse_tags(tags: Iterable[str]) -> dict[str, str]:
    """`--tag key=value` pairs; a tag without '=' or with an empty key is an InputError."""
    out: dict[str, str] = {}
    for tag in tags:
        check_text("--tag", tag)
        key, sep, value = tag.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--tag '{tag}': expected key=value")
        out[key.strip()] = value
    return out


def validate_inputs(workflow: Workflow, inputs: dict[str, Any]) -> dict[str, Any]:
    """Apply defaults and validate every input against its schema; name every problem."""
    if not isinstance(inputs, dict):
        raise InputError("inputs must be a mapping of name -> value")
    check_text("input", inputs)
    problems: list[str] = []
    unknown = sorted(set(inputs) - set(workflow.inputs))
    if unknown:
        problems.append(f"unknown input(s) {', '.join(unknown)} (declared: {', '.join(workflow.inputs) or 'none'})")
    values: dict[str, Any] = {}
    for name, schema in workflow.inputs.items():
        if name in inputs:
            value = inputs[name]
        elif "default" in schema:
            value = schema["default"]
        else:
            problems.append(f"missing input '{name}'")
            continue
        check = validator(schema)
        if check.is_valid(value):
            values[name] = value
            continue
        error = jsonschema.exceptions.best_match(check.iter_errors(value))
        if error is not None:
            problems.append(f"input '{name}': {error.message}")
        values[name] = value
    if problems:
        raise InputError("; ".join(problems))
    return values
