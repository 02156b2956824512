"""Trust levels of a logged answer (the `trust` column of `llm_calls`, and of `feedback`).

    reference    answered by the step's reference tier
    verified     a cheaper tier's answer that the reference tier or a person confirmed
    labelled     a person's label (engine feedback)
    unverified   none of these: a cheap tier agreeing with itself proves nothing

Only the first three are *trusted*: they alone build lookups and scripts, judge spot checks and
measure a cheap tier's error rate.
"""

from __future__ import annotations

REFERENCE = "reference"
VERIFIED = "verified"
LABELLED = "labelled"
UNVERIFIED = "unverified"
LEVELS = (REFERENCE, VERIFIED, LABELLED, UNVERIFIED)
TRUSTED = (REFERENCE, VERIFIED, LABELLED)


def is_trusted(level: str | None) -> bool:
    return level in TRUSTED
