"""A sim engine's own contract: its steps follow the timing table it is given (read through the
clock's lag, never a wall-clock threshold), tier copies cost their bytes' transfer time, tokens are
deterministic per prompt and seed, speculation's acceptance comes from the real n-gram matcher, and
its capacity is the GPU's memory less the weights at the model's KV bytes per token."""

from __future__ import annotations

import pytest

from engine.sim.clock import SimClock
from engine.sim.hardware import GIB, kv_capacity_tokens, lookup
from engine.sim.steptime import StepWork, TableStepModel
from tests.sim.support import KNOWN_TABLE, decode_s, make_sim_engine, prefill_s, sim_spec
from tests.support import generate, greedy, submit, wait_idle

pytestmark = pytest.mark.slow


@pytest.fixture
def engines():
    started = []
    yield started
    for engine in started:
        engine.stop()


def test_the_table_model_interpolates_and_charges_a_mixed_step_its_shared_part_once():
    m = TableStepModel(KNOWN_TABLE)
    assert m.seconds(StepWork(prefill_tokens=512, prefill_context=512)) == pytest.approx(prefill_s(512))
    assert m.seconds(StepWork(decode_rows=32, decode_context=900)) == pytest.approx(decode_s(32))
    mixed = StepWork(prefill_tokens=2048, prefill_context=4096, prefill_prefix=2048, decode_rows=96, decode_context=10)
    assert m.seconds(mixed) == pytest.approx(prefill_s(2048) + decode_s(96) - 0.004)  # linear beyond the grid
    assert m.seconds(StepWork()) == 0.0
    with pytest.raises(ValueError, match="format"):
        TableStepModel({"prefill": {}})


@pytest.mark.parametrize("speedup", [1.0, 4.0])
def test_steps_take_the_tables_time_divided_by_the_speedup(model_dir, tokenizer, engines, speedup):
    engines.append(make_sim_engine(model_dir, sim_spec(speedup=speedup), kv_pool_tokens=4096, l3="none"))
    engine = engines[-1]
    ids = tokenizer.encode("A prompt whose steps are timed by a known table. " * 10)
    out = generate(engine, [ids], greedy(4))[0]
    assert out.completion_tokens == 4
    wait_idle(engine)
    c = engine.clock.snapshot()
    # one step prefills the whole prompt (its last row samples the first token), three decode one row each
    assert c["steps"] == 4
    assert c["predicted_seconds"] == pytest.approx(prefill_s(len(ids)) + 3 * decode_s(1), abs=1e-12)
    # every step ran exactly its scheduled time plus its lag: the clock slept the table's time, never less
    assert c["wall_seconds"] - c["lag_seconds"] == pytest.approx(c["predicted_seconds"] / speedup, abs=1e-6)
    assert c["wall_seconds"] >= c["predicted_seconds"] / speedup
    assert c["median_step_seconds"] == pytest.approx(decode_s(1) / speedup)


def test_the_clock_sleeps_the_scheduled_time_and_records_how_late_each_step_ended():
    t = [100.0]
    naps = []

    def oversleep(s: float) -> None:  # a host too busy to wake on time: 0.1 s late every step
        naps.append(s)
        t[0] += s + 0.1

    clock = SimClock(speedup=2.0, sleep=oversleep, now=lambda: t[0])
    assert clock.run_step(0.5, idle_end=100.0) == pytest.approx(0.1)
    assert naps == [pytest.approx(0.25)]  # predicted / speedup, from when the step could start
    # back to back: the next step starts where the last one ended (late), not where it was due
    assert clock.run_step(0.2, idle_end=0.0) == pytest.approx(0.1)
    assert naps[1] == pytest.approx(0.1)
    c = clock.snapshot()
    assert c["steps"] == 2 and c["lag_seconds"] == pytest.approx(0.2) and c["median_lag_seconds"] == pytest.approx(0.1)
    assert c["predicted_seconds"] == pytest.approx(0.7) and c["wall_seconds"] == pytest.approx(0.35 + 0.2)


def test_an_l2_promotion_costs_its_bytes_over_pcie(model_dir, tokenizer, engines):
    engines.append(make_sim_engine(model_dir, kv_pool_tokens=1024, l2_blocks=256, l3="none"))
    engine = engines[-1]
    ids = tokenizer.encode("The promoted prompt. " + "Some background on L2 promotions follows. " * 40)
    generate(engine, [ids], greedy(1))
    for i in range(3):  # push it out of L1
        generate(engine, [tokenizer.encode(f"Flood prompt {i}. " + f"Filler words number {i}. " * 60)], greedy(1))
    wait_idle(engine)
    before = engine.clock.snapshot()["predicted_seconds"]
    w = generate(engine, [ids], greedy(1))[0]
    wait_idle(engine)
    promoted = engine.tiers.stats.promoted["l2"] * 16
    assert promoted > 0 and w.cached_tokens >= promoted
    spec = engine.sim
    copy = promoted * spec.model.kv_bytes_per_token / spec.pcie_bytes_per_s
    rest = len(ids) - w.cached_tokens
    expected = (prefill_s(rest) if rest else 0.0) + copy
    assert engine.clock.snapshot()["predicted_seconds"] - before == pytest.approx(expected, abs=1e-9)


def test_tokens_depend_only_on_the_prompt_and_seed(model_dir, tokenizer, engines):
    a = make_sim_engine(model_dir, kv_pool_tokens=4096, l3="none")
    b = make_sim_engine(model_dir, kv_pool_tokens=4096, l3="none", enable_prefix_cache=False)
    engines += [a, b]
    ids = tokenizer.encode("Deterministic replay of a simulated call. " * 6)
    sampled = greedy(40)
    one = generate(a, [ids], sampled)[0].output_ids
    assert len(one) == 40 and generate(b, [ids], sampled)[0].output_ids == one
    assert generate(a, [ids], greedy(40, seed=7))[0].output_ids != one
    assert generate(a, [ids + [ids[-1]]], sampled)[0].output_ids != one
    assert not set(one) & set(a.model_config.eos_token_ids)  # lengths come from max_tokens, never an EOS


def test_speculation_accepts_what_the_ngram_matcher_finds_in_the_stream(model_dir, tokenizer, engines):
    spec_engine = make_sim_engine(model_dir, kv_pool_tokens=8192, l3="none", speculative_algorithm="ngram")
    plain_engine = make_sim_engine(model_dir, kv_pool_tokens=8192, l3="none")
    engines += [spec_engine, plain_engine]
    ids = tokenizer.encode("def area(r):\n    return 3.14159 * r * r\n" * 30)
    fast = generate(spec_engine, [ids], greedy(200))[0]
    plain = generate(plain_engine, [ids], greedy(200))[0]
    assert fast.output_ids == plain.output_ids  # speculation never changes the tokens
    s = spec_engine.stats
    assert s.spec_verifies > 0 and 0 < s.spec_accepted <= s.spec_proposed
    assert spec_engine.clock.snapshot()["steps"] < plain_engine.clock.snapshot()["steps"]


def test_capacity_is_the_gpus_memory_less_the_weights_at_the_models_kv_bytes():
    gpu, qwen = lookup("h100_sxm", "Qwen/Qwen3-8B")
    assert qwen.kv_bytes_per_token == 144 * 1024
    assert kv_capacity_tokens(gpu, qwen, 1) == int((80 * GIB * 0.88 - 8.19e9 * 2) // (144 * 1024))
    h200, _ = lookup("h200_sxm", "Qwen/Qwen3-8B")
    assert kv_capacity_tokens(h200, qwen, 1) == int((141e9 * 0.88 - 8.19e9 * 2) // (144 * 1024))  # 1.8x the H100
    _, llama70 = lookup("h100_sxm", "meta-llama/Llama-3.1-70B")
    with pytest.raises(ValueError, match="raise --tp"):
        kv_capacity_tokens(gpu, llama70, 1)
    assert kv_capacity_tokens(gpu, llama70, 4) == int((4 * 80 * GIB * 0.88 - 70.6e9 * 2) // (320 * 1024))


def test_priorities_preempt_for_memory_and_every_request_keeps_its_tokens(model_dir, tokenizer, engines):
    tiny = make_sim_engine(model_dir, kv_pool_tokens=200, l3="none")  # 13 blocks: four 4-block calls overflow it
    plain = make_sim_engine(model_dir, kv_pool_tokens=8192, l3="none", enable_prefix_cache=False)
    engines += [tiny, plain]
    prompts = [tokenizer.encode(f"Request number {i} asks about topic {i * 7}. " * 6)[:40] for i in range(4)]
    params = greedy(24, ignore_eos=True)
    want = [o.output_ids for o in generate(plain, prompts, params)]
    watchers = [submit(tiny, p, params, priority=i % 2 * 3) for i, p in enumerate(prompts)]
    assert [w.wait().output_ids for w in watchers] == want
    assert tiny.batcher.num_preemptions > 0
    assert all(w.steps[-1].retractions == 0 for w in watchers[1::2])  # the high-priority calls never yield


def test_aiconfigurator_prices_steps_as_its_database_says():
    from engine.sim.steptime import AicStepModel

    qwen = AicStepModel("Qwen/Qwen3-8B", "h100_sxm", 1)
    assert qwen.seconds(StepWork(prefill_tokens=1000, prefill_context=1000)) == pytest.approx(0.0233, abs=1e-4)
    assert qwen.seconds(StepWork(decode_rows=1, decode_context=1000)) == pytest.approx(0.0068, abs=1e-4)
    many = qwen.seconds(StepWork(decode_rows=64, decode_context=1000))
    assert qwen.seconds(StepWork(decode_rows=1, decode_context=1000)) < many < \
        qwen.seconds(StepWork(decode_rows=64, decode_context=8000))  # rows and context both cost
    mixed = StepWork(prefill_tokens=512, prefill_context=4096, prefill_prefix=3584, decode_rows=32, decode_context=8000)
    assert qwen.seconds(mixed) > qwen.seconds(StepWork(decode_rows=32, decode_context=8000))
    _, llama = lookup("h100_sxm", "meta-llama/Llama-3.1-70B")  # shipped under its Meta- name
    assert AicStepModel(llama.perf_name, "h100_sxm", 4).seconds(StepWork(decode_rows=1, decode_context=1000)) > 0
