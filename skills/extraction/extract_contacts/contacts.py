"""extract_contacts@1: emails, URLs and phone numbers by regular expression."""

from __future__ import annotations

import re

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
URL = re.compile(r"https?://[^\s<>\"']+")
PHONE = re.compile(r"(?<![\w+])\+?\d[\d ()-]{6,}\d(?!\w)")
_TRAILING = ".,;:!?)"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def extract_contacts(text: str, kinds: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if "emails" in kinds:
        found["emails"] = _unique(EMAIL.findall(text))
    if "urls" in kinds:
        found["urls"] = _unique(u.rstrip(_TRAILING) for u in URL.findall(text))
    if "phones" in kinds:
        found["phones"] = _unique(p.strip() for p in PHONE.findall(text) if sum(c.isdigit() for c in p) >= 7)
    return found
