"""The embedded engine on a GPU (skipped where torch sees no CUDA device): the
same greedy tokens as the CPU in fp32, prefix reuse exact on the device, and
the tiers moving blocks between GPU L1, pinned-host L2 and L3."""

from __future__ import annotations

import pytest
import torch

from tests.support import generate, greedy, submit, wait_idle

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

PROMPT = "<|im_start|>user\nExplain what a KV cache is, in three sentences.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def cuda_engine(make_engine, tmp_path_factory):
    return make_engine(device="cuda", dtype="float32", kv_pool_tokens=4096, l2_blocks=512,
                       l3=f"dir:{tmp_path_factory.mktemp('l3-cuda')}")


def test_greedy_fp32_tokens_match_the_cpu(cuda_engine, engine_fp32, tokenizer):
    ids = tokenizer.encode(PROMPT)
    on_gpu = generate(cuda_engine, [ids], greedy(24))[0].output_ids
    on_cpu = generate(engine_fp32, [ids], greedy(24))[0].output_ids
    assert on_gpu == on_cpu


def test_prefix_reuse_and_tiers_are_exact_on_the_gpu(cuda_engine, tokenizer):
    ids = tokenizer.encode("Background for a long agent conversation. " * 40 + PROMPT)
    cold = generate(cuda_engine, [ids], greedy(16))[0]
    warm = generate(cuda_engine, [ids], greedy(16))[0]
    assert warm.cached_tokens > 0 and warm.output_ids == cold.output_ids
    cuda_engine.call(lambda: cuda_engine.cache.evict(cuda_engine.pool.num_blocks)).result(60)  # L1 → L2
    w = submit(cuda_engine, ids, greedy(16))
    from_l2 = w.wait()
    assert w.steps[-1].tier_tokens["l2"] > 0 and from_l2.output_ids == cold.output_ids
    cuda_engine.tiers.flush_writes()
    assert cuda_engine.call(cuda_engine.kv.flush).result(60)  # L1 and L2 empty: L3 serves it
    w = submit(cuda_engine, ids, greedy(16))
    from_l3 = w.wait()
    assert w.steps[-1].tier_tokens["l3"] > 0 and from_l3.output_ids == cold.output_ids
    assert wait_idle(cuda_engine)["used_blocks"] == 0
