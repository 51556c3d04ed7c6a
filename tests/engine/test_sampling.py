"""Sampling on synthetic logits: greedy, seeded draws, top-k/top-p/min-p,
and the logit adjustments (penalties, logit_bias, min_new_tokens)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.sampling import adjust_logits, sample, token_logprobs
from engine.request import Request, SamplingParams

VOCAB = 50
EOS = 7


def make_req(seed: int | None = None, prompt=(1, 2, 3), output=(), **params) -> Request:
    req = Request(rid="r", prompt_ids=list(prompt), params=SamplingParams(**params))
    req.output_ids = list(output)
    if seed is not None:
        req.generator = torch.Generator().manual_seed(seed)
    return req


def random_logits(rows: int = 1, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * scale


def draws(req: Request, logits_row: torch.Tensor, n: int) -> list[int]:
    return [sample(logits_row[None].clone(), [req])[0] for _ in range(n)]


def test_greedy_is_argmax_per_row():
    logits = random_logits(rows=8)
    reqs = [make_req(temperature=0.0) for _ in range(8)]
    assert sample(logits.clone(), reqs) == logits.argmax(-1).tolist()


def test_seeded_sampling_is_reproducible_and_differs_across_seeds():
    row = torch.zeros(VOCAB)  # uniform: every draw is the generator's doing
    a = draws(make_req(seed=1234, temperature=1.0), row, 30)
    b = draws(make_req(seed=1234, temperature=1.0), row, 30)
    c = draws(make_req(seed=4321, temperature=1.0), row, 30)
    assert a == b
    assert a != c
    assert len(set(a)) > 5  # really sampled, not a constant


def test_a_seeded_row_is_independent_of_its_batch_neighbours():
    row = random_logits(seed=3, scale=0.5)[0]
    alone = draws(make_req(seed=9, temperature=1.0), row, 20)
    batch = torch.stack([random_logits(seed=4)[0], row])
    req, neighbour = make_req(seed=9, temperature=1.0), make_req(seed=77, temperature=1.0)
    together = [sample(batch.clone(), [neighbour, req])[1] for _ in range(20)]
    assert together == alone


def test_top_k_one_equals_greedy():
    logits = random_logits(rows=6, seed=5, scale=0.3)  # flat enough that sampling would wander
    reqs = [make_req(seed=i, temperature=1.0, top_k=1) for i in range(6)]
    assert sample(logits.clone(), reqs) == logits.argmax(-1).tolist()


def test_top_k_draws_only_from_the_k_best():
    row = random_logits(seed=6, scale=0.2)[0]
    best3 = set(row.topk(3).indices.tolist())
    got = draws(make_req(seed=0, temperature=1.0, top_k=3), row, 60)
    assert set(got) <= best3
    assert len(set(got)) > 1


def test_tiny_top_p_equals_greedy():
    logits = random_logits(rows=6, seed=8, scale=0.3)
    reqs = [make_req(seed=i, temperature=1.0, top_p=1e-6) for i in range(6)]
    assert sample(logits.clone(), reqs) == logits.argmax(-1).tolist()


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * (VOCAB - 4))
    row = torch.log(probs.clamp_min(1e-30))
    got = draws(make_req(seed=1, temperature=1.0, top_p=0.7), row, 80)
    assert set(got) == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3


def test_min_p_drops_tokens_below_the_fraction_of_the_best():
    probs = torch.tensor([0.4, 0.35, 0.2, 0.05] + [0.0] * (VOCAB - 4))
    row = torch.log(probs.clamp_min(1e-30))
    got = draws(make_req(seed=2, temperature=1.0, min_p=0.3), row, 80)
    assert set(got) == {0, 1, 2}  # 0.05 < 0.3 × 0.4


def test_min_new_tokens_bans_eos_until_reached():
    row = torch.zeros(VOCAB)
    row[EOS] = 10.0
    row[11] = 5.0
    early = make_req(temperature=0.0, min_new_tokens=3, output=[4, 5])
    assert sample(row[None].clone(), [early], eos_ids=(EOS,)) == [11]
    reached = make_req(temperature=0.0, min_new_tokens=3, output=[4, 5, 6])
    assert sample(row[None].clone(), [reached], eos_ids=(EOS,)) == [EOS]


def test_min_new_tokens_also_bans_stop_token_ids_and_respects_ignore_eos():
    row = torch.zeros(VOCAB)
    row[EOS], row[20], row[11] = 10.0, 9.0, 5.0
    req = make_req(temperature=0.0, min_new_tokens=2, stop_token_ids=(20,))
    assert sample(row[None].clone(), [req], eos_ids=(EOS,)) == [11]
    # ignore_eos: EOS is an ordinary token, so it is not banned either.
    req = make_req(temperature=0.0, min_new_tokens=2, ignore_eos=True)
    assert sample(row[None].clone(), [req], eos_ids=(EOS,)) == [EOS]


def test_logit_bias_forces_a_token():
    logits = random_logits(rows=1, seed=9)
    target = int(logits[0].argmin())
    req = make_req(temperature=0.0, logit_bias=((target, 100.0),))
    assert sample(logits.clone(), [req]) == [target]
    sampled = make_req(seed=0, temperature=1.0, logit_bias=((target, 100.0),))
    assert draws(sampled, logits[0], 10) == [target] * 10


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    row = torch.tensor([2.0, -2.0, 3.0, -1.0, 4.0] + [1.0] * (VOCAB - 5))
    original = row.clone()
    req = make_req(prompt=[0, 1], output=[2, 3], repetition_penalty=2.0)
    adjust_logits(row, req, eos_ids=())
    assert row[:5].tolist() == [1.0, -4.0, 1.5, -2.0, 4.0]
    assert torch.equal(row[4:], original[4:])  # unseen tokens untouched


def test_frequency_and_presence_penalties_count_output_tokens_only():
    row = torch.zeros(VOCAB)
    req = make_req(prompt=[9, 9, 9], output=[3, 3, 5], frequency_penalty=0.5, presence_penalty=0.25)
    adjust_logits(row, req, eos_ids=())
    assert row[3].item() == pytest.approx(-(0.5 * 2 + 0.25))
    assert row[5].item() == pytest.approx(-(0.5 * 1 + 0.25))
    assert row[9].item() == 0.0


def test_temperature_sharpens_the_distribution():
    row = torch.tensor([2.0, 1.0] + [-30.0] * (VOCAB - 2))
    hot = draws(make_req(seed=3, temperature=5.0), row, 200)
    cold = draws(make_req(seed=3, temperature=0.1), row, 200)
    assert cold.count(0) > hot.count(0)
    assert cold.count(0) == 200  # exp(-10): token 1 essentially never at T=0.1


def test_token_logprobs_match_log_softmax_and_rank_the_top():
    logits = random_logits(rows=2, seed=10)
    tokens = [3, 4]
    out = token_logprobs(logits, tokens, top_n=[3, 0])
    logp = torch.log_softmax(logits, -1)
    assert out[0][0] == pytest.approx(float(logp[0, 3]), abs=1e-6)
    assert out[1][0] == pytest.approx(float(logp[1, 4]), abs=1e-6)
    top = out[0][1]
    assert [i for _, i in top] == logp[0].topk(3).indices.tolist()
    assert all(a >= b for (a, _), (b, _) in zip(top, top[1:]))
    assert out[1][1] == []
    assert all(v <= 0 and math.isfinite(v) for v, _ in top)
