"""Prometheus text for GET /metrics, under SGLang's metric names."""

from __future__ import annotations

from engine.runner import Engine


def render_metrics(engine: Engine, model_name: str, load: dict, usage: dict) -> str:
    labels = f'model_name="{model_name}",engine_type="unified",tp_rank="0",pp_rank="0"'
    s = engine.stats
    gauges = {
        "sglang:num_running_reqs": load["num_running_reqs"],
        "sglang:num_queue_reqs": load["num_waiting_reqs"],
        "sglang:num_used_tokens": usage["used_blocks"] * usage["block_size"],
        "sglang:token_usage": usage["token_usage"],
        "sglang:gen_throughput": s.gen_throughput(),
        "sglang:cache_hit_rate": (s.cached_tokens / s.prompt_tokens) if s.prompt_tokens else 0.0,
        "sglang:max_total_num_tokens": usage["total_blocks"] * usage["block_size"],
        "sglang:num_retracted_reqs": engine.scheduler.num_preemptions,
        "sglang:spec_accept_rate": s.spec_accept_rate(),
        "sglang:spec_accept_length": s.spec_accept_length(),
        "agentgate:kv_free_blocks": usage["free_blocks"],
        "agentgate:kv_cached_blocks": usage["cached_blocks"],
        "agentgate:kv_evictable_blocks": usage["evictable_blocks"],
        "agentgate:kv_total_blocks": usage["total_blocks"],
    }
    gauges.update(engine.extra_gauges())
    with s.lock:
        counters = {
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
        hist = [s.ttft.render("sglang:time_to_first_token_seconds", labels),
                s.e2e.render("sglang:e2e_request_latency_seconds", labels),
                s.itl.render("sglang:inter_token_latency_seconds", labels)]
    lines = []
    for name, value in gauges.items():
        lines += [f"# TYPE {name} gauge", f"{name}{{{labels}}} {value}"]
    for name, value in counters.items():
        lines += [f"# TYPE {name} counter", f"{name}{{{labels}}} {value}"]
    for h in hist:
        lines += h
    return "\n".join(lines) + "\n"
