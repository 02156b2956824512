"""Stable hashes and normalisation shared by the store, caches and promotion mining."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any, Callable, Generic, TypeVar

_WS = re.compile(r"\s+")


_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, non-ASCII kept (one encoder, built once: `json.dumps` with options
    builds a new one per call)."""
    return _CANONICAL.encode(value)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_text(text: str, *, case: bool = True, whitespace: bool = True, unicode: bool = True) -> str:
    if unicode and not text.isascii():  # NFKC leaves ASCII as it is
        text = unicodedata.normalize("NFKC", text)
    if whitespace:
        text = _WS.sub(" ", text).strip()
    if case:
        text = text.casefold()
    return text


def normalize_value(value: Any, **flags: bool) -> Any:
    """Normalise every string inside a JSON-like value."""
    if not flags.get("case", True) and not flags.get("whitespace", True) and flags.get("unicode", True) and (
            isinstance(value, dict) and all(isinstance(v, str) and v.isascii() for v in value.values())):
        return value  # Unicode normalisation alone leaves ASCII text as it is
    if isinstance(value, str):
        return normalize_text(value, **flags)
    if isinstance(value, dict):
        return {k: normalize_value(v, **flags) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_value(v, **flags) for v in value]
    return value


def input_hash(values: dict[str, Any]) -> str:
    """Hash of a step's dynamic input, normalised for whitespace and Unicode (case kept)."""
    return sha256(canonical_json(normalize_value(values, case=False)))


def schema_hash(schema: Any) -> str:
    return sha256(canonical_json(schema))[:16]


def prompt_hash(*templates: str | None) -> str:
    return sha256("\x00".join(t or "" for t in templates))[:16]


T = TypeVar("T")


class StringInputMemo(Generic[T]):
    """Values computed from a step's inputs, remembered per (scope, raw input items) when every
    input is a string (a served lookup sees the same inputs again); other inputs are computed
    each time. A computed None is not remembered. Bounded: cleared when full."""

    def __init__(self, limit: int = 65536):
        self.limit = limit
        self._memo: dict[tuple[Any, ...], T] = {}

    def get(self, scope: Any, values: dict[str, Any], compute: Callable[[], T | None]) -> T | None:
        key = (scope, *values.items())
        try:
            hit = self._memo.get(key)
        except TypeError:  # a list or dict value: not hashable
            return compute()
        if hit is None:
            hit = compute()
            if hit is not None and all(type(v) is str for v in values.values()):
                if len(self._memo) >= self.limit:
                    self._memo.clear()
                self._memo[key] = hit
        return hit

    def clear(self) -> None:
        self._memo.clear()
