"""`quality:`: which tier's answers are trusted, how often a cheap tier is checked against it, and
when a cheap tier is escalated past.

Set once for every step in `engine.yaml` (top-level `quality:`) and per llm step under
`llm: {quality: ...}`; the step's keys win, key by key:

    quality:
      reference: premium          # the tier whose answers are trusted (default: the last tier of
                                  # the step's chain when it has more than one; none otherwise)
      sample: 0.05                # share of a cheap tier's valid answers re-asked of the reference
      max_disagreement: 0.03      # escalate past a tier once the Wilson lower bound passes this
      min_confidence: auto        # a number in [0, 1], or auto (calibrated to target_agreement)
      target_agreement: 0.98
      compare: [intent]           # fields that must match; or {fields, semantic: 0.9, judge: TIER}
      check_concurrency: 64       # background checks running at once (async, per process)
      max_pending: 10000          # checks queued at most; past it one is dropped (counted), never waited for

The resolved, defaulted form the llm step and the monitor use is `engine.quality.spec.QualityPolicy`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.spec.cache import parse_duration

AUTO = "auto"


class CompareSpec(BaseModel):
    """How a cheap answer is compared with the reference's (default: exact JSON equality)."""

    model_config = ConfigDict(extra="forbid")
    fields: list[str] | None = Field(None, description="only these top-level fields must match")
    semantic: float | None = Field(
        None, gt=0, le=1, description="string fields match when their embeddings' cosine similarity "
                                      "is at least this")
    embedder: str = Field("minilm", description="the embedder for `semantic` (the cache's embedders)")
    judge: str | None = Field(None, description="a tier asked whether the two answers mean the same")


class QualitySpec(BaseModel):
    """`quality:` in engine.yaml or on an llm step (see the module docstring). Every key optional."""

    model_config = ConfigDict(extra="forbid")
    reference: str | None = Field(None, description="the tier whose answers are trusted")
    sample: float | None = Field(None, ge=0, le=1, description="share of cheap answers re-asked of the reference")
    max_disagreement: float | None = Field(
        None, ge=0, le=1, description="escalate past a tier when the Wilson lower bound of its "
                                      "disagreement with the reference passes this")
    min_confidence: float | Literal["auto"] | None = Field(
        None, description="answers below this confidence escalate; auto calibrates it from checks")
    target_agreement: float | None = Field(None, gt=0, le=1, description="what min_confidence: auto aims for")
    min_checks: int | None = Field(None, ge=1, description="checks before a tier can be escalated past")
    confidence: float | None = Field(None, gt=0, lt=1, description="one-sided confidence of the Wilson bounds")
    cooloff: float | None = Field(None, gt=0, description="seconds (or 30m, 1h, 1d) before an escalated "
                                                          "tier is tried again")
    cooloff_runs: int | None = Field(None, ge=1, description="or after this many runs of the step")
    probation_sample: float | None = Field(None, ge=0, le=1, description="sample rate while on probation")
    probation_checks: int | None = Field(None, ge=1, description="agreeing checks that end probation")
    calibration_min: int | None = Field(None, ge=1, description="checks needed before min_confidence: auto "
                                                                "lets low-confidence answers through")
    compare: list[str] | CompareSpec | None = Field(None, description="how answers are compared")
    check_concurrency: int | None = Field(None, ge=1, le=1024, description="background reference checks "
                                                                          "running at once (per process)")
    max_pending: int | None = Field(None, ge=1, description="background checks queued or running at most; "
                                                            "past it a check is dropped and counted, never waited for")

    @field_validator("min_confidence", mode="before")
    @classmethod
    def _confidence(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("min_confidence must be a number between 0 and 1, or auto")
        if isinstance(v, (int, float)) and not 0 <= v <= 1:
            raise ValueError(f"min_confidence must be between 0 and 1 (got {v})")
        if isinstance(v, str) and v != AUTO:
            raise ValueError(f"min_confidence must be a number between 0 and 1, or auto (got '{v}')")
        return v

    @field_validator("cooloff", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return parse_duration(v)

    def merged_over(self, base: QualitySpec | None) -> QualitySpec:
        """These keys over `base`'s, key by key."""
        if base is None:
            return self
        return QualitySpec.model_validate({**base.model_dump(exclude_none=True),
                                           **self.model_dump(exclude_none=True)})

    @classmethod
    def empty(cls) -> QualitySpec:
        return cls.model_validate({})
