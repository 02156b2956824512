"""Deterministic helpers for the support_triage example (script steps: zero tokens)."""

import re

_WS = re.compile(r"\s+")


def normalise_ticket(text: str) -> dict:
    """Collapse whitespace, strip, cap the length; say whether the ticket is empty."""
    clean = _WS.sub(" ", text).strip()[:500]
    return {"text": clean, "chars": len(clean)}
