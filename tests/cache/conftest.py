"""The `vectors` fixture: register a `VectorEmbedder` for the test, removed after."""

from __future__ import annotations

from typing import Any

import pytest

from cache_helpers import VectorEmbedder
from engine.cache import register_embedder, unregister_embedder


@pytest.fixture
def vectors() -> Any:
    created: list[str] = []

    def make(mapping: dict[str, list[float]], name: str = "vectors") -> VectorEmbedder:
        embedder = VectorEmbedder(mapping)
        embedder.name = name
        register_embedder(name, embedder)
        created.append(name)
        return embedder

    yield make
    for name in created:
        unregister_embedder(name)
