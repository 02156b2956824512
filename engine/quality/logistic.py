"""A logistic regression fit on embeddings, shared by the learned router (does the cheap tier
agree?) and the distilled classifier (which answer?): scikit-learn's `LogisticRegression`, its
convergence warnings silenced, and one clear error when scikit-learn is missing."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from engine.errors import ConfigError


def fit_logistic(vectors: np.ndarray, targets: Sequence[Any] | np.ndarray, c: float, seed: int, what: str) -> Any:
    """The fitted `LogisticRegression` (L2, inverse strength `c`, seeded); `what` names the model
    in the error when scikit-learn is not installed ("a router", "a classifier")."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ConfigError(f"training {what} needs scikit-learn: pip install 'engine[classifier]'") from None
    clf = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(vectors, targets)
    return clf
