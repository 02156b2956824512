"""Run inputs: coercion of CLI strings by schema type, defaults, and validation."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from engine.errors import InputError
from engine.spec.models import Workflow


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
        out[key] = coerce_cli_value(workflow.inputs.get(key, {}), raw)
    return out


_validators: dict[int, tuple[dict[str, Any], jsonschema.Draft202012Validator]] = {}


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """One validator per input schema, built once (the schema dict lives as long as its workflow)."""
    hit = _validators.get(id(schema))
    if hit is None or hit[0] is not schema:
        hit = _validators[id(schema)] = (schema, jsonschema.Draft202012Validator(schema))
    return hit[1]


def validate_inputs(workflow: Workflow, inputs: dict[str, Any]) -> dict[str, Any]:
    """Apply defaults and validate every input against its schema; name every problem."""
    if not isinstance(inputs, dict):
        raise InputError("inputs must be a mapping of name -> value")
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
        validator = _validator(schema)
        if validator.is_valid(value):
            values[name] = value
            continue
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            problems.append(f"input '{name}': {error.message}")
        values[name] = value
    if problems:
        raise InputError("; ".join(problems))
    return values
