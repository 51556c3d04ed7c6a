"""The worker contract tests of the embedded engine (tests/e2e/test_worker_http.py and
tests/e2e/test_worker_kv_api.py) run against a sim worker process: the same HTTP APIs, errors,
cancellation, metrics, prefetch and pins. Plus what only a sim worker says: its kind, the
hardware it simulates, and its step clock in /metrics. Left out: a chat without max_tokens ending
with "stop" (the sim never emits EOS: its lengths come from max_tokens, as the workload sets them)."""

from __future__ import annotations

import pytest

from tests.e2e.test_worker_http import (  # noqa: F401  (collected here, against this module's worker)
    test_health, test_server_info, test_model_info, test_get_load_is_a_list_with_token_counts, test_v1_models,
    test_generate_text_shape, test_generate_with_input_ids_matches_text, test_generate_batch_returns_a_list,
    test_generate_stream_is_cumulative_and_ends_with_done, test_stop_string_trims_and_reports_the_match,
    test_return_logprob, test_v1_completions_non_stream_and_stream,
    test_v1_usage_reports_cached_tokens_on_a_repeated_long_prompt,
    test_v1_chat_completions_non_stream_and_stream, test_n_two_gives_two_choices,
    test_metrics_exposes_sglang_and_agentgate_names, test_work_counters_count_what_the_forward_passes_computed,
    test_flush_cache_when_idle_and_refused_while_busy, test_abort_request_ends_a_streaming_request,
    test_bad_input_is_a_4xx_with_an_openai_error, test_unknown_path_is_a_json_404,
    test_the_worker_still_serves_after_bad_input, test_a_disconnected_stream_frees_its_blocks,
    test_a_cancelled_non_streaming_request_frees_its_blocks, test_a_client_timeout_frees_the_blocks,
    test_eight_concurrent_streams_all_complete)
from tests.e2e.test_worker_kv_api import (  # noqa: F401
    test_malformed_bodies_get_a_400, test_non_json_bodies_get_a_400, test_pin_and_unpin_by_id_and_by_prefix,
    test_pin_of_a_prefix_not_resident_is_404, test_prefetch_then_generate_reports_the_cached_prefix)
from tests.e2e.test_worker_http import generate, get, metric
from tests.sim.support import decode_s, prefill_s, write_table
from tests.support import start_worker, stop_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker_process(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim-worker")
    table = write_table(tmp / "table.json")
    worker = start_worker(model_dir, tmp, "--backend", "sim", "--gpu", "h100_sxm", "--model", "Qwen/Qwen3-8B",
                          "--timing-table", str(table), "--served-model-name", model_dir.name,
                          # the embedded test worker's context and pool (0.25 GB at its KV bytes per token)
                          "--context-length", "8192", "--kv-blocks", "364", threads=None)
    yield worker
    stop_worker(worker)


@pytest.fixture(scope="module")
def worker(worker_process) -> str:
    return worker_process.url


def test_server_info_says_sim_and_what_it_simulates(worker):
    status, info = get(worker, "/get_server_info")
    assert status == 200 and info["kind"] == "sim" and info["backend"] == "agentgate-engine"
    sim = info["sim"]
    assert (sim["gpu"], sim["model"], sim["tp"], sim["kv_bytes_per_token"]) == ("h100_sxm", "Qwen/Qwen3-8B", 1, 147456)
    assert sim["step_model"].startswith("table ") and info["max_total_num_tokens"] == 364 * 16
    assert info["matmul_plan"].startswith("sim: table")
    # the simulated pool's bytes: 364 blocks of 16 tokens at 144 KiB a token
    assert info["internal_states"][0]["memory_usage"]["kvcache"] == round(364 * 16 * 147456 / 2**30, 3)


def test_metrics_report_the_step_clock_and_its_lag(worker):
    steps = metric(worker, "agentgate:sim_steps_total")
    predicted = metric(worker, "agentgate:sim_predicted_seconds_total")
    out = generate(worker, text="A fresh prompt for the clock test, never sent before. " * 4, max_new_tokens=5)
    n = out["meta_info"]["prompt_tokens"] - out["meta_info"]["cached_tokens"]
    assert metric(worker, "agentgate:sim_steps_total") == steps + 5
    assert metric(worker, "agentgate:sim_predicted_seconds_total") - predicted == pytest.approx(
        prefill_s(n) + 4 * decode_s(1), abs=1e-9)
    wall = metric(worker, "agentgate:sim_step_wall_seconds_total")
    lag = metric(worker, "agentgate:sim_step_lag_seconds_total")
    total = metric(worker, "agentgate:sim_predicted_seconds_total")
    assert wall - lag == pytest.approx(total, abs=1e-3) and metric(worker, "agentgate:sim_speedup") == 1.0
    assert 0 <= metric(worker, "agentgate:sim_step_lag_median_seconds") <= \
        metric(worker, "agentgate:sim_step_lag_max_seconds")
