"""Sampling: greedy, temperature, top-k, top-p, min-p; seeded per request.

Greedy rows take the argmax of the raw (or grammar-masked) logits (exactly what a plain run takes,
which the exactness tests rely on). Sampled rows draw from the request's own
torch.Generator, so a request with a seed gives the same tokens every time,
whatever else shares its batch.
"""

from __future__ import annotations

import torch

from engine.request import Request


def sample(logits: torch.Tensor, reqs: list[Request], eos_ids: tuple[int, ...] = ()) -> list[int]:
    """logits [R, vocab] fp32, one row per request → one token id per request.
    Rows of requests with penalties, biases or min_new_tokens are adjusted in place first,
    then rows of requests under a grammar lose every token the grammar forbids."""
    for i, req in enumerate(reqs):
        if req.params.adjusts_logits:
            adjust_logits(logits[i], req, eos_ids)
        if req.grammar is not None:
            req.grammar.mask(logits[i:i + 1])
    tokens = logits.argmax(dim=-1).tolist()  # [R]
    for i, req in enumerate(reqs):
        if not req.params.greedy:
            tokens[i] = _sample_row(logits[i], req)
    return tokens


def adjust_logits(row: torch.Tensor, req: Request, eos_ids: tuple[int, ...]) -> None:
    """Penalties as SGLang/OpenAI define them, logit_bias, and min_new_tokens."""
    p = req.params
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(req.prompt_ids) | set(req.output_ids)), dtype=torch.long)
        vals = row[seen]
        row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.frequency_penalty or p.presence_penalty) and req.output_ids:
        ids, counts = torch.tensor(req.output_ids, dtype=torch.long).unique(return_counts=True)
        row[ids] -= p.frequency_penalty * counts.to(row.dtype) + p.presence_penalty
    for tok, bias in p.logit_bias:
        row[tok] += bias
    if len(req.output_ids) < p.min_new_tokens:
        banned = set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos_ids))
        if banned:
            row[torch.tensor(sorted(banned), dtype=torch.long)] = float("-inf")


def _sample_row(row: torch.Tensor, req: Request) -> int:
    return int(torch.multinomial(probs(row, req), 1, generator=req.generator))


def probs(row: torch.Tensor, req: Request) -> torch.Tensor:
    """The distribution a non-greedy request samples from: temperature, then
    top-k, top-p and min-p filtering. row [vocab] -> probabilities [vocab]."""
    p = req.params
    scaled = row / p.temperature  # [vocab]
    if 0 < p.top_k < scaled.shape[0]:
        kth = torch.topk(scaled, p.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    out = torch.softmax(scaled, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = out.sort(descending=True)
        # keep the smallest set whose mass reaches top_p (the top token always stays)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
        sorted_probs[drop] = 0.0
        out = torch.zeros_like(out).scatter_(0, order, sorted_probs)
    if p.min_p > 0.0:
        out = out.masked_fill(out < p.min_p * out.max(), 0.0)
    return out


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
