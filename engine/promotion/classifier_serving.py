"""A classifier answering at run time: embed the step's input, serve the top answer only when its
confidence (the model's `score`: margin or top probability) clears the calibrated threshold, else
abstain (the cache and the tiers answer). A served answer carries its top probability as the
step's confidence, kept in the run log.

An embedder that cannot load (extra not installed, no key for `openai:`) is a failure of this
artifact for this call, never of the run: the request falls through like an abstention.
"""

from __future__ import annotations

import threading
from typing import Any

from engine.errors import EngineError
from engine.promotion.classifier import ClassifierFormatError, ClassifierModel
from engine.promotion.sandbox import SandboxResult
from engine.promotion.training import input_text

_shadow_models: dict[str, ClassifierModel | None] = {}
_lock = threading.Lock()


def classify(model: ClassifierModel | None, values: dict[str, Any]) -> SandboxResult:
    if model is None:
        return SandboxResult(abstained=True)
    from engine.cache.embedders import get_embedder

    try:
        vectors = get_embedder(model.embedder).embed([input_text(values, model.input)])
    except EngineError as e:
        return SandboxResult(error=f"embedder '{model.embedder}': {e}")
    ((output, prob),) = model.decide(vectors)
    return SandboxResult(output=output, confidence=prob) if output is not None else SandboxResult(abstained=True)


def shadow_model(promotion: Any) -> ClassifierModel | None:
    """The model of a classifier proposal running in shadow (parsed once per proposal)."""
    if promotion.kind != "classifier":
        return None
    with _lock:
        if promotion.id not in _shadow_models:
            try:
                _shadow_models[promotion.id] = ClassifierModel.from_dict(promotion.payload.get("model"))
            except ClassifierFormatError:
                _shadow_models[promotion.id] = None
        return _shadow_models[promotion.id]
