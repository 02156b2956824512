"""Wilson score bounds: the one helper behind demotion of promoted artifacts and the cheap-tier
monitor, so a noisy handful of checks neither demotes nor escalates on its own."""

from __future__ import annotations

from math import sqrt
from statistics import NormalDist


def wilson_bounds(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided Wilson (lower, upper) bounds of a rate at `confidence`; (0, 1) with no data."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z = NormalDist().inv_cdf(confidence)
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom), min(1.0, (centre + margin) / denom)


def disagreement_bound(disagree: int, checks: int, confidence: float) -> float:
    """The disagreement rate to compare with a threshold: the raw rate when `confidence` is 0,
    else its one-sided Wilson lower bound."""
    if checks <= 0:
        return 0.0
    if confidence <= 0:
        return disagree / checks
    return wilson_bounds(disagree, checks, confidence)[0]
