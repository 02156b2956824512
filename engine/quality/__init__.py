"""Trust and quality: which answers are evidence (reference, verified, labelled), the cheap-tier
monitor, confidence gating, and people's feedback. See docs in `engine.spec.quality` (settings),
`engine.quality.trust` (levels), `engine.quality.monitor` (states) and `engine.quality.cascade`."""

from engine.quality.spec import CompareSpec, QualityPolicy, QualitySpec, resolve_policy
from engine.quality.trust import LABELLED, REFERENCE, TRUSTED, UNVERIFIED, VERIFIED

__all__ = ["CompareSpec", "LABELLED", "QualityPolicy", "QualitySpec", "REFERENCE", "TRUSTED", "UNVERIFIED",
           "VERIFIED", "resolve_policy"]
