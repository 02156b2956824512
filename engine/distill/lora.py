"""Train a LoRA adapter on CPU for a GGUF model: transformers reads the GGUF (dequantised to
float32, via the `gguf` package), peft adds low-rank adapters, a plain AdamW loop trains them on the
exported conversations with the loss on the answer tokens only."""

from __future__ import annotations

import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from engine.errors import ConfigError


@dataclass
class LoraSettings:
    steps: int = 30
    rank: int = 8
    alpha: float = 16.0
    lr: float = 2e-4
    batch: int = 8
    max_len: int = 1024
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0


@dataclass
class TrainedAdapter:
    state: dict[str, Any]
    """peft's adapter tensors."""
    n_head: int
    n_head_kv: int
    losses: list[float] = field(default_factory=list)
    load_s: float = 0.0
    train_s: float = 0.0
    examples: int = 0
    skipped_long: int = 0


def _imports() -> tuple[Any, Any, Any, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
        import gguf  # noqa: F401 - transformers reads GGUF through it
    except ImportError as e:
        raise ConfigError(f"engine distill needs the optional extra: pip install 'engine[distill]' ({e})") from None
    return torch, (LoraConfig, get_peft_model), AutoModelForCausalLM, AutoTokenizer


def load_base(gguf_path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a GGUF file, float32 on CPU."""
    torch, _, auto_model, auto_tokenizer = _imports()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        with warnings.catch_warnings():  # GGUF loading warns about tokenizer/config conversions
            warnings.simplefilter("ignore")
            tokenizer = auto_tokenizer.from_pretrained(folder, gguf_file=name)
            model = auto_model.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"transformers cannot load {gguf_path} as a model: {e}") from None
    if getattr(model.config, "model_type", "") != "llama":
        raise ConfigError(f"{gguf_path}: LoRA export to llama.cpp supports Llama-architecture models; this is "
                          f"'{model.config.model_type}'")
    return model, tokenizer


def encode(tokenizer: Any, messages: list[dict[str, str]], completion: str, max_len: int) -> tuple[list[int], list[int]] | None:
    """(input ids, labels) with the prompt masked (-100); None when longer than max_len."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": completion}], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full.rstrip("\n"), add_special_tokens=False)["input_ids"]
    if len(full_ids) > max_len or full_ids[:len(prompt_ids)] != prompt_ids:
        return None
    return full_ids, [-100] * len(prompt_ids) + full_ids[len(prompt_ids):]


def train_lora(model: Any, tokenizer: Any, examples: Sequence[tuple[list[dict[str, str]], str]],
               settings: LoraSettings, progress: bool = True) -> TrainedAdapter:
    torch, (lora_config, get_peft_model), _, _ = _imports()
    torch.manual_seed(settings.seed)
    encoded = [e for e in (encode(tokenizer, m, c, settings.max_len) for m, c in examples) if e is not None]
    if not encoded:
        raise ConfigError(f"no example fits max_len {settings.max_len} tokens")
    with warnings.catch_warnings():  # peft calls transformers APIs it deprecates (FutureWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        peft_model = get_peft_model(model, lora_config(r=settings.rank, lora_alpha=settings.alpha,
                                                       target_modules=list(settings.targets), lora_dropout=0.0,
                                                       bias="none", task_type="CAUSAL_LM"))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = list(range(len(encoded)))
    rng = random.Random(settings.seed)
    rng.shuffle(order)
    losses: list[float] = []
    started = time.perf_counter()
    peft_model.train()
    bar = _bar(settings.steps) if progress else None
    for step in range(settings.steps):
        batch = [encoded[order[(step * settings.batch + i) % len(order)]] for i in range(settings.batch)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar[0].update(bar[1], advance=1, description=f"LoRA training (loss {losses[-1]:.3f})")
    if bar is not None:
        bar[0].stop()
    from peft import get_peft_model_state_dict

    state = dict(get_peft_model_state_dict(peft_model))
    return TrainedAdapter(state=state, n_head=int(model.config.num_attention_heads),
                          n_head_kv=int(getattr(model.config, "num_key_value_heads", None)
                                        or model.config.num_attention_heads),
                          losses=losses, train_s=time.perf_counter() - started, examples=len(encoded),
                          skipped_long=len(examples) - len(encoded))


def _bar(total: int) -> tuple[Any, Any]:
    from rich.console import Console
    from rich.progress import Progress

    progress = Progress(console=Console(file=sys.stderr), transient=True)
    progress.start()
    return progress, progress.add_task("LoRA training", total=total)
