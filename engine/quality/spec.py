"""The resolved `quality:` of one llm step (`QualityPolicy`): the spec's keys (`engine.spec.quality`)
merged over engine.yaml's, then defaulted, with the step's chain of tiers worked out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.pricing import price_of
from engine.spec.quality import AUTO, CompareSpec, QualitySpec

__all__ = ["AUTO", "DEFAULTS", "CompareSpec", "QualityPolicy", "QualitySpec", "resolve_policy", "step_chain"]

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
