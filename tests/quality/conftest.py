"""A two-tier classification step: a cheap tier that may be wrong, a reference that is right."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from engine.providers.base import Completion, CompletionRequest
from engine.quality import monitor
from engine.runner import open_store

from quality_helpers import TRUTH, WORKFLOW


def text_of(request: CompletionRequest) -> str:
    return request.messages[1]["content"].removeprefix("Classify: ")


class Tiers:
    """fake:small (the cheap tier) and fake:large (the reference) answer differently."""

    def __init__(self) -> None:
        self.cheap: Callable[[str], Any] = lambda text: {"intent": "card"}  # always 'card': often wrong
        self.reference: Callable[[str], Any] = lambda text: {"intent": TRUTH.get(text, "other")}
        self.cheap_confidence: Callable[[str], float | None] = lambda text: None
        self.calls: dict[str, int] = {"small": 0, "medium": 0, "large": 0}

    def __call__(self, request: CompletionRequest) -> Any:
        self.calls[request.model] = self.calls.get(request.model, 0) + 1
        text = text_of(request)
        if request.model == "large":
            reply = self.reference(text)
        else:
            reply = self.cheap(text)
        if isinstance(reply, dict) and request.model != "large":
            import json

            return Completion(text=json.dumps(reply), finish_reason="stop", input_tokens=10, output_tokens=5,
                              model=request.model, confidence=self.cheap_confidence(text))
        return reply


@pytest.fixture(autouse=True)
def _default_sampling(engine_home: Path) -> None:
    """The quality tests run with the shipped defaults (the root conftest turns sampling off)."""
    home_config = Path(os.environ["ENGINE_HOME"]) / "engine.yaml"
    home_config.unlink(missing_ok=True)


@pytest.fixture
def tiers(fake: Any) -> Tiers:
    t = Tiers()
    fake.responder = t
    monitor.seed(7)
    return t


@pytest.fixture
def triage_wf(project: Callable[..., Path]) -> Callable[..., Path]:
    def write(extra: str = "", config: str | None = None) -> Path:
        kwargs = {} if config is None else {"config": config}
        return project(WORKFLOW % extra, **kwargs)

    return write


@pytest.fixture
def store() -> Any:
    return open_store(Path(".engine/engine.db"))
