"""Write a peft LoRA adapter of a Llama-architecture model as a llama.cpp GGUF adapter.

What llama.cpp's `convert_lora_to_gguf.py` writes for a Llama model, done directly with the `gguf`
package (the PyPI `gguf` lacks the `LazyChunkedTensor` the script needs from llama.cpp's own
`gguf-py`, and the script wants the base model as a Hugging Face folder):

    general.architecture = llama, general.type = adapter, adapter.type = lora,
    adapter.lora.alpha = alpha
    blk.<i>.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>.weight.lora_a   (rank, in)
    blk.<i>.<...>.weight.lora_b                                                          (out, rank)

llama.cpp stores q/k projection rows permuted for its RoPE layout (`LlamaModel.permute` in
`convert_hf_to_gguf.py`); transformers un-permutes them when it loads a GGUF, so a LoRA trained on
that model has its `lora_b` rows for q and k permuted back here, exactly as the script does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from engine.errors import ConfigError

MODULES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}
_NAME = re.compile(r"layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.lora_([AB])")


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row permutation of a q/k projection (`LlamaModel.permute`), on the output rows."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2)
            .reshape(weights.shape))


def gguf_tensors(state: Mapping[str, Any], n_head: int, n_head_kv: int) -> dict[str, np.ndarray]:
    """peft state-dict tensors -> GGUF adapter tensors (float32)."""
    out: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        match = _NAME.search(name)
        if match is None:
            raise ConfigError(f"cannot map LoRA tensor '{name}' to llama.cpp (Llama q/k/v/o and MLP projections only)")
        layer, module, part = match.groups()
        array = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        if part == "B" and module == "self_attn.q_proj":
            array = permute(array, n_head)
        elif part == "B" and module == "self_attn.k_proj":
            array = permute(array, n_head_kv)
        out[f"blk.{layer}.{MODULES[module]}.weight.lora_{part.lower()}"] = np.ascontiguousarray(array, dtype=np.float32)
    return out


def write_adapter(path: Path, tensors: Mapping[str, np.ndarray], *, alpha: float, name: str = "") -> Path:
    try:
        import gguf
    except ImportError:
        raise ConfigError("writing a GGUF adapter needs the `gguf` package: pip install 'engine[distill]'") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    if name:
        writer.add_string("general.name", name)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for tensor_name in sorted(tensors):
        writer.add_tensor(tensor_name, tensors[tensor_name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
