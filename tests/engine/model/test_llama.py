"""Our Llama forward against HF transformers on the same fp32 weights: prompt
logits, a prefill split into cached prefix + tail, and greedy generation."""

from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.kvcache.pool import KVPool
from engine.model.batch import ForwardBatch, build_prefill_segment, build_short_group
from engine.model.linear import MatmulPlan
from engine.model.llama import LlamaModel
from engine.model.weights import load_weights
from tests.support import generate, greedy

pytestmark = pytest.mark.slow

BS = 16
PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
          "combined movable metal type, oil-based ink and a wooden press. Within decades, printers across "
          "Europe were producing books faster than scribes ever could, and")
LOGIT_TOL = 1e-3


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM  # the `convert` extra; prepare_default_model needs it too

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[int]:
    ids = tokenizer.encode(PROMPT)
    assert len(ids) > 2 * BS + 5  # long enough to span a few blocks and a partial one
    return ids


@pytest.fixture(scope="module")
def hf_logits(hf_model, prompt_ids) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([prompt_ids])).logits[0].float()  # [T, vocab]


class Model:
    """Our LlamaModel over its own small pool, driven one ForwardBatch at a time."""

    def __init__(self, model_dir, backend: str):
        cfg = ModelConfig.from_dir(model_dir)
        weights = load_weights(str(model_dir), cfg, torch.float32)
        self.pool = KVPool(16, BS, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, torch.float32)
        plan = MatmulPlan.probe(torch.float32, "cpu", threads=2, forced=backend)
        self.model = LlamaModel(cfg, weights, self.pool, torch.float32, plan)
        self.blocks = list(range(self.pool.num_blocks))

    def prefill(self, ids: list[int], start: int = 0, all_logits: bool = False) -> torch.Tensor:
        """Run tokens ids[start:] of a sequence whose first `start` tokens are in the pool."""
        n = len(ids) - start
        batch = ForwardBatch(
            input_ids=torch.tensor(ids[start:]),
            positions=torch.arange(start, len(ids)),
            write_slots=self.pool.slots(self.blocks, len(ids), start),
            short=None,
            prefills=[build_prefill_segment(0, n, start, self.blocks, BS)],
            logit_rows=torch.arange(n) if all_logits else torch.tensor([n - 1]),
        )
        return self.model.forward(batch)

    def decode(self, ids: list[int]) -> torch.Tensor:
        """Run the last token of ids as a one-sequence decode step."""
        pos = len(ids) - 1
        batch = ForwardBatch(
            input_ids=torch.tensor([ids[-1]]), positions=torch.tensor([pos]),
            write_slots=self.pool.slots(self.blocks, pos + 1, pos),
            short=build_short_group([(0, 1, len(ids), self.blocks)], BS), prefills=[], logit_rows=torch.tensor([0]))
        return self.model.forward(batch)


@pytest.fixture(scope="module", params=["numpy", "torch"])
def ours(request, model_dir) -> Model:
    return Model(model_dir, request.param)


def test_prompt_logits_match_hf(ours, prompt_ids, hf_logits):
    logits = ours.prefill(prompt_ids, all_logits=True)  # [T, vocab]
    assert logits.shape == hf_logits.shape
    assert (logits - hf_logits).abs().max().item() < LOGIT_TOL
    assert torch.equal(logits.argmax(-1), hf_logits.argmax(-1))


@pytest.mark.parametrize("split", [BS * 2, 21])
def test_prefix_plus_tail_prefill_equals_one_full_prefill(ours, prompt_ids, hf_logits, split):
    full = ours.prefill(prompt_ids)[0]
    ours.prefill(prompt_ids[:split])  # the "cached" prefix
    tail = ours.prefill(prompt_ids, start=split)[0]
    assert (tail - full).abs().max().item() < LOGIT_TOL
    assert (tail - hf_logits[-1]).abs().max().item() < LOGIT_TOL


def test_decode_steps_match_hf_logits(ours, hf_model, prompt_ids):
    # Prefill all but the last 3 tokens, then feed those one decode step at a time.
    ours.prefill(prompt_ids[:-3])
    with torch.no_grad():
        ref = hf_model(torch.tensor([prompt_ids])).logits[0, -3:].float()
    for i, k in enumerate(range(len(prompt_ids) - 3, len(prompt_ids))):
        step = ours.decode(prompt_ids[:k + 1])[0]
        assert (step - ref[i]).abs().max().item() < LOGIT_TOL


def test_engine_greedy_generation_equals_hf_generate(engine_fp32, hf_model, prompt_ids):
    n = 16
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    expected = out[0, len(prompt_ids):].tolist()
    (got,) = generate(engine_fp32, [prompt_ids], greedy(n))
    assert len(expected) == n  # the prompt does not end at EOS, so all 16 tokens are compared
    assert got.output_ids == expected
