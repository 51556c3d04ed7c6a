"""Load a Llama-family safetensors directory into fused, engine-ready tensors.

q/k/v are fused into one [q + 2·kv, hidden] matrix and gate/up into one
[2·inter, hidden] matrix: fewer, larger matmuls run closer to the CPU's peak.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open

from engine.config import ModelConfig


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [(heads + 2·kv_heads)·head_dim, hidden]
    o: torch.Tensor  # [hidden, heads·head_dim]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2·inter, hidden]
    down: torch.Tensor  # [hidden, inter]


@dataclass
class ModelWeights:
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: torch.Tensor  # [hidden]
    lm_head: torch.Tensor  # [vocab, hidden] (the embedding itself when tied)


def _read_tensors(model_dir: str) -> dict[str, torch.Tensor]:
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def load_weights(model_dir: str, cfg: ModelConfig, dtype: torch.dtype, device: str = "cpu") -> ModelWeights:
    t = _read_tensors(model_dir)

    def take(name: str) -> torch.Tensor:
        if name not in t:
            raise KeyError(f"weight {name} missing from {model_dir}")
        return t.pop(name).to(device=device, dtype=dtype).contiguous()

    layers = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        qkv = torch.cat([take(p + "self_attn.q_proj.weight"), take(p + "self_attn.k_proj.weight"),
                         take(p + "self_attn.v_proj.weight")])
        gate_up = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
        layers.append(LayerWeights(
            input_norm=take(p + "input_layernorm.weight"),
            qkv=qkv,
            o=take(p + "self_attn.o_proj.weight"),
            post_norm=take(p + "post_attention_layernorm.weight"),
            gate_up=gate_up,
            down=take(p + "mlp.down_proj.weight"),
        ))
    embed = take("model.embed_tokens.weight")
    if cfg.tie_word_embeddings or "lm_head.weight" not in t:
        lm_head = embed
    else:
        lm_head = take("lm_head.weight")
    assert embed.shape == (cfg.vocab_size, cfg.hidden_size), embed.shape
    return ModelWeights(embed=embed, layers=layers, norm=take("model.norm.weight"), lm_head=lm_head)
