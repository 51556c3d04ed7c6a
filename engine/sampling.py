"""Sampling: greedy, temperature, top-k, top-p, min-p; seeded per request.

Greedy rows take the argmax of the raw logits (exactly what a plain run takes,
which the exactness tests rely on). Sampled rows draw from the request's own
torch.Generator, so a request with a seed gives the same tokens every time,
whatever else shares its batch.
"""

from __future__ import annotations

import torch

from engine.scheduler.request import Request


def sample(logits: torch.Tensor, reqs: list[Request]) -> list[int]:
    """logits [R, vocab] fp32, one row per request → one token id per request."""
    tokens = logits.argmax(dim=-1).tolist()  # [R]
    for i, req in enumerate(reqs):
        if not req.params.greedy:
            tokens[i] = _sample_row(logits[i], req)
    return tokens


def _sample_row(row: torch.Tensor, req: Request) -> int:
    p = req.params
    scaled = row / p.temperature  # [vocab]
    if 0 < p.top_k < scaled.shape[0]:
        kth = torch.topk(scaled, p.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest set whose mass reaches top_p (the top token always stays)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    if p.min_p > 0.0:
        probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
    return int(torch.multinomial(probs, 1, generator=req.generator))


def token_logprobs(logits: torch.Tensor, tokens: list[int], top_n: list[int]) -> list[tuple[float, list]]:
    """(logprob of the chosen token, top-n [(logprob, id)]) per row of logits [R, vocab]."""
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for i, tok in enumerate(tokens):
        top = []
        if top_n[i] > 0:
            vals, ids = logp[i].topk(top_n[i])
            top = list(zip(vals.tolist(), ids.tolist()))
        out.append((float(logp[i, tok]), top))
    return out
