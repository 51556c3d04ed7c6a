"""Routing policies, the gateway's prefix record, tokenization for hashing, the circuit breaker."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.hashing import block_hashes
from gateway.router.base import RouteRequest, WorkerView
from gateway.router.policies.kv_aware import KVAwarePolicy
from gateway.router.policies.least_load import LeastLoadPolicy
from gateway.router.policies.random import RandomPolicy
from gateway.router.policies.round_robin import RoundRobinPolicy
from gateway.router.prefix_record import PrefixRecord
from gateway.router.prompts import PromptHasher
from gateway.router.registry import make_policy
from gateway.workers.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker

A, B, C = "http://a", "http://b", "http://c"


def views(*loads: int) -> list[WorkerView]:
    return [WorkerView(url=u, in_flight=n) for u, n in zip((A, B, C), loads)]


def req_for(ids: list[int]) -> RouteRequest:
    return RouteRequest(prompt_tokens=len(ids), block_hashes=tuple(block_hashes(ids, 16)))


def test_round_robin_rotates_over_candidates():
    policy = RoundRobinPolicy()
    assert [policy.choose(RouteRequest(1), views(0, 0, 0)) for _ in range(6)] == [A, B, C, A, B, C]


def test_least_load_picks_the_idlest_worker():
    policy = LeastLoadPolicy()
    assert policy.choose(RouteRequest(1), views(3, 1, 2)) == B
    # The worker's own report counts when it exceeds our in-flight count (other clients' load).
    loaded = [WorkerView(A, 0, num_reqs=5), WorkerView(B, 1)]
    assert policy.choose(RouteRequest(1), loaded) == B


def test_random_stays_within_candidates_and_is_seedable():
    picks = [RandomPolicy(seed=7).choose(RouteRequest(1), views(0, 0, 0)) for _ in range(3)]
    assert len(set(picks)) == 1 and picks[0] in (A, B, C)
    policy = RandomPolicy(seed=1)
    assert {policy.choose(RouteRequest(1), views(0, 0, 0)) for _ in range(50)} == {A, B, C}


def test_kv_aware_sends_a_shared_long_prefix_to_the_worker_that_holds_it():
    policy = KVAwarePolicy()
    system = list(range(1000, 1400))  # a 400-token shared prefix (25 blocks)
    first = req_for(system + [1, 2, 3])
    chosen = policy.choose(first, views(0, 0, 0))
    policy.on_routed(first, chosen)
    for tail in ([7, 8, 9], [4] * 40, [5] * 17):
        follow = req_for(system + tail)
        assert policy.choose(follow, views(0, 0, 0)) == chosen
        # ...even when the holder is busier, since recomputing 400 tokens costs more than a queue slot.
        loads = [2 if v.url == chosen else 0 for v in views(0, 0, 0)]
        assert policy.choose(follow, views(*loads)) == chosen


def test_kv_aware_keeps_a_prefix_on_its_holder_until_the_holder_is_clearly_busier():
    policy = KVAwarePolicy(load_weight=64, balance_slack=4)
    short = req_for(list(range(40)))  # 2 full blocks: 32 of 40 tokens held by A, past the affinity threshold
    policy.on_routed(short, A)
    assert policy.choose(short, views(0, 0)) == A
    assert policy.choose(short, views(4, 0)) == A  # within the slack: it batches with what shares its prefix
    assert policy.choose(short, views(5, 0)) == B  # beyond it, cost decides: 5 × 64 load > 32 cached tokens
    assert policy.choose(short, views(5, 1)) == A  # the slack is counted from the least-loaded candidate


def test_kv_aware_without_affinity_weighs_load_against_a_short_prefix():
    policy = KVAwarePolicy(load_weight=64)
    prompt = req_for(list(range(40)) + list(range(500, 540)))  # 80 tokens, 2 blocks held by A: under half
    policy.on_routed(req_for(list(range(40))), A)
    assert policy.holder(prompt, views(0, 0)) is None
    assert policy.choose(prompt, views(0, 0)) == A
    assert policy.choose(prompt, views(1, 0)) == B  # 64 load > 32 cached tokens


def test_kv_aware_spreads_unrelated_prompts_over_idle_workers():
    policy = KVAwarePolicy()
    picks = set()
    for i in range(3):
        r = req_for([i] * 64)
        url = policy.choose(r, views(0, 0, 0))
        policy.on_routed(r, url)
        picks.add(url)
    assert picks == {A, B, C}


def test_kv_aware_forgets_a_removed_worker():
    policy = KVAwarePolicy()
    r = req_for(list(range(320)))
    policy.on_routed(r, A)
    policy.on_removed(A)
    assert policy.record.matched_blocks(r.block_hashes, A) == 0


def test_prefix_record_matches_leading_blocks_only_and_is_bounded():
    record = PrefixRecord(max_blocks=4)
    record.add([1, 2, 3], A)
    assert record.matched_blocks([1, 2, 3, 4], A) == 3
    assert record.matched_blocks([9, 2, 3], A) == 0  # a chain is useless after its first gap
    assert record.matched_blocks([1, 2], B) == 0
    record.add([10, 11], B)
    assert len(record) == 4 and record.matched_blocks([1], A) == 0  # the oldest block went first


def test_make_policy_knows_every_policy():
    for name in ("kv_aware", "round_robin", "least_load", "random"):
        assert make_policy(name).name == name


def test_prompt_hasher_uses_the_model_tokenizer_and_chat_template(tokenizer, model_dir):
    hasher = PromptHasher.from_model_dir(model_dir)
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": [
        {"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}, {"role": "user", "content": "x",
                                                                                  "name": None}]
    expected = tokenizer.encode(tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"},
         {"role": "user", "content": "x"}], add_generation_prompt=True))
    assert hasher.chat_ids(messages) == expected
    route = hasher.route_for_ids(expected, salt="tenant")
    assert route.prompt_tokens == len(expected)
    assert list(route.block_hashes) == block_hashes(expected, 16, "tenant")


def test_breaker_opens_cools_down_and_closes():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=1.0, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.state == CLOSED
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.may_probe()
    now[0] = 1.5
    assert breaker.state == HALF_OPEN and breaker.may_probe() and not breaker.allows_calls()
    breaker.record_failure()  # a failed probe re-opens it for a full cooldown
    assert breaker.state == OPEN
    now[0] = 3.0
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allows_calls()
    breaker.record_failure(hard=True)
    assert breaker.state == OPEN


def test_piecewise_cached_encoding_equals_whole_text_encoding(tokenizer, model_dir):
    from gateway.router.segment_cache import SegmentEncoder

    encoder = SegmentEncoder.for_model_dir(tokenizer, model_dir)
    assert encoder.added is not None, "SmolLM2's tokenizer allows exact piecewise encoding"
    chats = [[{"role": "system", "content": "You are terse.  "}, {"role": "user", "content": " héllo\n\nwörld 🙂"}],
             [{"role": "user", "content": "<|im_start|> nested <|im_end|>x"}],
             [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}, {"role": "user", "content": " "}]]
    texts = [tokenizer.apply_chat_template(c) for c in chats] + [
        "", "plain text", "<|im_end|><|im_end|>", " <|endoftext|> tail  ", "x" * 3000 + "<|im_start|>y"]
    for text in texts * 2:  # the second round is served from the cache
        assert encoder.encode(text) == tokenizer.encode(text), repr(text[:80])
    assert encoder.hits > 0
    assert all(type(v).__name__ == "array" and v.itemsize == 4 for v in encoder._cache.values())  # kept compact


def test_block_hash_memo_gives_the_engines_hashes_and_stays_bounded():
    import random

    from gateway.router.prompts import BlockHashMemo

    memo = BlockHashMemo(max_blocks=8)
    rng = random.Random(3)
    shared = [rng.randrange(50_000) for _ in range(80)]
    for _ in range(3):  # repeats are served from the memo, and must not drift
        for salt in (None, "tenant-a", "tenant-b"):
            tail = [rng.randrange(50_000) for _ in range(rng.randrange(40))]
            ids = shared + tail
            assert memo(ids, 16, salt) == block_hashes(ids, 16, salt)
    assert memo(shared, 16, "tenant-a") != memo(shared, 16, "tenant-b")
    assert len(memo._memo) <= 8


class TieredSource:
    """What a KV index says: `l1` holds the prompt in its own pool, every worker can load it from L3."""

    def __init__(self, l1: str | None, l3_credit: float = 0.97):
        self.l1, self.l3_credit = l1, l3_credit

    def matched_blocks(self, hashes, url: str) -> float:
        return len(hashes) * (1.0 if url == self.l1 else self.l3_credit)

    def resident_blocks(self, hashes, url: str) -> int:
        return len(hashes) if url == self.l1 else 0


CPU = dict(step_s=0.030, token_s=0.004)  # a row costs an eighth of a step: every row is computed
GPU = dict(step_s=0.010, token_s=0.00002)  # a row is nearly free next to reading the weights once a step


def costed(costs: dict, *loads: int) -> list[WorkerView]:
    return [WorkerView(url=u, in_flight=n, **costs) for u, n in zip((A, B), loads)]


def test_kv_aware_finish_time_takes_a_stage_off_a_busy_holder_on_a_cpu_but_not_on_a_gpu():
    """A holds a 1,000-token role prompt in L1 and runs five calls; B is idle and can load the prompt
    from L3. On CPU costs the call finishes sooner on B; on GPU costs the holder keeps it."""
    policy = KVAwarePolicy(TieredSource(l1=A))
    call = replace(req_for(list(range(1000)) + [7] * 24), max_tokens=24)
    assert policy.choose(call, costed(CPU, 0, 0)) == A  # equal loads: the holder (B would load from L3)
    assert policy.choose(call, costed(CPU, 1, 0)) == B  # the call on A would wait out this one's prefill
    assert policy.choose(call, costed(CPU, 5, 0)) == B
    assert policy.choose(call, costed(GPU, 5, 0)) == A
    a, b = costed(CPU, 5, 0)
    assert policy.finish_s(call, b) < policy.finish_s(call, a) * (1 - policy.spread_margin)


def test_kv_aware_counts_the_delay_a_call_puts_on_the_holders_running_calls():
    """With one call running on A, this call alone would finish about as soon on A as on B (B loads the
    prompt from L3), so its own finish time keeps it on A; but on A its prompt tokens and decode rows
    would also lengthen the steps of the call already there. Counting that, B takes it on CPU costs;
    on GPU costs the added rows are a sliver of a step and A keeps it even with seven calls."""
    policy = KVAwarePolicy(TieredSource(l1=A))
    call = replace(req_for(list(range(1000)) + [7] * 24), max_tokens=24)
    a, b = costed(CPU, 1, 0)
    assert policy.finish_s(call, b) >= policy.finish_s(call, a) * (1 - policy.spread_margin)
    delay = (policy.uncached(call, a) + 24) * CPU["token_s"]
    assert policy.added_s(call, a) == pytest.approx(policy.finish_s(call, a) + delay)
    assert policy.added_s(call, b) == pytest.approx(policy.finish_s(call, b))  # nothing runs on B
    assert policy.choose(call, [a, b]) == B
    assert policy.choose(call, costed(GPU, 7, 0)) == A


def test_kv_aware_prices_decode_rows_and_prompt_tokens_apart_where_the_worker_says():
    """A worker that publishes row_s (a decode row over a long context costs three prompt tokens on a CPU):
    the call's own rows and the rows it adds to the holder's running calls cost row_s, its prompt tokens
    token_s."""
    policy = KVAwarePolicy(TieredSource(l1=A))
    call = replace(req_for(list(range(1000)) + [7] * 24), max_tokens=24)
    a, b = [WorkerView(url=u, in_flight=n, step_s=0.05, row_s=0.006, token_s=0.002) for u, n in ((A, 2), (B, 0))]
    ua, ub = policy.uncached(call, a), policy.uncached(call, b)
    assert policy.finish_s(call, a) == pytest.approx(24 * (0.05 + 3 * 0.006) + ua * 0.002)
    assert policy.added_s(call, a) == pytest.approx(policy.finish_s(call, a) + 2 * (ua * 0.002 + 24 * 0.006))
    assert policy.added_s(call, b) == pytest.approx(24 * (0.05 + 0.006) + ub * 0.002)
    assert policy.choose(call, [a, b]) == B


def test_kv_aware_takes_a_worker_that_has_not_learned_its_step_costs_to_cost_what_its_peers_do():
    """B has run nothing yet, so it publishes no step costs; A carries a stage. B is priced as A is, and
    takes the call on CPU costs as it would if it had published them."""
    policy = KVAwarePolicy(TieredSource(l1=A))
    call = replace(req_for(list(range(1000)) + [7] * 24), max_tokens=24)
    a, b = WorkerView(url=A, in_flight=5, **CPU), WorkerView(url=B)
    priced = policy.with_peer_costs([b, a])
    assert priced[0] == a and (priced[1].url, priced[1].step_s, priced[1].token_s, priced[1].per_row) == (
        B, CPU["step_s"], CPU["token_s"], CPU["token_s"])
    assert policy.choose(call, [a, b]) == B == policy.choose(call, costed(CPU, 5, 0))
    assert policy.with_peer_costs([b, WorkerView(url=A, in_flight=5)])[1] == WorkerView(url=B)  # none known


def test_kv_aware_finish_time_never_trades_a_recompute_for_a_shorter_queue():
    """Nobody else can load the prefix (no L3): recomputing 1,000 tokens costs more than A's queue."""
    policy = KVAwarePolicy(TieredSource(l1=A, l3_credit=0.0))
    call = replace(req_for(list(range(1000)) + [7] * 24), max_tokens=24)
    assert policy.choose(call, costed(CPU, 5, 0)) == A


def test_kv_aware_without_step_costs_or_output_budget_keeps_the_slack_rule():
    policy = KVAwarePolicy(TieredSource(l1=A))
    call = req_for(list(range(1000)) + [7] * 24)  # no max_tokens
    assert policy.finish_s(call, costed(CPU, 5, 0)[1]) is None
    assert policy.choose(call, costed(CPU, 5, 0)) == A
    budgeted = replace(call, max_tokens=24)
    assert policy.choose(budgeted, views(5, 0)) == A  # workers that publish no step costs


def test_kv_aware_finish_time_spreads_a_burst_of_one_role_over_idle_workers():
    """Six calls of one role arrive together, A holding the role's prompt: on CPU costs they split
    between the workers (each placed call counts as load; B's L3 load of the prompt makes A worth
    one call more), on GPU costs they all meet on A."""
    for costs, expected in ((CPU, {A: 4, B: 2}), (GPU, {A: 6})):
        policy = KVAwarePolicy(TieredSource(l1=A))
        loads = {A: 0, B: 0}
        for i in range(6):
            call = replace(req_for(list(range(1000)) + [i] * 40), max_tokens=24)
            url = policy.choose(call, costed(costs, loads[A], loads[B]))
            loads[url] += 1
        assert {u: n for u, n in loads.items() if n} == expected
