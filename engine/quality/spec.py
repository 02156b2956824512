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

`QualityPolicy` is the resolved, defaulted form the llm step and the monitor use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


DEFAULTS: dict[str, Any] = {
    "sample": 0.05, "max_disagreement": 0.03, "target_agreement": 0.98, "min_checks": 5,
    "confidence": 0.95, "cooloff": 3600.0, "cooloff_runs": 1000, "probation_sample": 0.5,
    "probation_checks": 20, "calibration_min": 30, "check_concurrency": 64, "max_pending": 10000,
}


@dataclass(frozen=True)
class QualityPolicy:
    """The resolved `quality:` of one llm step."""

    chain: tuple[str, ...]
    """The tiers the step asks, in order (`tier: auto`: every tier, cheapest first)."""
    reference: str | None
    """None: no tier's answers count as trusted for this step; nothing is sampled."""
    sample: float = DEFAULTS["sample"]
    max_disagreement: float = DEFAULTS["max_disagreement"]
    min_confidence: float | str | None = None
    target_agreement: float = DEFAULTS["target_agreement"]
    min_checks: int = DEFAULTS["min_checks"]
    confidence: float = DEFAULTS["confidence"]
    cooloff: float = DEFAULTS["cooloff"]
    cooloff_runs: int = DEFAULTS["cooloff_runs"]
    probation_sample: float = DEFAULTS["probation_sample"]
    probation_checks: int = DEFAULTS["probation_checks"]
    calibration_min: int = DEFAULTS["calibration_min"]
    check_concurrency: int = DEFAULTS["check_concurrency"]
    max_pending: int = DEFAULTS["max_pending"]
    compare_fields: tuple[str, ...] | None = None
    semantic: float | None = None
    embedder: str = "minilm"
    judge: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def wants_confidence(self) -> bool:
        return self.min_confidence is not None

    def monitored(self, tier: str) -> bool:
        """A tier before the reference in the chain: its answers are sampled and can be escalated past."""
        if self.reference is None or tier == self.reference:
            return False
        if self.reference in self.chain:
            return self.chain.index(tier) < self.chain.index(self.reference)
        return tier in self.chain

    def trust_of(self, tier: str) -> str:
        from engine.quality.trust import REFERENCE, UNVERIFIED

        return REFERENCE if tier == self.reference else UNVERIFIED


def step_chain(spec: Any, config: Any) -> tuple[str, ...]:
    """The step's tiers in order. `tier: auto` is every configured tier, cheapest first (by the
    price of each tier's first model)."""
    if spec.tier == AUTO:
        from engine.pricing import price_of

        def price(tier: str) -> float:
            chain = config.tiers.get(tier) or []
            if not chain:
                return 0.0
            p = price_of(chain[0], config.pricing)
            return p.cost(1_000_000, 1_000_000, 0, 0)

        return tuple(sorted(config.tiers, key=lambda t: (price(t), t)))
    return (spec.tier, *spec.escalate)


def resolve_policy(spec: Any, config: Any) -> QualityPolicy:
    """The step's effective policy: engine-level `quality:` under the step's own, then defaults."""
    base = getattr(config, "quality", None)
    own: QualitySpec | None = getattr(spec, "quality", None)
    merged = own.merged_over(base) if own is not None else (base or QualitySpec.empty())
    chain = step_chain(spec, config)
    reference = merged.reference
    if reference is None and len(chain) > 1:
        reference = chain[-1]
    values = {k: v for k, v in merged.model_dump(exclude_none=True).items()
              if k in DEFAULTS or k == "min_confidence"}
    if spec.tier == AUTO and "min_confidence" not in values:
        values["min_confidence"] = AUTO
    compare = merged.compare
    fields: tuple[str, ...] | None = None
    semantic = judge = None
    embedder = "minilm"
    if isinstance(compare, list):
        fields = tuple(compare)
    elif isinstance(compare, CompareSpec):
        fields = tuple(compare.fields) if compare.fields is not None else None
        semantic, judge, embedder = compare.semantic, compare.judge, compare.embedder
    if reference is not None and reference not in chain:
        chain = (*chain, reference)  # the reference answers last when every tier before it fails
    return QualityPolicy(chain=chain, reference=reference, compare_fields=fields, semantic=semantic,
                         judge=judge, embedder=embedder, **values)
