"""Provider registry. Built-in providers register through the same entry-point group
(`engine.providers`) as third-party plugins: each entry point names a class built with no
arguments. Tests and embedding code may register instances directly."""

from __future__ import annotations

import threading
from importlib.metadata import EntryPoint, entry_points
from typing import Callable

from engine.errors import ConfigError
from engine.providers.base import Provider

_lock = threading.Lock()
_factories: dict[str, Callable[[], Provider]] = {}
_instances: dict[str, Provider] = {}
_loaded_entry_points = False


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    for ep in entry_points(group="engine.providers"):
        _factories.setdefault(ep.name, _factory(ep))
    _loaded_entry_points = True


def _factory(ep: EntryPoint) -> Callable[[], Provider]:
    def build() -> Provider:
        instance: Provider = ep.load()()
        return instance

    return build


def register_provider(name: str, provider: Provider) -> None:
    """Register a provider instance under `name`, replacing any other."""
    with _lock:
        _instances[name] = provider


def unregister_provider(name: str) -> None:
    with _lock:
        _instances.pop(name, None)


def known_providers() -> set[str]:
    """Names that `get_provider` can resolve (entry points and registered instances)."""
    with _lock:
        _load_entry_points()
        return set(_factories) | set(_instances)


def get_provider(name: str) -> Provider:
    """The shared provider instance for `name` (created once per process)."""
    with _lock:
        if name in _instances:
            return _instances[name]
        _load_entry_points()
        factory = _factories.get(name)
        if factory is None:
            known = ", ".join(sorted(set(_factories) | set(_instances)))
            raise ConfigError(f"unknown provider '{name}' (known: {known})")
        instance = factory()
        _instances[name] = instance
        return instance
