#!/usr/bin/env python
"""Would a draft model pay off for speculative decoding here? The only model on
this machine is SmolLM2-135M itself, so the candidate drafts are its own first
N layers + the final norm and LM head (self-speculation, as LayerSkip and
Draft&Verify do). A draft pays off only if its greedy tokens agree with the
full model's often enough to cover its own cost; this measures that agreement
per depth on free-form and copy-heavy text the full model generated, and the
draft's cost as a share of a full step (layers + LM head, by parameter count).

Writes the "## Draft-model speculation" section of BENCHMARKS.md.

  .venv/bin/python scripts/bench_draft.py [--new-tokens 96]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.benchlib import update_benchmarks_md  # noqa: E402

DEPTHS = (4, 8, 12, 16, 20, 24)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    import torch
    import torch.nn.functional as F

    from engine.config import EngineConfig
    from engine.model.llama import apply_rope, rms_norm
    from engine.model.prepare import prepare_default_model
    from engine.runtime.engine import Engine
    from tests.support import generate, greedy

    eng = Engine(EngineConfig(model_path=str(prepare_default_model()), dtype="float32", threads=2,
                              matmul_backend="torch", kv_pool_tokens=4096, l3="none")).start()
    m, cfg = eng.model, eng.model.cfg

    @torch.inference_mode()
    def exit_tokens(ids: list[int]) -> dict[int, torch.Tensor]:
        """Greedy next token at every position, exiting after each depth (one causal pass, no KV pool)."""
        T = len(ids)
        x = F.embedding(torch.tensor(ids), m.w.embed)
        cos, sin = m.cos[:T].unsqueeze(1), m.sin[:T].unsqueeze(1)
        out = {}
        for depth, (w, lin) in enumerate(zip(m.w.layers, m.layers), 1):
            h = rms_norm(x, w.input_norm, cfg.rms_norm_eps)
            q, k, v = lin.qkv(h, "torch").split([m.q_size, m.kv_size, m.kv_size], -1)
            q = apply_rope(q.view(T, cfg.num_heads, cfg.head_dim), cos, sin).transpose(0, 1)
            k = apply_rope(k.view(T, cfg.num_kv_heads, cfg.head_dim), cos, sin).transpose(0, 1)
            v = v.view(T, cfg.num_kv_heads, cfg.head_dim).transpose(0, 1)
            o = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, enable_gqa=True)
            x = x + lin.o(o[0].transpose(0, 1).reshape(T, m.q_size), "torch")
            gate, up = lin.gate_up(rms_norm(x, w.post_norm, cfg.rms_norm_eps), "torch").chunk(2, -1)
            x = x + lin.down(F.silu(gate) * up, "torch")
            if depth in DEPTHS or depth == cfg.num_layers:
                out[depth] = m.lm_head(rms_norm(x, m.w.norm, cfg.rms_norm_eps), "torch").argmax(-1)
        return out

    src = (ROOT / "engine/kvcache/events.py").read_text()[:900]
    prompts = {
        "free-form chat": "<|im_start|>user\nWrite a short story about a dragon who learns to paint.<|im_end|>\n"
                          "<|im_start|>assistant\n",
        "quote-back": f"<|im_start|>user\nThe tool returned:\n{src}\nQuote it back verbatim.<|im_end|>\n"
                      "<|im_start|>assistant\n",
    }
    agree: dict[str, dict[int, float]] = {}
    for name, text in prompts.items():
        ids = eng.tokenizer.encode(text)
        out = generate(eng, [ids], greedy(args.new_tokens))[0].output_ids
        exits = exit_tokens(ids + out)
        n = len(ids)
        ref = exits[cfg.num_layers][n - 1:-1]
        agree[name] = {d: float((exits[d][n - 1:-1] == ref).float().mean()) for d in DEPTHS}
    eng.stop()
    attn = cfg.hidden_size * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim  # qkv + o
    per_layer = attn + 3 * cfg.hidden_size * cfg.intermediate_size  # + gate, up, down
    head = cfg.vocab_size * cfg.hidden_size
    cost = {d: (d * per_layer + head) / (cfg.num_layers * per_layer + head) for d in DEPTHS}
    lines = ["## Draft-model speculation", "",
             f"`scripts/bench_draft.py --new-tokens {args.new_tokens}`: how often the model's own first N layers "
             "(+ final norm + LM head) pick the full model's greedy token, on text the full model generated. "
             "Cost = the draft's share of a full step's weights.", "",
             "| draft depth | cost per draft token | " + " | ".join(f"agreement, {k}" for k in agree) + " |",
             "|---|---|" + "---|" * len(agree)]
    for d in DEPTHS:
        lines.append(f"| {d} of {cfg.num_layers} layers | {cost[d]:.0%} | "
                     + " | ".join(f"{agree[k][d]:.0%}" for k in agree) + " |")
    lines += ["", "A draft of cost c per token with acceptance a gains only when a is far above c (verifying k "
              "drafts also costs extra rows); at these agreement rates every depth loses to plain decoding, and "
              "no smaller Llama-family model ships with the package, so the engine offers n-gram speculation "
              "only. A trained draft (EAGLE) is the GPU path, through SGLang.", ""]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        update_benchmarks_md("## Draft-model speculation", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
