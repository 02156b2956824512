"""The `cache:` key of an llm step: exact and semantic caching settings.

    cache: true                       # exact cache with defaults (no `cache:` key = no caching)
    cache: false                      # never cache this step (e.g. compliance)
    cache:
      ttl: 7d                         # seconds, or 30m / 12h / 7d; none = no expiry
      normalize: [whitespace, unicode, case]
      tenant: true                    # namespace entries by the run's tenant (default true)
      trust: active                   # or verified: serve only trusted entries (see engine.cache.exact)
      semantic:
        threshold: 0.90               # cosine similarity needed to serve a near-duplicate
        margin: 0.12                  # every entry with another answer must be this much less similar
        input: text                   # which input to embed (default: all dynamic inputs)
        embedder: minilm              # minilm | static | static:PATH | openai:text-embedding-3-small | hash
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

Normalization = Literal["case", "whitespace", "unicode"]


def parse_duration(value: Any) -> float | None:
    """Seconds from a number or a string like `90`, `30m`, `12h`, `7d`; None stays None."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value is None else float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"'{value}' is not a duration (seconds, or a number with s, m, h or d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _default_normalization() -> list[Normalization]:
    return ["whitespace", "unicode"]


class SemanticCacheSpec(BaseModel):
    """Serve a cached answer to a near-duplicate input (cosine similarity of embeddings).

    Defaults from the BANKING77 measurement (examples/benchmarks/semantic_cache.py): at 0.90 with
    margin 0.12, 44% of test queries are served with 0.6% of them wrong; plain nearest neighbour at
    0.90 serves 60% with 3.6% wrong. For free-text answers every other entry counts as a different
    answer, so the margin makes generation steps stricter by itself."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.90, gt=0, le=1, description="cosine similarity needed for a hit")
    margin: float = Field(0.12, ge=0, le=1, description=(
        "the nearest entry with a different answer must be at least this much less similar; 0 = plain "
        "nearest neighbour"))
    input: str | None = Field(None, description="the input to embed (default: every dynamic input)")
    embedder: str = Field("minilm", description="minilm | static | static:<path> | hash | openai:<model>")


class CacheSpec(BaseModel):
    """Per-step cache settings. Caching is opt-in: `cache: true` (or any mapping) turns the exact
    cache on for the step; `semantic:` adds near-duplicate serving."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false turns every cache off for this step")
    ttl: float | None = Field(None, gt=0, description="seconds (or 30m, 12h, 7d) before an entry expires")
    normalize: list[Normalization] = Field(
        default_factory=_default_normalization,
        description="how the dynamic input is normalised for the exact key")
    tenant: bool = Field(True, description="namespace entries by the run's tenant key")
    semantic: SemanticCacheSpec | None = Field(None, description="near-duplicate serving (off unless given)")
    trust: Literal["active", "verified"] = Field("active", description=(
        "which entries are served: verified = only trusted ones (the reference's answers, answers it "
        "confirmed, people's labels); active = also a cheap tier's unchecked answers while that tier is "
        "in use, sampled for reference checks like live answers"))

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, bool):
            return {"enabled": data}
        if isinstance(data, dict) and data.get("semantic") is True:
            return {**data, "semantic": {}}
        if isinstance(data, dict) and data.get("semantic") is False:
            return {**data, "semantic": None}
        return data

    @field_validator("ttl", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return parse_duration(v)
