"""Speculative decoding inside the running engine (fp32, greedy): the same tokens
as a plain run, the same KV pool and radix tree afterwards, SGLang's spec_*
fields reported, and requests that cannot speculate still served."""

from __future__ import annotations

import json

import pytest

from engine.request import SamplingParams
from tests.support import generate, greedy, record_shared_prefix_reads, wait_idle

pytestmark = pytest.mark.slow

CODE = '''def merge_sorted(a, b):
    """Merge two sorted lists into one sorted list."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    out.extend(a[i:])
    out.extend(b[j:])
    return out
'''
RECORD = json.dumps({"users": [{"id": i, "name": f"user{i}", "active": i % 2 == 0} for i in range(5)]}, indent=1)


def chat(user: str, assistant_start: str = "") -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant_start}"


PROMPTS = [
    chat(f"Add type hints to this function and output all of it:\n```python\n{CODE}```", "```python\n" + CODE[:40]),
    chat(f"The tool returned:\n{RECORD}\nRepeat the JSON exactly.", RECORD[:30]),
    chat("Write a short story about a dragon who learns to paint."),
    chat("What are three good habits for a healthy life?"),
]


@pytest.fixture(scope="module")
def engines(make_engine):
    plain = make_engine(matmul_backend="numpy")
    spec = make_engine(matmul_backend="numpy", speculative_algorithm="ngram", speculative_num_draft_tokens=8)
    return plain, spec


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    return [tokenizer.encode(p) for p in PROMPTS]


def _tree(engine) -> tuple[dict, list]:
    def read():
        usage = engine.kv.usage()
        return {k: usage[k] for k in ("free_blocks", "cached_blocks", "used_blocks")}, sorted(engine.cache.snapshot())
    return engine.call(read).result(timeout=60)


def test_speculation_gives_the_plain_greedy_tokens_one_at_a_time_and_batched(engines, prompt_ids):
    plain, spec = engines
    for batch in ([p] for p in prompt_ids):  # batch 1
        assert [o.output_ids for o in generate(spec, batch, greedy(64, ignore_eos=True))] == \
            [o.output_ids for o in generate(plain, batch, greedy(64, ignore_eos=True))]
    together_spec = generate(spec, prompt_ids, greedy(64, ignore_eos=True))  # one batch, mixed k per sequence
    together_plain = generate(plain, prompt_ids, greedy(64, ignore_eos=True))
    assert [o.output_ids for o in together_spec] == [o.output_ids for o in together_plain]
    final = together_spec[0].steps[-1].spec
    assert final["spec_verify_ct"] > 0 and final["spec_accept_token_num"] > 0, final
    assert 0.0 < final["spec_accept_rate"] <= 1.0 and final["spec_accept_length"] > 1.0


def test_pool_and_radix_tree_end_identical_after_spec_and_plain_runs(make_engine, prompt_ids):
    states = []
    for algo in ("none", "ngram"):
        engine = make_engine(matmul_backend="numpy", speculative_algorithm=algo, kv_pool_tokens=4096)
        generate(engine, prompt_ids, greedy(48, ignore_eos=True))
        wait_idle(engine)
        states.append(_tree(engine))
        engine.stop()
    (usage_plain, tree_plain), (usage_spec, tree_spec) = states
    assert usage_plain == usage_spec
    assert tree_plain == tree_spec
    assert usage_spec["used_blocks"] == 0 and usage_spec["cached_blocks"] > 0


def test_stop_tokens_inside_accepted_drafts_end_the_request_there(engines, prompt_ids):
    plain, spec = engines
    # a stop token id the copy-heavy output reaches: the 20th token of the plain run
    reference = generate(plain, [prompt_ids[1]], greedy(40, ignore_eos=True))[0].output_ids
    stop = reference[19]
    params = greedy(40, ignore_eos=True, stop_token_ids=(stop,))
    got = generate(spec, [prompt_ids[1]], params)[0]
    want = generate(plain, [prompt_ids[1]], params)[0]
    assert got.output_ids == want.output_ids and got.output_ids[-1] == stop
    assert got.finish_reason == {"type": "stop", "matched": stop}
    assert wait_idle(spec)["used_blocks"] == 0


def test_sampled_and_penalized_requests_complete_under_speculation(engines, prompt_ids):
    _, spec = engines
    sampled = SamplingParams(max_new_tokens=32, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)
    a = generate(spec, [prompt_ids[1]], sampled)[0]
    b = generate(spec, [prompt_ids[1]], sampled)[0]
    assert len(a.output_ids) == 32 and a.output_ids == b.output_ids  # seeded: reproducible with speculation too
    penalized = SamplingParams(max_new_tokens=16, temperature=0.0, frequency_penalty=0.5, ignore_eos=True)
    out = generate(spec, [prompt_ids[1]], penalized)[0]
    assert len(out.output_ids) == 16 and out.steps[-1].spec["spec_verify_ct"] == 0  # decoded one at a time
    assert wait_idle(spec)["used_blocks"] == 0


def test_a_tiny_pool_preempts_speculating_requests_without_changing_a_token(make_engine, engines, prompt_ids):
    plain, _ = engines
    tiny = make_engine(matmul_backend="numpy", speculative_algorithm="ngram", kv_pool_tokens=320)
    prompts = [p[:120] for p in prompt_ids]  # with 40 new tokens each they need more than the 20 blocks
    params = greedy(40, ignore_eos=True)
    assert sum(-(-(len(p) + 40) // 16) for p in prompts) > tiny.pool.num_blocks
    want = [o.output_ids for o in generate(plain, prompts, params)]
    got = generate(tiny, prompts, params)
    assert [o.output_ids for o in got] == want
    assert tiny.batcher.num_preemptions > 0  # decode growth, drafts included, ran the pool dry
    assert wait_idle(tiny)["used_blocks"] == 0
    tiny.stop()


def test_verifies_reading_a_shared_prefix_once_give_the_plain_tokens(engines, tokenizer, monkeypatch):
    plain, spec = engines
    system = tokenizer.encode("You are a precise assistant. When asked to repeat or rewrite something, you copy it "
                              "exactly, character for character, and add nothing before or after it.\n")
    prompts = [system + p for p in prompt_ids_of(tokenizer)]
    shared_steps = record_shared_prefix_reads(monkeypatch, 1)  # the system prompt above is only a few blocks
    alone = [generate(plain, [p], greedy(48, ignore_eos=True))[0].output_ids for p in prompts]
    generate(spec, prompts[:1], greedy(1))  # the system prompt is cached: the batch below shares its blocks
    together = generate(spec, prompts, greedy(48, ignore_eos=True))
    assert [o.output_ids for o in together] == alone
    assert max(shared_steps) == len(prompts)  # every sequence read the prefix through the shared path


def prompt_ids_of(tokenizer):
    return [tokenizer.encode(p) for p in PROMPTS]
