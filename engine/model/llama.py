"""Llama-family forward pass over the block KV pool (nano-vllm style).

RMSNorm → fused QKV → RoPE (rotate-half) → K/V written to pool slots →
attention reading the pool (decode batched, prefill per segment) → O →
RMSNorm → fused gate/up → SwiGLU → down; tied embeddings for the head.
Logits are computed only for the rows that need a next token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.kvcache.pool import KVPool
from engine.model.batch import ForwardBatch
from engine.model.linear import Linear, MatmulPlan
from engine.model.weights import ModelWeights


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x [T, H]. fp32: torch's fused kernel (bit-identical to HF's formula, one op
    # instead of six); other dtypes keep HF's fp32 statistics.
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope_tables(cfg: ModelConfig, dtype: torch.dtype, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))  # [d/2]
    t = torch.arange(cfg.max_position, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # [max_pos, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [max_pos, d]
    return emb.cos().to(dtype=dtype, device=device), emb.sin().to(dtype=dtype, device=device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [T, heads, d]; cos/sin [T, 1, d]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_from: int, hide: torch.Tensor,
                    shared: list[tuple[int, int, torch.Tensor, torch.Tensor]] = ()) -> torch.Tensor:
    """A few query rows per sequence against its gathered context, as batched matmuls.

    q [B, n, Hq, d]; k, v [Hkv, B, L, d] (contiguous, as the head-major pool gathers them);
    every query sees columns [0, mask_from), hide [B, n, L - mask_from] (True = may not) rules
    the rest → [B, n, Hq, d]. Query heads are grouped by their KV head (head i reads KV head
    i // group, as enable_gqa does), so K/V are never repeated and each (KV head, sequence) pair
    is one [group·n, d] × [d, L] product. `shared`: (start, end, ks, vs [Hkv, Ls, d]) per prefix
    that sequences [start, end) share ahead of their own k, v: it is read once for all m of them
    (one [m·group·n, d] × [d, Ls] product), their scores over it and over their own columns go
    through one softmax, and the two products add. The scores stay in q's dtype (the matmul
    rounds to it anyway) and torch's softmax computes in fp32 inside and rounds once, so the
    elementwise passes read half the bytes an fp32 copy would; the mask touches only the
    columns it can hide.
    Why not SDPA: torch's CPU kernel for a few query rows costs several times this in bf16
    (BENCHMARKS.md "Design measurements").
    """
    B, n, Hq, d = q.shape
    Hkv = k.shape[0]
    group = Hq // Hkv
    qg = (q * d ** -0.5).view(B, n, Hkv, group, d).permute(2, 0, 3, 1, 4).reshape(Hkv, B, group * n, d)
    scores = torch.matmul(qg, k.transpose(-1, -2))  # [Hkv, B, group·n, L]
    scores.view(Hkv, B, group, n, -1)[..., mask_from:].masked_fill_(hide[None, :, None], float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [Hkv, B, group·n, d]; sharers' redone below
    rows = group * n
    for a, b, ks, vs in shared:
        m, Ls = b - a, ks.shape[1]
        over_shared = torch.matmul(qg[:, a:b].reshape(Hkv, m * rows, d), ks.transpose(-1, -2))
        probs = torch.softmax(torch.cat([over_shared.view(Hkv, m, rows, Ls), scores[:, a:b]], dim=-1), dim=-1)
        o = torch.matmul(probs[..., :Ls].reshape(Hkv, m * rows, Ls), vs).view(Hkv, m, rows, d)
        out[:, a:b] = o.add_(torch.matmul(probs[..., Ls:], v[:, a:b]))
    return out.view(Hkv, B, group, n, d).permute(1, 3, 0, 2, 4).reshape(B, n, Hq, d)


class LlamaModel:
    def __init__(self, cfg: ModelConfig, weights: ModelWeights, pool: KVPool, dtype: torch.dtype,
                 plan: MatmulPlan | None = None):
        self.cfg = cfg
        self.w = weights
        self.pool = pool
        self.dtype = dtype
        self.plan = plan or MatmulPlan()
        self.cos, self.sin = rope_tables(cfg, dtype, weights.embed.device)
        # Projections in the layout their backend runs fastest (linear.py); the
        # raw [out, in] matrices are dropped once converted, except the embedding.
        self.layers = [_LayerLinears(w) for w in weights.layers]
        for w in weights.layers:
            w.qkv = w.o = w.gate_up = w.down = None
        self.lm_head = Linear(weights.lm_head)
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim

    @torch.inference_mode()
    def forward(self, b: ForwardBatch) -> torch.Tensor:
        """One step over a packed batch; returns fp32 logits [R, vocab] for b.logit_rows."""
        cfg = self.cfg
        T = b.num_tokens
        mode = self.plan.enter(T)  # numpy projections + 1 torch thread, or torch everywhere
        x = F.embedding(b.input_ids, self.w.embed)  # [T, H]
        cos = self.cos[b.positions].unsqueeze(1)  # [T, 1, d]
        sin = self.sin[b.positions].unsqueeze(1)
        for layer_idx, (w, lin) in enumerate(zip(self.w.layers, self.layers)):
            h = rms_norm(x, w.input_norm, cfg.rms_norm_eps)
            qkv = lin.qkv(h, mode)  # [T, q + 2·kv]
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = apply_rope(q.view(T, cfg.num_heads, cfg.head_dim), cos, sin)  # [T, Hq, d]
            k = apply_rope(k.view(T, cfg.num_kv_heads, cfg.head_dim), cos, sin)  # [T, Hkv, d]
            v = v.view(T, cfg.num_kv_heads, cfg.head_dim)  # [T, Hkv, d]
            k_flat, v_flat = self.pool.flat(layer_idx)  # [Hkv, blocks·bs, d]
            k_flat.index_copy_(1, b.write_slots, k.transpose(0, 1))
            v_flat.index_copy_(1, b.write_slots, v.transpose(0, 1))
            attn = self._attention(q, k, v, layer_idx, b)  # [T, Hq·d]
            x = x + lin.o(attn, mode)
            h = rms_norm(x, w.post_norm, cfg.rms_norm_eps)
            gate, up = lin.gate_up(h, mode).chunk(2, dim=-1)  # [T, inter] each
            x = x + lin.down(F.silu(gate) * up, mode)
        h = rms_norm(x[b.logit_rows], self.w.norm, cfg.rms_norm_eps)  # [R, H]
        return self.lm_head(h, mode).float()  # [R, vocab]

    def _attention(self, q, k, v, layer: int, b: ForwardBatch) -> torch.Tensor:
        # q [T, Hq, d]; k, v [T, Hkv, d] (this step's tokens, already in the pool too)
        T = q.shape[0]
        out = torch.empty(T, self.q_size, dtype=q.dtype, device=q.device)
        g = b.short
        if g is not None:
            B, n = g.rows.shape
            kd, vd = self.pool.gather(layer, g.tables.view(-1))  # [Hkv, B·nb_max·bs, d]
            kd, vd = kd.view(kd.shape[0], B, -1, kd.shape[-1]), vd.view(vd.shape[0], B, -1, vd.shape[-1])
            shared = [(p.start, p.end, *self.pool.gather(layer, p.blocks)) for p in g.shared]
            qs = q.index_select(0, g.rows.view(-1)).view(B, n, *q.shape[1:])
            o = short_attention(qs, kd, vd, g.mask_from, g.hide, shared)  # [B, n, Hq, d]
            out.index_copy_(0, g.dst, o.reshape(B * n, self.q_size).index_select(0, g.src))
        for seg in b.prefills:
            n = seg.end - seg.start
            qs = q[seg.start:seg.end].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, d]
            if seg.prefix_len == 0:
                ks = k[seg.start:seg.end].transpose(0, 1).unsqueeze(0)  # [1, Hkv, n, d]
                vs = v[seg.start:seg.end].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            else:
                ks, vs = self.pool.gather(layer, seg.ctx_blocks)  # [Hkv, nb·bs, d]
                # the mask hides slots past the context
                o = F.scaled_dot_product_attention(qs, ks.unsqueeze(0), vs.unsqueeze(0), attn_mask=seg.mask,
                                                   enable_gqa=True)
            out[seg.start:seg.end] = o[0].transpose(0, 1).reshape(n, self.q_size)  # [n, Hq·d]
        return out


class _LayerLinears:
    def __init__(self, w):
        self.qkv = Linear(w.qkv)  # [T, H] -> [T, q + 2·kv]
        self.o = Linear(w.o)  # [T, q] -> [T, H]
        self.gate_up = Linear(w.gate_up)  # [T, H] -> [T, 2·inter]
        self.down = Linear(w.down)  # [T, inter] -> [T, H]
