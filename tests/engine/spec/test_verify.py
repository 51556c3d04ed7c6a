"""Verification: greedy keeps exactly the model's argmax tokens; sampling keeps
the model's distribution (the speculative-sampling rule)."""

import torch

from engine.request import Request, SamplingParams
from engine.spec.verify import verify


def _rows(argmaxes: list[int], vocab: int = 8) -> torch.Tensor:
    rows = torch.zeros(len(argmaxes), vocab)
    for i, t in enumerate(argmaxes):
        rows[i, t] = 5.0
    return rows


def _req(**params) -> Request:
    return Request(rid="r", prompt_ids=[1], params=SamplingParams(**params))


def test_greedy_accepts_the_agreeing_prefix_and_adds_the_models_token():
    req = _req(temperature=0.0)
    assert verify(_rows([3, 4, 5, 6]), [3, 4, 7], req) == ([3, 4, 5], 2)
    assert verify(_rows([3, 4, 5, 6]), [3, 4, 5], req) == ([3, 4, 5, 6], 3)
    assert verify(_rows([1, 4]), [3], req) == ([1], 0)


def test_sampling_keeps_the_target_distribution():
    # target p over 4 tokens; the draft always proposes token 0
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = p.log()
    rows = torch.stack([logits, logits])
    req = _req(temperature=1.0)
    req.generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    n = 20_000
    for _ in range(n):
        tokens, _ = verify(rows, [0], req)
        counts[tokens[0]] += 1
    assert torch.allclose(counts / n, p, atol=0.015), counts / n
