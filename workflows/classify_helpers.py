"""Scripts for classify.yaml: zero-token preparation and checking."""

import re

_WS = re.compile(r"\s+")


def prepare(text: str, labels: list) -> dict:
    """Normalise whitespace and de-duplicate labels, keeping their order."""
    seen: list = []
    for label in labels:
        label = _WS.sub(" ", str(label)).strip()
        if label and label not in seen:
            seen.append(label)
    return {"text": _WS.sub(" ", text).strip(), "labels": seen}


def check_label(label: str, labels: list) -> str:
    """Map the model's label onto the given labels (case-insensitive); fail if it is not one."""
    for candidate in labels:
        if candidate.casefold() == label.strip().casefold():
            return candidate
    raise ValueError(f"label {label!r} is not one of {labels}")
