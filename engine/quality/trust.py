"""Trust levels of a logged answer (the `trust` column of `llm_calls`, and of `feedback`).

    reference    answered by the step's reference tier
    verified     a cheaper tier's answer that the reference tier or a person confirmed
    labelled     a person's label (engine feedback)
    unverified   none of these: a cheap tier agreeing with itself proves nothing

Only the first three are *trusted*: they alone build lookups and scripts, judge spot checks and
measure a cheap tier's error rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REFERENCE = "reference"
VERIFIED = "verified"
LABELLED = "labelled"
UNVERIFIED = "unverified"
LEVELS = (REFERENCE, VERIFIED, LABELLED, UNVERIFIED)
TRUSTED = (REFERENCE, VERIFIED, LABELLED)


def is_trusted(level: str | None) -> bool:
    return level in TRUSTED


@dataclass(frozen=True)
class Verdict:
    """What a reference check decided about a served answer, for whatever stored that answer
    (a cache entry) to settle it: `agree`, else the reference's `answer` replaces it."""

    agree: bool
    answer: Any
    """The reference's answer."""
    tier: str | None
    provider: str | None
    model: str | None
    settled_by: str
    """`check:<id>` (the quality check's row)."""
