"""The LoRA pieces of `engine distill` that need no model: the GGUF adapter layout llama.cpp loads,
the q/k row permutation, and an accepted adapter reaching the local tier's calls as `lora_path`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import run_workflow
from engine.distill.gguf_adapter import gguf_tensors, permute, write_adapter
from engine.promotion import records, review
from engine.promotion.artifacts import promotions_dir
from engine.promotion.mining import step_hashes
from engine.promotion.records import Promotion
from engine.providers.fake import FakeProvider
from engine.providers.registry import register_provider

gguf = pytest.importorskip("gguf")


def test_permuting_lora_b_rows_permutes_the_whole_delta():
    """llama.cpp permutes q/k weight rows; permuting B's rows gives the same delta W = B @ A."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 12)), rng.normal(size=(24, 4))
    assert np.allclose(permute(b, 3) @ a, permute(b @ a, 3))
    assert not np.allclose(permute(b, 3), b)
    rows = permute(np.arange(8.0).reshape(8, 1), 2).ravel().tolist()
    assert rows == [0, 2, 1, 3, 4, 6, 5, 7]  # per head: the two rotary halves interleaved


def _state(layers=2, hidden=16, kv=8, r=2):
    state = {}
    for i in range(layers):
        for mod, out in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv)):
            pre = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            state[f"{pre}.lora_A.weight"] = torch.randn(r, hidden)
            state[f"{pre}.lora_B.weight"] = torch.randn(out, r)
    return state


def test_adapter_gguf_has_the_layout_llama_cpp_reads(tmp_path):
    state = _state()
    tensors = gguf_tensors(state, n_head=4, n_head_kv=2)
    path = write_adapter(tmp_path / "a.gguf", tensors, alpha=16, name="t")
    reader = gguf.GGUFReader(str(path))
    fields = {k: v for k, v in reader.fields.items()}

    def text(key):
        f = fields[key]
        return bytes(f.parts[f.data[0]]).decode()

    assert text("general.architecture") == "llama" and text("general.type") == "adapter"
    assert text("adapter.type") == "lora"
    assert float(fields["adapter.lora.alpha"].parts[-1][0]) == 16.0
    by_name = {t.name: t for t in reader.tensors}
    assert set(by_name) == {f"blk.{i}.{m}.weight.lora_{p}" for i in range(2) for m in ("attn_q", "attn_k", "attn_v")
                            for p in "ab"}
    # ggml shapes (ne, innermost first): a = [in, rank], b = [rank, out], as llama-adapter.cpp checks
    assert list(by_name["blk.0.attn_q.weight.lora_a"].shape) == [16, 2]
    assert list(by_name["blk.0.attn_k.weight.lora_b"].shape) == [2, 8]
    q_b = state["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"].numpy()
    v_b = state["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].numpy()
    assert np.allclose(by_name["blk.1.attn_q.weight.lora_b"].data, permute(q_b, 4))
    assert np.allclose(by_name["blk.1.attn_v.weight.lora_b"].data, v_b)  # v is not permuted


def test_unknown_lora_tensor_is_a_clear_error():
    with pytest.raises(Exception, match="cannot map LoRA tensor"):
        gguf_tensors({"model.embed_tokens.lora_A.weight": torch.zeros(1, 1)}, 1, 1)


WORKFLOW = """\
name: lora
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      prompt: "Label: {{ text }}"
      schema: {type: object, properties: {label: {enum: [a, b]}}, required: [label]}
      max_tokens: 12
"""
CONFIG = """\
tiers:
  local:
    - model: llamacpp:smollm2
"""


def test_an_accepted_adapter_is_loaded_by_the_local_tier_only_after_review(project, tmp_path):
    from engine import load_workflow

    from engine.providers.registry import get_provider

    previous = get_provider("llamacpp")  # keep the real one (and any model it loaded) for later tests
    local = FakeProvider()  # stands in for llama.cpp: records the options each call asks for
    local.responder = lambda r: {"label": "a"}
    register_provider("llamacpp", local)
    try:
        path = project(WORKFLOW, config=CONFIG)
        wf = load_workflow(path)
        directory = promotions_dir(path, "lora")
        adapter = write_adapter(directory / "classify.lora.v1.gguf", gguf_tensors(_state(), 4, 2), alpha=16)
        from engine.runner import open_store
        from pathlib import Path

        store = open_store(Path(".engine/engine.db"))
        hashes = step_hashes(wf.step("classify").llm)
        p = records.insert(store, Promotion(
            id="lo-test0001", workflow="lora", workflow_path=str(path), step_id="classify", kind="lora",
            status="proposed", prompt_hash=hashes[0], schema_hash=hashes[1], fingerprint="x",
            payload={"file": adapter.name, "version": 1, "tier": "local", "bytes": adapter.stat().st_size},
            verification={"passed": True, "tier": "local", "base": "llamacpp:smollm2", "losses": [2.0, 1.5],
                          "before": {"agree": 1, "pairs": 4}, "after": {"agree": 3, "pairs": 4}}))
        run_workflow(path, {"text": "x"})
        assert "lora_path" not in local.requests[-1].options  # proposed: not served
        from click.testing import CliRunner

        from engine.cli import cli

        shown = CliRunner().invoke(cli, ["promotions", "show", p.id])
        assert shown.exit_code == 0 and "classify.lora.v1.gguf" in shown.output and "kind: lora" in shown.output
        from fastapi.testclient import TestClient

        from engine import Engine
        from engine.http import create_app

        page = TestClient(create_app(Engine(), [path], console_store=store),
                          base_url="http://localhost").get(f"/ui/proposals/{p.id}").text
        assert "validation 1/4 without the adapter, 3/4 with it" in page and 'id="lora"' in page
        assert "2.000 → 1.500 over 2 steps" in page and "<h2>Code</h2>" not in page  # not shown as a script
        detail = review.accept(store, p.id)
        assert detail.promotion.status == "accepted" and detail.promotion.version == 1
        manifest = (directory / "manifest.yaml").read_text()
        assert "kind: lora" in manifest and "tier: local" in manifest and "classify.lora.v1.gguf" in manifest
        out = run_workflow(path, {"text": "y"})
        assert out.step("classify").served_by == "llm"
        assert local.requests[-1].options["lora_path"] == str(adapter)
    finally:
        register_provider("llamacpp", previous)


class CharTokenizer:
    """A chat tokenizer over characters, enough for `train_lora` (the real one comes from the GGUF)."""

    pad_token_id = 0

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + ord(c) % 95 for c in text]}


def test_train_lora_on_a_tiny_llama_and_map_every_tensor():
    """peft on a tiny random Llama (a few steps): the loss on the answer tokens falls, and every adapter tensor
    peft produces maps to a llama.cpp name (q and v projections by default)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.distill.lora import LoraSettings, encode, train_lora

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config)
    tok = CharTokenizer()
    examples = [([{"role": "system", "content": "label"}, {"role": "user", "content": f"item {i}"}],
                 '{"label": "a"}' if i % 2 else '{"label": "b"}') for i in range(8)]
    ids, labels = encode(tok, *examples[0], max_len=256)
    answer = labels[labels.index(next(x for x in labels if x != -100)):]
    assert answer == tok('{"label": "b"}')["input_ids"] and labels[0] == -100  # the prompt is masked
    assert encode(tok, *examples[0], max_len=5) is None
    trained = train_lora(model, tok, examples, LoraSettings(steps=6, rank=4, alpha=8, lr=5e-2, batch=4),
                         progress=False)
    assert len(trained.losses) == 6 and trained.losses[-1] < trained.losses[0] - 0.1
    tensors = gguf_tensors(trained.state, trained.n_head, trained.n_head_kv)
    assert set(tensors) == {f"blk.{i}.{m}.weight.lora_{p}" for i in range(2) for m in ("attn_q", "attn_v")
                            for p in "ab"}
    assert tensors["blk.0.attn_v.weight.lora_b"].shape == (16, 4)  # (out = kv heads x head dim, rank)
