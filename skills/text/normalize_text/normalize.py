"""normalize_text@1: NFKC, strip control and zero-width characters, collapse whitespace."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")


def normalize_text(text: str, lowercase: bool = False, max_chars: int | None = None) -> dict:
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf"))
    text = _WS.sub(" ", text).strip()
    if lowercase:
        text = text.casefold()
    truncated = max_chars is not None and len(text) > max_chars
    if truncated:
        text = text[:max_chars].rstrip()
    return {"text": text, "chars": len(text), "truncated": truncated}
