"""redact_pii@1: mask emails, card-like numbers and phone numbers (in that order)."""

from __future__ import annotations

import re

PATTERNS = [
    ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    ("card", re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")),
    ("phone", re.compile(r"(?<![\w+])\+?\d[\d ()-]{6,}\d(?!\w)")),
]


def redact_pii(text: str, mask: str = "[{kind}]") -> dict:
    counts: dict[str, int] = {}
    for kind, pattern in PATTERNS:
        text, n = pattern.subn(mask.replace("{kind}", kind), text)
        if n:
            counts[kind] = n
    return {"text": text, "redacted": counts}
