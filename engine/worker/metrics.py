"""GET /metrics of the worker: SGLang's metric names (`sglang:*`, so SGLang dashboards work) and
ours (`agentgate:*`), written by prometheus_client with the process metrics (common/prom.py)."""

from __future__ import annotations

from common.prom import counter, exposition, gauge, histogram
from engine.runtime.engine import Engine

EXTRA_HELP = {  # the sim worker's clock (engine/sim/engine.py extra_gauges)
    "agentgate:sim_steps_total": "Simulated steps run",
    "agentgate:sim_predicted_seconds_total": "Step seconds the step-time model predicted, summed",
    "agentgate:sim_step_wall_seconds_total": "Wall-clock seconds the simulated steps took, summed",
    "agentgate:sim_step_lag_seconds_total": "Seconds the simulated steps ran behind their schedule, summed",
    "agentgate:sim_step_lag_max_seconds": "The largest lag of one simulated step behind its schedule",
    "agentgate:sim_step_lag_median_seconds": "The median lag of a simulated step behind its schedule",
    "agentgate:sim_step_median_seconds": "The median predicted step time",
    "agentgate:sim_speedup": "How much faster than the predicted time the simulated steps run (--speedup)",
}
GAUGES = {  # name → help
    "sglang:num_running_reqs": "Requests in the running batch",
    "sglang:num_queue_reqs": "Requests waiting to be scheduled",
    "sglang:num_used_tokens": "KV cache tokens in use (L1 blocks in use times the block size)",
    "sglang:token_usage": "Fraction of the L1 KV cache in use",
    "sglang:gen_throughput": "Tokens generated per second over the last 10 s",
    "sglang:cache_hit_rate": "Prompt tokens served from the prefix cache over all prompt tokens",
    "sglang:max_total_num_tokens": "KV cache capacity in tokens",
    "sglang:num_retracted_reqs": "Requests preempted (retracted) so far",
    "sglang:spec_accept_rate": "Accepted over proposed draft tokens (speculative decoding)",
    "sglang:spec_accept_length": "Mean tokens accepted per verify step (speculative decoding)",
    "agentgate:kv_free_blocks": "L1 KV blocks free",
    "agentgate:kv_cached_blocks": "L1 KV blocks holding a cached prefix",
    "agentgate:kv_evictable_blocks": "L1 KV blocks that can be evicted (cached, unreferenced, unpinned)",
    "agentgate:kv_total_blocks": "L1 KV blocks in all",
    "agentgate:kv_pinned_blocks": "L1 KV blocks held by pins",
    "agentgate:kv_l2_blocks": "KV blocks held in the host-memory tier (L2)",
}
COUNTERS = {
    "sglang:prompt_tokens_total": "Prompt tokens of finished and running requests",
    "sglang:generation_tokens_total": "Tokens generated",
    "sglang:cached_tokens_total": "Prompt tokens served from the prefix cache",
    "sglang:num_requests_total": "Requests received",
    "sglang:num_aborted_requests_total": "Requests aborted",
    "agentgate:engine_steps_total": "Engine steps (forward passes)",
    "agentgate:engine_forward_seconds_total": "Seconds spent in forward passes",
    "agentgate:prefill_computed_tokens_total": "Prompt tokens run through the model for requests",
    "agentgate:prefetch_computed_tokens_total": "Prompt tokens run through the model for prefetches",
    "agentgate:decode_rows_total": "Decode rows computed (one per decoding request per step)",
}
HISTOGRAMS = {
    "sglang:time_to_first_token_seconds": ("ttft", "Time from arrival to the first token"),
    "sglang:e2e_request_latency_seconds": ("e2e", "Time from arrival to the end of a request"),
    "sglang:inter_token_latency_seconds": ("itl", "Time between two tokens of a request (one step)"),
}


def render_metrics(engine: Engine, model_name: str, load: dict, usage: dict) -> bytes:
    labels = {"model_name": model_name, "engine_type": "unified", "tp_rank": "0", "pp_rank": "0"}
    s = engine.stats
    values = {
        "sglang:num_running_reqs": load["num_running_reqs"],
        "sglang:num_queue_reqs": load["num_waiting_reqs"],
        "sglang:num_used_tokens": usage["used_blocks"] * usage["block_size"],
        "sglang:token_usage": usage["token_usage"],
        "sglang:gen_throughput": s.gen_throughput(),
        "sglang:cache_hit_rate": (s.cached_tokens / s.prompt_tokens) if s.prompt_tokens else 0.0,
        "sglang:max_total_num_tokens": usage["total_blocks"] * usage["block_size"],
        "sglang:num_retracted_reqs": engine.batcher.num_preemptions,
        "sglang:spec_accept_rate": s.spec_accept_rate(),
        "sglang:spec_accept_length": s.spec_accept_length(),
        "agentgate:kv_free_blocks": usage["free_blocks"],
        "agentgate:kv_cached_blocks": usage["cached_blocks"],
        "agentgate:kv_evictable_blocks": usage["evictable_blocks"],
        "agentgate:kv_total_blocks": usage["total_blocks"],
        "agentgate:kv_pinned_blocks": usage.get("pinned_blocks", 0),
        "agentgate:kv_l2_blocks": usage.get("l2_used_blocks", 0),
    }
    families = [gauge(name, help_, labels, values[name]) for name, help_ in GAUGES.items()]
    for name, value in engine.extra_gauges().items():  # a backend's own (the sim worker's clock, engine/sim)
        help_ = EXTRA_HELP.get(name, "backend-specific: " + name)
        families.append((counter if name.endswith("_total") else gauge)(name, help_, labels, value))
    with s.lock:
        totals = {
            "sglang:prompt_tokens_total": s.prompt_tokens,
            "sglang:generation_tokens_total": s.generation_tokens,
            "sglang:cached_tokens_total": s.cached_tokens,
            "sglang:num_requests_total": s.num_requests,
            "sglang:num_aborted_requests_total": s.num_aborted,
            "agentgate:engine_steps_total": s.steps,
            "agentgate:engine_forward_seconds_total": round(s.forward_seconds, 6),
            "agentgate:prefill_computed_tokens_total": s.prefill_computed,
            "agentgate:prefetch_computed_tokens_total": s.prefetch_computed,
            "agentgate:decode_rows_total": s.decode_rows,
        }
        families += [counter(name, help_, labels, totals[name]) for name, help_ in COUNTERS.items()]
        for name, (attr, help_) in HISTOGRAMS.items():
            h = getattr(s, attr)
            families.append(histogram(name, help_, labels, h.buckets, h.counts, h.sum))
    return exposition(families)
