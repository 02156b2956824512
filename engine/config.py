"""Engine configuration: tiers (ordered model chains with prices) and where the store lives.

Looked up, later files overriding earlier ones tier by tier:
  1. built-in defaults (`local` = the bundled SmolLM2 through llama.cpp)
  2. the user config: `$ENGINE_HOME/engine.yaml` (default `~/.config/engine/engine.yaml`)
  3. `engine.yaml` in the working directory
  4. `engine.yaml` beside the workflow
A workflow's own `tiers:` override all of these for that workflow.

Besides `tiers:` and `store:`, a config holds `pricing:` (USD per million tokens per
`provider:model`, over `engine.pricing.DEFAULT_PRICES`), `budgets:` (spend caps, see
`engine.budgets`) and `fallbacks:` (cooldowns, see `engine.routing`); later files override
earlier ones key by key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from engine.budgets import BudgetConfig
from engine.errors import ConfigError
from engine.pricing import PriceOverride
from engine.spec.quality import QualitySpec
from engine.routing import FallbackConfig
from engine.spec.models import ModelEntry, Strict, TierChain
from engine.store.base import is_postgres_url
from engine.spec.positions import YAMLSyntaxError, field_path, parse_yaml, pydantic_problems, read_text

CONFIG_NAME = "engine.yaml"
DEFAULT_TIERS: dict[str, list[dict[str, Any]]] = {
    "local": [{"model": "llamacpp:smollm2", "input_price": 0.0, "output_price": 0.0}],
}


class EngineConfig(Strict):
    store: str | None = Field(None, description="path of the SQLite store (default .engine/engine.db), or a "
                                                "postgresql://user:pass@host/db URL")
    tiers: dict[str, TierChain] = Field(default_factory=dict)
    pricing: dict[str, PriceOverride] = Field(
        default_factory=dict, description="provider:model -> USD per million tokens (overrides the defaults)")
    budgets: BudgetConfig = Field(default_factory=lambda: BudgetConfig.model_validate({}),
                                  description="spend caps in USD (see engine.budgets)")
    fallbacks: FallbackConfig = Field(default_factory=lambda: FallbackConfig.model_validate({}),
                                      description="cooldowns of failing models (see engine.routing)")
    skills: list[str] = Field(default_factory=list, description="skill library folders (see engine.skills)")
    quality: QualitySpec | None = Field(None, description="reference tier and cheap-tier monitoring for every "
                                                          "llm step (see engine.quality.spec)")
    sources: list[str] = Field(default_factory=list, description="files this config was read from")

    def with_tiers(self, tiers: dict[str, TierChain]) -> EngineConfig:
        if not tiers:
            return self
        return self.model_copy(update={"tiers": {**self.tiers, **tiers}})

    def chain(self, tier: str) -> list[ModelEntry]:
        try:
            return self.tiers[tier]
        except KeyError:
            raise ConfigError(f"unknown tier '{tier}' (known: {', '.join(sorted(self.tiers))})") from None

    def store_path(self) -> Path:
        return Path(self.store or os.environ.get("ENGINE_DB") or Path(".engine") / "engine.db")

    def store_url(self) -> str:
        """Where the store lives: a postgresql:// URL, or the SQLite file's path."""
        target = self.store or os.environ.get("ENGINE_DB")
        if is_postgres_url(target):
            return str(target)
        return str(self.store_path())


def user_config_path() -> Path:
    home = os.environ.get("ENGINE_HOME")
    base = Path(home) if home else Path.home() / ".config" / "engine"
    return base / CONFIG_NAME


def _read(path: Path) -> dict[str, Any]:
    try:
        data, positions = parse_yaml(read_text(path), str(path))
    except YAMLSyntaxError as e:
        raise ConfigError(str(e)) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1:1: the config must be a mapping")
    try:
        config = EngineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(f"{positions.locate(loc)}: {field_path(loc, data)}: {msg}"
                                     for loc, msg in pydantic_problems(e, data))) from None
    from engine.providers.registry import known_providers

    known = known_providers()
    unknown = [(f"{positions.locate(('tiers', tier, i, 'model'))}: {field_path(('tiers', tier, i, 'model'), data)}: "
                f"unknown provider '{entry.provider}' (known: {', '.join(sorted(known))})")
               for tier, chain in config.tiers.items() for i, entry in enumerate(chain) if entry.provider not in known]
    if unknown:
        raise ConfigError("\n".join(unknown))
    from engine.provider_batch.apis import batch_api

    no_batch = [(f"{positions.locate(('tiers', tier, i, 'batch'))}: {field_path(('tiers', tier, i, 'batch'), data)}: "
                 f"provider '{entry.provider}' has no batch API (batch: true works with openai and anthropic)")
                for tier, chain in config.tiers.items() for i, entry in enumerate(chain)
                if entry.batch and batch_api(entry.provider) is None]
    if no_batch:
        raise ConfigError("\n".join(no_batch))
    if data.get("store") and not is_postgres_url(data["store"]):
        store = Path(data["store"])
        data["store"] = str(store if store.is_absolute() else path.parent / store)
    data["skills"] = [str(path.parent / p) for p in data.get("skills") or []]
    return data


def load_config(workflow_dir: Path | None = None, *, cwd: Path | None = None) -> EngineConfig:
    """Merge the built-in defaults with every config file found (see module docstring)."""
    merged: dict[str, Any] = {"tiers": dict(DEFAULT_TIERS), "sources": []}
    candidates = [user_config_path(), (cwd or Path.cwd()) / CONFIG_NAME]
    if workflow_dir is not None:
        candidates.append(workflow_dir / CONFIG_NAME)
    seen: set[Path] = set()
    for path in candidates:
        resolved = path.resolve()
        if resolved in seen or not path.is_file():
            continue
        seen.add(resolved)
        data = _read(path)
        merged["tiers"].update(data.get("tiers") or {})
        merged.setdefault("pricing", {}).update(data.get("pricing") or {})
        for section in ("budgets", "fallbacks", "quality"):  # merged key by key, later files win
            merged.setdefault(section, {}).update(data.get(section) or {})
        merged["skills"] = data.get("skills", []) + merged.get("skills", [])  # nearer files first
        if data.get("store"):
            merged["store"] = data["store"]
        merged["sources"].append(str(path))
    return EngineConfig.model_validate(merged)
