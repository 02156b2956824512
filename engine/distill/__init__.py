"""`engine distill STEP`: a LoRA adapter for the local tier, taught by the step's trusted answers.

    1. the trusted pairs, as `engine export` builds them (`engine.export.training_examples`), split
       into train and validation (stratified by answer);
    2. the local tier's model (its first `llamacpp:` entry) read from its GGUF file by transformers
       (dequantised to float32) and a peft LoRA adapter trained on CPU (`lora.train_lora`);
    3. the adapter written as a llama.cpp GGUF adapter (`gguf_adapter.write_adapter`) beside the
       workflow: `promotions/<workflow>/<step>.lora.v<N>.gguf`;
    4. the local model answers the validation pairs through llama.cpp without and with the adapter
       (`lora_path`), and the result is recorded as a promotion of kind `lora`, status `proposed`.

Nothing serves until a person accepts it (`engine promotions accept ID`); from then on the step's
local-tier calls load the model with the adapter (see `engine.promotion.server`), and everything
else (validation, re-asks, escalation, the quality monitor, spot checks) works as before.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, EngineError
from engine.export import Example, llm_spec, split, training_examples
from engine.hashing import canonical_json, sha256
from engine.promotion import records
from engine.promotion.artifacts import promotions_dir, read_manifest
from engine.promotion.mining import step_hashes
from engine.promotion.records import Promotion
from engine.spec.models import ModelEntry, Workflow

from engine.distill.lora import LoraSettings

__all__ = ["LoraSettings", "distill_step", "local_entry"]


def local_entry(wf: Workflow, tier: str = "local") -> ModelEntry:
    config = wf.config
    if config is None:
        raise ConfigError("the workflow was loaded without a config")
    entries = [e for e in config.chain(tier) if e.provider == "llamacpp"]
    if not entries:
        raise ConfigError(f"tier '{tier}' has no llamacpp: model to adapt (engine distill trains the local GGUF model)")
    return entries[0]


def agreement(entry: ModelEntry, examples: list[Example], spec: Any, lora_path: Path | None) -> dict[str, Any]:
    """How many validation answers the local model (with or without the adapter) gets right."""
    from engine.providers.base import CompletionRequest
    from engine.providers.registry import get_provider
    from engine.steps.llm import parse_and_validate

    provider = get_provider("llamacpp")
    options = {**entry.options, **({"lora_path": str(lora_path)} if lora_path else {})}
    right = valid = 0
    started = time.perf_counter()
    for ex in examples:
        schema = ex.schema
        try:
            reply = provider.complete(CompletionRequest(model=entry.model_name, messages=ex.messages,
                                                        max_tokens=spec.max_tokens, schema=schema, temperature=0.0,
                                                        options=options))
            output = parse_and_validate(reply.text, spec, schema)
        except (ValueError, EngineError):
            continue
        valid += 1
        right += canonical_json(output) == canonical_json(ex.output)
    n = len(examples)
    return {"pairs": n, "valid": valid, "agree": right, "agreement": right / n if n else 0.0,
            "seconds": round(time.perf_counter() - started, 1)}


def _next_version(store: Any, directory: Path, workflow: str, step_id: str) -> int:
    entries = read_manifest(directory)["steps"].get(step_id) or []
    done = [int(e["version"]) for e in entries if e["kind"] == "lora"]
    taken = [int(p.payload.get("version", 0)) for p in records.find(store, workflow=workflow, step_id=step_id,
                                                                      kind="lora")]
    return max([0, *done, *taken]) + 1


def distill_step(wf: Workflow, store: Any, step_id: str, *, settings: LoraSettings | None = None, val: float = 0.1,
                 eval_n: int = 50, tier: str = "local", progress: bool = True) -> Promotion:
    """Train, convert, evaluate and record a `lora` proposal (see the module docstring)."""
    from engine.distill.gguf_adapter import gguf_tensors, write_adapter
    from engine.distill.lora import load_base, train_lora
    from engine.providers.llamacpp import resolve_model_path

    if wf.path is None:
        raise ConfigError("engine distill needs a workflow loaded from a file (the adapter is written beside it)")
    settings = settings or LoraSettings()
    spec = llm_spec(wf, step_id)
    entry = local_entry(wf, tier)
    gguf_path = resolve_model_path(entry.model_name)
    examples, _, trust = training_examples(wf, store, step_id)
    train, valid = split(examples, val, settings.seed)
    held = valid[:eval_n]
    started = time.perf_counter()
    model, tokenizer = load_base(gguf_path)
    load_s = time.perf_counter() - started
    adapter = train_lora(model, tokenizer, [(ex.messages, ex.completion) for ex in train], settings, progress)
    directory = promotions_dir(wf.path, wf.name)
    version = _next_version(store, directory, wf.name, step_id)
    path = write_adapter(directory / f"{step_id}.lora.v{version}.gguf",
                         gguf_tensors(adapter.state, adapter.n_head, adapter.n_head_kv), alpha=settings.alpha,
                         name=f"{wf.name}/{step_id} v{version}")
    before = agreement(entry, held, spec, None)
    after = agreement(entry, held, spec, path)
    hashes = step_hashes(spec)
    verification = {"tier": tier, "base": entry.model, "gguf": str(gguf_path), "train_pairs": len(train),
                    "val_pairs": len(valid), "evaluated": len(held), "before": before, "after": after,
                    "passed": after["agreement"] >= before["agreement"], "evidence": "trusted", "trust": trust,
                    "losses": [round(x, 4) for x in adapter.losses], "load_s": round(load_s, 1),
                    "train_s": round(adapter.train_s, 1), "skipped_long": adapter.skipped_long}
    fingerprint = sha256(canonical_json([wf.name, step_id, "lora", *hashes, version]))
    return records.insert(store, Promotion(
        id="lo-" + uuid.uuid4().hex[:8], workflow=wf.name, workflow_path=str(wf.path), step_id=step_id, kind="lora",
        status="proposed", prompt_hash=hashes[0], schema_hash=hashes[1], fingerprint=fingerprint,
        payload={"file": path.name, "version": version, "tier": tier, "base": entry.model,
                 "settings": asdict(settings), "bytes": path.stat().st_size},
        verification=verification,
        reason=None if verification["passed"] else "the adapter agrees less with trusted answers than the base model"))
