"""The in-process Engine end to end (fp32, greedy): the prefix cache, chunked
prefill and pool pressure never change a token; cached_tokens is reported;
aborts and finished requests give every block back."""

from __future__ import annotations

import time

import pytest

from common.errors import BadRequestError, ContextLengthError
from common.hashing import block_hashes
from engine.request import SamplingParams
from engine.runtime.engine import Engine
from tests.support import (
    engine_state,
    generate,
    greedy,
    record_shared_prefix_reads,
    submit,
    wait_idle,
)

pytestmark = pytest.mark.slow

BS = 16
PREFIX = (
    "You are a careful assistant for a small bakery. The bakery opens at seven in the morning and closes at six "
    "in the evening, every day except Monday. It sells sourdough bread, rye bread, croissants, cinnamon rolls, "
    "apple pie and lemon tart. Sourdough costs five dollars, rye four, croissants two each, cinnamon rolls three, "
    "a whole apple pie eighteen and a lemon tart four. Orders for more than ten items must be placed a day ahead. "
    "The owner, Maria, bakes everything herself with flour from a mill in the next valley. Answer briefly.\n"
)
QUESTIONS = [
    "Question: When does the bakery open?\nAnswer:",
    "Question: How much is a croissant?\nAnswer:",
    "Question: Who bakes the bread?\nAnswer:",
    "Question: Is the bakery open on Monday?\nAnswer:",
    "Question: What does a whole apple pie cost?\nAnswer:",
    "Question: Where does the flour come from?\nAnswer:",
]
SHORT_PROMPTS = [
    "The three primary colors are",
    "Once upon a time, in a quiet village by the sea,",
    "def fibonacci(n):\n    ",
    "The Eiffel Tower is located in",
]
# Distinct prompts of 35-45 tokens: four of them plus 24 new tokens each need 16 blocks.
MEDIUM_PROMPTS = [
    "The ocean covers most of the surface of our planet. Its deepest point, the Challenger Deep, lies in the "
    "western Pacific. Scientists who study the ocean floor say that",
    "A good cup of tea starts with fresh water, brought to the right temperature for the leaf. Green tea wants "
    "cooler water than black tea, and steeping time matters too, because",
    "In 1969 two astronauts walked on the Moon while a third orbited above them. They collected rocks, planted "
    "a flag and left a plaque that reads: here men from",
    "Bicycles are among the most efficient machines ever built. A rider on a flat road uses less energy per "
    "kilometre than a walker, mostly because the wheels",
]


@pytest.fixture(scope="module")
def prefix_ids(tokenizer) -> list[int]:
    ids = tokenizer.encode(PREFIX)
    assert len(ids) > 100
    return ids


@pytest.fixture(scope="module")
def prompts(tokenizer, prefix_ids) -> list[list[int]]:
    """Prompts sharing the long prefix, built from token ids so the shared part is exact."""
    return [prefix_ids + tokenizer.encode(q) for q in QUESTIONS]


@pytest.fixture(scope="module")
def short_prompts(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(p) for p in SHORT_PROMPTS]


@pytest.fixture(scope="module")
def medium_prompts(tokenizer) -> list[list[int]]:
    out = [tokenizer.encode(p) for p in MEDIUM_PROMPTS]
    assert all(33 <= len(p) <= 48 for p in out), [len(p) for p in out]
    return out


@pytest.fixture(scope="module")
def engine_no_cache(make_engine):
    engine = make_engine(enable_prefix_cache=False)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def engine_chunked(make_engine):
    engine = make_engine(max_batch_tokens=32, prefetch_chunk_tokens=32)  # busy steps carry prefetch chunks too
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def engine_tiny(make_engine):
    engine = make_engine(kv_pool_tokens=200)
    assert engine.pool.num_blocks == 13
    yield engine
    engine.stop()


@pytest.fixture(autouse=True)
def pools_return_to_baseline(request):
    """After every test, each engine it used is idle with no block held by a request."""
    yield
    for engine in [v for v in request.node.funcargs.values() if isinstance(v, Engine)]:
        usage = wait_idle(engine)
        assert usage["used_blocks"] == 0, usage
        assert usage["free_blocks"] + usage["evictable_blocks"] == usage["total_blocks"], usage
        assert engine.num_active() == 0


def flush(engine: Engine) -> None:
    wait_idle(engine)
    assert engine.call(engine.kv.flush).result(timeout=60) is True


def ids_of(outcomes) -> list[list[int]]:
    return [o.output_ids for o in outcomes]


@pytest.fixture(scope="module")
def reference(engine_no_cache, prompts, short_prompts):
    """Greedy outputs with no cache, each prompt alone: what every other configuration must reproduce."""
    out = {}
    for p in prompts + short_prompts:
        (o,) = generate(engine_no_cache, [p], greedy(16))
        out[tuple(p)] = o.output_ids
    return out


def expected(reference, prompts) -> list[list[int]]:
    return [reference[tuple(p)] for p in prompts]


# -- the prefix cache ---------------------------------------------------------------------------------
def test_prefix_cache_on_and_off_give_identical_greedy_outputs(engine_fp32, engine_no_cache, prompts, reference):
    flush(engine_fp32)
    sequential = [generate(engine_fp32, [p], greedy(16))[0] for p in prompts[:3]]
    assert ids_of(sequential) == expected(reference, prompts[:3])
    assert sequential[0].cached_tokens == 0
    assert all(o.cached_tokens > 0 for o in sequential[1:])  # the cache really served the prefix
    # The same prompts again, all at once, and a batch of new ones sharing the cached prefix.
    again = generate(engine_fp32, prompts, greedy(16))
    assert ids_of(again) == expected(reference, prompts)
    off = generate(engine_no_cache, prompts, greedy(16))
    assert ids_of(off) == expected(reference, prompts)
    assert all(o.cached_tokens == 0 for o in off)


def computed_tokens(engine: Engine) -> int:
    with engine.stats.lock:
        return engine.stats.prefill_computed + engine.stats.prefetch_computed


def test_a_concurrent_batch_sharing_an_uncached_prefix_matches_the_reference(engine_fp32, prompts, reference,
                                                                             prefix_ids):
    flush(engine_fp32)
    before = computed_tokens(engine_fp32)
    together = generate(engine_fp32, prompts, greedy(16))
    assert ids_of(together) == expected(reference, prompts)
    # In-batch sharing: the shared prefix was computed once; every other request found it cached.
    shared = len(prefix_ids) // BS * BS
    assert sorted(o.cached_tokens >= shared for o in together) == [False] + [True] * (len(prompts) - 1)
    assert computed_tokens(engine_fp32) - before == sum(len(p) - o.cached_tokens for p, o in zip(prompts, together))
    # And once more, now that the prefix is cached by the batch above.
    assert ids_of(generate(engine_fp32, prompts[::-1], greedy(16))) == expected(reference, prompts[::-1])


def test_decodes_reading_a_shared_prefix_once_give_the_reference_tokens(engine_fp32, prompts, reference,
                                                                         monkeypatch):
    shared_steps = record_shared_prefix_reads(monkeypatch, 2)  # the test prefix is a few blocks
    flush(engine_fp32)
    generate(engine_fp32, prompts[:1], greedy(1))  # cache the prefix: the batch below shares its blocks
    together = generate(engine_fp32, prompts, greedy(16))
    assert ids_of(together) == expected(reference, prompts)
    assert max(shared_steps) >= 3  # steps where several sequences read the prefix through the shared path


def test_cached_tokens_counts_the_reused_block_aligned_prefix(engine_fp32, prompts, prefix_ids):
    flush(engine_fp32)
    (first,) = generate(engine_fp32, [prompts[0]], greedy(8))
    (second,) = generate(engine_fp32, [prompts[1]], greedy(8))
    assert first.cached_tokens == 0
    assert second.cached_tokens == len(prefix_ids) // BS * BS
    assert second.cached_tokens > 0 and second.cached_tokens % BS == 0
    assert (first.prompt_tokens, second.prompt_tokens) == (len(prompts[0]), len(prompts[1]))


def test_the_same_prompt_twice_reuses_all_but_its_last_token(engine_fp32, prompts):
    flush(engine_fp32)
    prompt = prompts[2]
    generate(engine_fp32, [prompt], greedy(8))
    (again,) = generate(engine_fp32, [prompt], greedy(8))
    # At most len - 1 tokens are matched (the last one must run to give logits), in whole blocks.
    assert again.cached_tokens == (len(prompt) - 1) // BS * BS


def test_stored_events_use_the_shared_block_hashes(engine_fp32, prompts):
    flush(engine_fp32)
    engine_fp32.events.take_events()
    prompt = prompts[3]
    (out,) = generate(engine_fp32, [prompt], greedy(8, ignore_eos=True))
    stored = [h for e in engine_fp32.events.take_events() if e.op == "stored" for h in e.block_hashes]
    # Everything computed (prompt + all but the last output token) is announced, in chain order.
    computed = prompt + out.output_ids[:-1]
    assert stored == block_hashes(computed, BS)


def test_a_call_takes_over_a_running_prefetch_of_its_prefix_and_nothing_is_computed_twice(
        engine_chunked, prompts, short_prompts, reference, prefix_ids):
    """engine_chunked steps 32 tokens at a time, and a busy step gives a prefetch one such chunk:
    the prefetch of the prefix is still running when the call that starts with it arrives."""
    flush(engine_chunked)
    before = computed_tokens(engine_chunked)
    prefetched_before = engine_chunked.stats.prefetch_computed
    busy = submit(engine_chunked, short_prompts[1], greedy(40, ignore_eos=True))  # keeps every step busy
    fetched = engine_chunked.kv.prefetch(prefix_ids)
    deadline = time.monotonic() + 60
    while engine_chunked.stats.prefetch_computed == prefetched_before and not fetched.done():
        assert time.monotonic() < deadline
        time.sleep(0.005)  # the prefetch has computed its first chunk (or is done already)
    (call,) = generate(engine_chunked, [prompts[4]], greedy(16))
    result = fetched.result(120)
    busy.wait()
    assert call.output_ids == reference[tuple(prompts[4])]
    assert result["resident_tokens"] == len(prefix_ids) // BS * BS
    # The prefetch reports what it computed itself; the blocks the call computed meanwhile count as found in L1.
    assert result["from"]["computed"] == engine_chunked.stats.prefetch_computed - prefetched_before
    assert sum(result["from"].values()) == result["resident_tokens"]
    # Every token of the call's prompt and of the busy request's prompt was computed exactly once.
    assert computed_tokens(engine_chunked) - before == len(prompts[4]) + len(short_prompts[1])


# -- chunked prefill -------------------------------------------------------------------------------------
def test_chunked_prefill_gives_the_same_greedy_output(engine_chunked, prompts, short_prompts, reference):
    alone = [generate(engine_chunked, [p], greedy(16))[0] for p in prompts[:2]]
    assert ids_of(alone) == expected(reference, prompts[:2])
    # Concurrent: later prompts are prefilled in chunks alongside earlier ones' decodes.
    mixed = [prompts[2], short_prompts[0], prompts[3], short_prompts[1]]
    assert ids_of(generate(engine_chunked, mixed, greedy(16))) == expected(reference, mixed)


# -- pool pressure -------------------------------------------------------------------------------------------
def test_a_tiny_pool_queues_and_preempts_yet_every_request_completes_identically(
        engine_tiny, engine_fp32, medium_prompts):
    params = greedy(24, ignore_eos=True)
    want = ids_of(generate(engine_fp32, medium_prompts, params))
    blocks_needed = sum(-(-(len(p) + 24) // BS) for p in medium_prompts)
    assert blocks_needed > engine_tiny.pool.num_blocks  # they cannot all be resident at once
    got = generate(engine_tiny, medium_prompts, params)
    assert ids_of(got) == want
    assert all(o.finish_reason == {"type": "length", "length": 24} for o in got)


def test_a_tiny_pool_with_a_shared_prefix_completes_identically(engine_tiny, engine_fp32, prefix_ids,
                                                               medium_prompts):
    # Four requests sharing a 2-block prefix, each with its own full tail block,
    # admitted together, so each computes the prefix into its own blocks.
    prompts = [prefix_ids[:2 * BS] + p[:18] for p in medium_prompts]
    params = greedy(24, ignore_eos=True)
    want = ids_of(generate(engine_fp32, prompts, params))
    flush(engine_tiny)
    got = generate(engine_tiny, prompts, params)
    assert ids_of(got) == want


def test_mixed_priorities_give_every_request_the_tokens_it_gets_alone(engine_tiny, engine_chunked, engine_fp32,
                                                                     medium_prompts, prompts, short_prompts,
                                                                     reference):
    # Tiny pool: higher-priority calls preempt lower ones for memory; the preempted resume by prefix match.
    params = greedy(24, ignore_eos=True)
    want = ids_of(generate(engine_fp32, medium_prompts, params))
    flush(engine_tiny)
    watchers = [submit(engine_tiny, p, params, priority=i % 2 * 3) for i, p in enumerate(medium_prompts)]
    assert ids_of(w.wait() for w in watchers) == want
    # Lower priorities prefill 8 tokens a step beside the higher ones: chunks that end mid-block.
    scheduler = engine_chunked.batcher
    chunk = scheduler.low_priority_chunk
    engine_chunked.call(lambda: setattr(scheduler, "low_priority_chunk", 8)).result(timeout=60)
    try:
        mixed = [prompts[2], short_prompts[0], prompts[3], short_prompts[1]]
        watchers = [submit(engine_chunked, p, greedy(16), priority=-i) for i, p in enumerate(mixed)]
        assert ids_of(w.wait() for w in watchers) == expected(reference, mixed)
    finally:
        engine_chunked.call(lambda: setattr(scheduler, "low_priority_chunk", chunk)).result(timeout=60)


def test_a_request_that_can_never_fit_is_a_400(engine_tiny, engine_fp32):
    before = engine_tiny.num_active()
    with pytest.raises(BadRequestError) as info:
        submit(engine_tiny, list(range(100, 200)), greedy(200))  # 19 blocks, the pool has 13
    assert info.value.status == 400
    assert "can never fit" in info.value.message
    assert engine_tiny.num_active() == before
    with pytest.raises(ContextLengthError) as info:
        submit(engine_fp32, [1] * 9000, greedy(8))
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"
    with pytest.raises(ContextLengthError):
        submit(engine_fp32, [1] * 100, greedy(10**9))
    with pytest.raises(BadRequestError, match="outside the vocabulary"):
        submit(engine_fp32, [1, engine_fp32.model_config.vocab_size], greedy(8))
    with pytest.raises(BadRequestError, match="empty"):
        submit(engine_fp32, [], greedy(8))


# -- lifecycle ---------------------------------------------------------------------------------------------
def test_abort_of_a_running_request_frees_its_blocks(engine_fp32, short_prompts):
    watcher = submit(engine_fp32, short_prompts[0], greedy(400, ignore_eos=True))
    assert watcher.started.wait(60)
    busy, usage = engine_state(engine_fp32)
    assert busy and usage["used_blocks"] > 0
    engine_fp32.abort(watcher.rid)
    out = watcher.wait(60)
    assert out.finish_reason["type"] == "abort"
    assert 0 < out.completion_tokens < 400
    assert wait_idle(engine_fp32)["used_blocks"] == 0


def test_abort_of_a_waiting_request_finishes_it_without_output(engine_tiny):
    big = list(range(1000, 1000 + 150))  # 10 blocks of 13
    running = submit(engine_tiny, big, greedy(40, ignore_eos=True))
    assert running.started.wait(60)
    queued = submit(engine_tiny, list(range(2000, 2100)), greedy(8))  # 7 blocks: must wait
    busy, _ = engine_state(engine_tiny)
    assert busy
    engine_tiny.abort(queued.rid)
    out = queued.wait(60)
    assert out.finish_reason["type"] == "abort"
    assert out.output_ids == [] and out.completion_tokens == 0
    engine_tiny.abort(running.rid)
    assert running.wait(60).finish_reason["type"] == "abort"


def test_a_duplicate_running_rid_is_refused(engine_fp32, short_prompts):
    watcher = submit(engine_fp32, short_prompts[0], greedy(200, ignore_eos=True), rid="dup-rid")
    try:
        with pytest.raises(BadRequestError, match="already running"):
            submit(engine_fp32, short_prompts[1], greedy(8), rid="dup-rid")
    finally:
        engine_fp32.abort("dup-rid")
        watcher.wait(60)
    # Once finished, the rid can be used again.
    assert submit(engine_fp32, short_prompts[1], greedy(2), rid="dup-rid").wait().completion_tokens == 2


def test_max_new_tokens_zero_prefills_only(engine_fp32, prompts):
    flush(engine_fp32)
    (out,) = generate(engine_fp32, [prompts[4]], greedy(0))
    assert out.output_ids == [] and out.completion_tokens == 0 and out.text == ""
    assert out.finish_reason == {"type": "length", "length": 0}
    # The prompt's KV was computed and cached: a prefetch.
    (after,) = generate(engine_fp32, [prompts[4]], greedy(4))
    assert after.cached_tokens == (len(prompts[4]) - 1) // BS * BS


def test_length_finish_reports_exact_counts(engine_fp32, short_prompts):
    (out,) = generate(engine_fp32, [short_prompts[2]], greedy(9, ignore_eos=True))
    assert out.completion_tokens == len(out.output_ids) == 9
    assert out.finish_reason == {"type": "length", "length": 9}
    assert out.text == engine_fp32.tokenizer.decode(out.output_ids)


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(engine_fp32, short_prompts):
    seeded = SamplingParams(max_new_tokens=12, temperature=1.0, seed=1234, ignore_eos=True)
    (alone,) = generate(engine_fp32, [short_prompts[1]], seeded)
    noisy = SamplingParams(max_new_tokens=12, temperature=1.0, ignore_eos=True)
    batch = [short_prompts[0], short_prompts[1], short_prompts[3]]
    watchers = [submit(engine_fp32, batch[0], noisy), submit(engine_fp32, batch[1], seeded),
                submit(engine_fp32, batch[2], noisy)]
    outs = [w.wait() for w in watchers]
    assert outs[1].output_ids == alone.output_ids
    other_seed = SamplingParams(max_new_tokens=12, temperature=1.0, seed=4321, ignore_eos=True)
    assert generate(engine_fp32, [short_prompts[1]], other_seed)[0].output_ids != alone.output_ids


def test_stop_string_trims_the_text(engine_fp32, short_prompts):
    (free,) = generate(engine_fp32, [short_prompts[1]], greedy(24, ignore_eos=True))
    text = free.text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip()
    (stopped,) = generate(engine_fp32, [short_prompts[1]], greedy(24, ignore_eos=True, stop=(stop,)))
    assert stopped.finish_reason == {"type": "stop", "matched": stop}
    assert stopped.text == text[:text.index(stop)]
    assert stopped.completion_tokens < 24


def test_logprobs_are_returned_for_each_output_token(engine_fp32, short_prompts):
    (out,) = generate(engine_fp32, [short_prompts[0]], greedy(6, ignore_eos=True), return_logprob=True,
                      top_logprobs_num=2)
    assert [tok for _, tok, _ in out.logprobs] == out.output_ids
    for lp, tok, top in out.logprobs:
        assert lp <= 0
        assert len(top) == 2 and top[0][1] == tok  # greedy: the chosen token is the most likely
        assert top[0][0] == pytest.approx(lp)


def test_a_finished_request_sharing_a_prefix_with_a_running_one_does_not_break_admission(
        make_engine, prefix_ids, medium_prompts):
    """Two requests sharing a prefix are admitted in one step; the first
    finishes while the second, whose tail block hangs under the first's prefix
    nodes, keeps running. A third request then needs more blocks than are
    really reclaimable: it must wait (or be served), never crash the engine."""
    engine = make_engine(kv_pool_tokens=13 * BS)
    try:
        short = submit(engine, prefix_ids[:2 * BS] + medium_prompts[0][:18], greedy(2, ignore_eos=True))
        long = submit(engine, prefix_ids[:2 * BS] + medium_prompts[1][:18], greedy(60, ignore_eos=True))
        short.wait(60)
        assert not long.done.is_set()
        big = submit(engine, list(range(3000, 3000 + 8 * BS)), greedy(8, ignore_eos=True))  # 8 blocks
        deadline = time.monotonic() + 120
        while not (long.done.is_set() and big.done.is_set()) and time.monotonic() < deadline:
            assert engine.alive, "the engine thread died"
            time.sleep(0.1)
        assert long.wait().completion_tokens == 60 and big.wait().completion_tokens == 8
    finally:
        engine.stop()


def test_a_call_whose_caller_gave_up_does_not_stop_the_engine(engine_fp32):
    # Hold the engine thread busy so the next call is still queued when it is cancelled,
    # as when an HTTP client hangs up on /get_load mid-step.
    blocker = engine_fp32.call(lambda: time.sleep(0.3))
    abandoned = engine_fp32.call(lambda: "never")
    assert abandoned.cancel()
    blocker.result(timeout=30)
    assert engine_fp32.call(lambda: 42).result(timeout=30) == 42
    assert engine_fp32.alive
