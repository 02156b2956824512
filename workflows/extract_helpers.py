"""Scripts for extract.yaml."""

import jsonschema


def describe_fields(fields: dict) -> str:
    """Render the requested fields as 'name (type)' for the prompt."""
    return ", ".join(f"{name} ({spec.get('type', 'any')})" for name, spec in fields.items())


def validate_record(record: dict, fields: dict) -> dict:
    """Keep the requested fields only, and check them against their schemas (null allowed)."""
    out = {}
    for name, spec in fields.items():
        value = record.get(name)
        if value is not None:
            jsonschema.validate(value, spec)
        out[name] = value
    return out
