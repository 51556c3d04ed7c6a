"""bench_scale's rate sweep: which cells a run takes, the rate picked from agentgate's sweep (the highest
valid one with p99 TTFT <= 1 s), the targets judged there (the radix-only one only under >= 3x KV
oversubscription), the extra Llama-3.1-70B TP4 row kept apart, and the plots written."""

from __future__ import annotations

from scripts import bench_scale
from scripts import bench_scale_sweep as sweep
from scripts import scale_workload


def cell(config: str, rate: float, workers: int = 8, ttft: float = 0.5, valid: bool = True, **kw) -> dict:
    base = {"config": config, "workers": workers, "model": "Qwen/Qwen3-8B", "tp": 1, "extra_row": False, "rate": rate,
            "valid": valid, "workflows": 10, "failed": 0, "e2e_p50_s": 10.0, "e2e_p99_s": 20.0, "ttft_p99_s": ttft,
            "ttft_after_tool_p50_s": 0.1, "ttft_after_tool_p99_s": 0.5, "hit_rate": 0.8, "prefetch_precision": None,
            "prefetch_recall": None, "tps_per_gpu": 100.0, "tps_per_user": 50.0, "gateway_cpu_s": None,
            "lag": {"valid": valid, "median_lag_ms": 0.1, "median_step_ms": 10.0}}
    return {**base, **kw}


def test_the_rate_picked_is_the_highest_valid_one_where_agentgate_keeps_p99_ttft_within_one_second():
    rows = [cell("agentgate", 0.5, ttft=0.3), cell("agentgate", 1.0, ttft=0.9), cell("agentgate", 2.0, ttft=0.95,
                                                                                     valid=False),
            cell("agentgate", 4.0, ttft=3.0), cell("sglang_router", 4.0, ttft=0.2),
            cell("agentgate", 4.0, workers=32, ttft=0.4)]
    assert sweep.picked_rate(rows, 8, [0.5, 1.0, 2.0, 4.0]) == (1.0, True)  # 2.0 is INVALID, 4.0 too slow
    assert sweep.picked_rate(rows, 32, [0.5, 1.0, 2.0, 4.0]) == (4.0, True)
    assert sweep.picked_rate([cell("agentgate", 1.0, ttft=2.0)], 8, [1.0, 2.0]) == (1.0, False)  # none: the lowest
    extra = cell("agentgate", 8.0, ttft=0.1, extra_row=True, model="meta-llama/Llama-3.1-70B", tp=4)
    assert sweep.picked_rate([*rows, extra], 8, [0.5, 1.0]) == (1.0, True)  # the TP4 row never picks


def test_only_the_swept_configurations_run_at_every_rate_and_the_tp4_row_adds_its_own():
    args = bench_scale.parse_args(["--workers", "8,32", "--rates", "0.5,1,2", "--tp4-row"])
    assert args.sweep_configs == ["agentgate", "sglang_router"] and [c.name for c in args.tp4_configs] == ["agentgate"]
    assert bench_scale.count_cells(args) == 2 * (2 * 3 + 8) + 1
    every = bench_scale.parse_args(["--workers", "8", "--rates", "0.5,1", "--every-rate"])
    assert bench_scale.count_cells(every) == 10 * 2
    assert bench_scale.count_cells(bench_scale.parse_args(["--quick"])) == 2


def test_targets_are_judged_at_the_picked_rate_and_the_radix_one_says_whether_kv_was_oversubscribed_enough():
    rows = [cell("agentgate", 1.0, e2e_p50_s=5.0, ttft_after_tool_p99_s=0.1, tps_per_gpu=160.0),
            cell("sglang_router", 1.0, e2e_p50_s=12.0), cell("kv_aware_radix", 1.0, ttft_after_tool_p99_s=0.4),
            cell("agentgate", 2.0, ttft=1.5)]
    (line,) = sweep.targets(rows, {"kv_oversubscribed": {"8": 3.15}})
    assert line == ("- 8 workers at 1 wf/s: e2e_p50_s vs sglang_router: 2.40x (met, target 2.0x); "
                    "ttft_after_tool_p99_s vs kv_aware_radix: 4.00x (missed, target 5.0x); "
                    "tps_per_gpu vs sglang_router: 1.60x (met, target 1.5x)")
    (line,) = sweep.targets(rows, {"kv_oversubscribed": {"8": 1.2}})
    assert "(KV oversubscribed 1.2x, the target asks >= 3x: not the target's condition)" in line
    (line,) = sweep.targets([cell("agentgate", 1.0, ttft=1.2)])
    assert line == "- 8 workers: no valid rate where agentgate's p99 TTFT is <= 1 s; targets not evaluated."


def test_a_floor_of_one_largest_call_lets_a_few_dozen_workflows_oversubscribe_eight_workers_three_times():
    trace = scale_workload.generate(40, 2.0, 0)
    _, largest = scale_workload.footprint(trace)
    two, f2 = scale_workload.kv_blocks_for(trace, 3.0, 8)
    one, f1 = scale_workload.kv_blocks_for(trace, 3.0, 8, floor_calls=1)
    assert two == 2 * scale_workload.call_blocks(largest) and f2 < 3.0  # the default floor: two largest calls
    assert one >= scale_workload.call_blocks(largest) > largest * 1.05 / 16 and f1 >= 3.0


def test_the_tables_plots_and_section_of_a_sweep(tmp_path):
    rows = [cell(c, r, ttft=0.2 * r) for c in ("agentgate", "sglang_router") for r in (0.5, 1.0, 2.0)]
    rows += [cell("round_robin", 2.0), cell("agentgate", 2.0, extra_row=True, model="meta-llama/Llama-3.1-70B", tp=4)]
    table = bench_scale.section({"gpu": "h100_sxm", "model": "Qwen/Qwen3-8B", "tp": 1, "speedup": 0.5, "command": "c",
                                 "when": "today", "workflows": 10, "size": "8b", "seed": 0,
                                 "picked_rate": {"8": {"rate": 2.0, "ttft_ok": True}}},
                                rows, tmp_path / "pareto.png", tmp_path / "sweep.png")
    assert "| 8 (Llama-3.1-70B TP4) | agentgate | 2 wf/s | yes |" in table
    assert "Rates: 8 workers: 2 wf/s (the configurations not swept ran there only)." in table
    assert f"![simulated rate sweep]({tmp_path / 'sweep.png'})" in table
    sweep.plot(rows, tmp_path / "pareto.png")
    assert sweep.plot_sweep(rows, tmp_path / "sweep.png") is True
    assert (tmp_path / "pareto.png").stat().st_size > 0 and (tmp_path / "sweep.png").stat().st_size > 0
    assert sweep.plot_sweep([cell("agentgate", 1.0)], tmp_path / "none.png") is False  # one rate: nothing to sweep


def test_a_dry_run_lists_the_cells_and_their_least_wall_time(capsys):
    trace = {"system_tokens": {"react": [1000]}, "workflows": [
        {"kind": "react", "system": 0, "at": 2.0, "question": 0, "answer": 10,
         "steps": [{"out": 100, "obs": 500, "tool_s": 3.0}]}]}
    # prefill 1,000 then 1,600 tokens, 110 decode steps, a 3 s tool; it arrives at 2 s
    assert abs(sweep.workflow_seconds(trace, trace["workflows"][0]) - (2600 * 23e-6 + 110 * 0.010 + 3.0)) < 1e-9
    assert abs(sweep.cell_wall_s(trace, 0.5) - ((2.0 + 2600 * 23e-6 + 1.1 + 3.0) / 0.5 + 25.0)) < 1e-9
    assert bench_scale.main(["--workers", "8", "--rates", "1,2", "--workflows", "6", "--configs",
                             "agentgate,sglang_router,round_robin", "--tp4-row", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count(" min\n") == 2 * 2 + 1 + 1 and "(Llama-3.1-70B TP4)" in out and "6 cells, at least" in out
