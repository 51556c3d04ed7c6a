"""scripts/bench_scale.py and its workload: the trace is seeded and replays identically, the lag rule
marks a run invalid, time is converted back to simulated seconds, and a real `--quick` run (a
sim-cluster, a gateway, round_robin) writes its table, plot, trace and results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scripts import bench_scale
from scripts import bench_workflows_report as report
from scripts import scale_workload
from tests.support import REPO_ROOT


def test_the_workload_is_seeded_and_sized_as_the_issue_says():
    a, b = scale_workload.generate(40, 2.0, 7), scale_workload.generate(40, 2.0, 7)
    assert a == b and a != scale_workload.generate(40, 2.0, 8)
    assert [e["kind"] for e in a["workflows"][:5]] == list(scale_workload.KINDS)
    react = [e for e in a["workflows"] if e["kind"] == "react"]
    assert all(1 <= len(e["steps"]) <= 20 and all(200 <= s["obs"] <= 4000 and 0.2 <= s["tool_s"] <= 30
                                                 for s in e["steps"]) for e in react)
    assert max(len(e["steps"]) for e in react) >= 5  # 5-20 steps, fewer only where the context ends the loop
    for e in react:  # the whole loop fits the model's context
        assert a["system_tokens"]["react"][e["system"]] + sum(s["out"] + s["obs"] for s in e["steps"]) < 40960
    assert all(8 <= len(e["maps"]) <= 64 for e in a["workflows"] if e["kind"] == "map_reduce")
    assert all(8000 <= e["file"] <= 32000 for e in a["workflows"] if e["kind"] == "code_edit")
    assert all(2000 <= n <= 8000 for ns in a["system_tokens"].values() for n in ns)
    arrivals = [e["at"] for e in a["workflows"]]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0 and arrivals[-1] > 0
    wf = scale_workload.build(a, react[0])  # the same workflow every time it is built
    assert wf.to_dict() == scale_workload.build(a, react[0]).to_dict()
    llm = [n for n in wf.to_dict()["nodes"] if n.get("type", "llm") == "llm"]
    assert all(n["max_tokens"] == n["min_tokens"] for n in llm)  # lengths fixed by the trace


def test_a_cell_whose_median_lag_exceeds_five_percent_of_the_step_is_invalid():
    assert bench_scale.lag_verdict([0.0004, 0.0005], [0.010, 0.010])["valid"] is True
    assert bench_scale.lag_verdict([0.0006, 0.0007], [0.010, 0.010])["valid"] is False
    assert bench_scale.lag_verdict([], [])["valid"] is False


def test_records_are_converted_to_simulated_seconds():
    node = report.NodeRecord("a", "llm", "finished", "w", 10.0, 10.5, 11.0, 12.0)
    rec = report.WorkflowRecord(0, "react", 0, 10.0, 14.0, "finished", None, (node,))
    (out,) = bench_scale.scaled([rec], t0=10.0, s=0.25)
    assert (out.arrival, out.end) == (0.0, 1.0)
    assert (out.nodes[0].started, out.nodes[0].first_token, out.nodes[0].finished) == (0.125, 0.25, 0.5)


@pytest.mark.slow
def test_quick_run_writes_the_table_plot_trace_and_results(tmp_path):
    before = (REPO_ROOT / "BENCHMARKS.md").read_text()
    proc = subprocess.run([sys.executable, "scripts/bench_scale.py", "--quick", "--kv-oversubscribe", "3",
                           "--out-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "bench_scale_quick_kv3x.json").read_text())
    trace = scale_workload.generate(5, float("inf"), 0, "quick")  # L1 sized from it (here: two largest calls)
    assert data["meta"]["kv_blocks"] == {"2": scale_workload.kv_blocks_for(trace, 3.0, 2)[0]}
    assert [(r["config"], r["workers"]) for r in data["rows"]] == [("agentgate", 2), ("round_robin", 2)]
    assert all(r["failed"] == 0 and r["workflows"] == 5 and r["lag"]["median_step_ms"] > 0 for r in data["rows"])
    assert json.loads((tmp_path / "scale_trace_quick_kv3x.json").read_text()) == trace
    assert (tmp_path / "pareto_scale_quick_kv3x.png").stat().st_size > 0
    assert "At scale (simulated H100): KV 3x oversubscribed" in proc.stdout and "simulated" in proc.stdout
    assert (REPO_ROOT / "BENCHMARKS.md").read_text() == before, "a quick run must not touch BENCHMARKS.md"


def test_kv_oversubscription_sizes_l1_from_the_traces_working_set():
    trace = scale_workload.generate(60, 2.0, 3)
    working, largest = scale_workload.footprint(trace)
    systems = sum(sum(ns) for ns in trace["system_tokens"].values())
    assert largest < 40960 + 8000 and working > 60 * 2000 and working < 60 * 40960 + systems
    blocks, factor = scale_workload.kv_blocks_for(trace, 3.0, 2)
    assert blocks == working // (3 * 2 * 16) and 3.0 <= factor < 3.01  # >= 3x the cluster's L1
    small = scale_workload.generate(5, 2.0, 0, "quick")  # never below two of its largest calls
    blocks, factor = scale_workload.kv_blocks_for(small, 3.0, 2)
    assert blocks == 2 * scale_workload.call_blocks(scale_workload.footprint(small)[1]) and factor < 3.0
    args = bench_scale.parse_args(["--kv-oversubscribe", "3", "--model", "meta-llama/Llama-3.1-70B", "--tp", "4"])
    assert args.kv_oversubscribe == 3.0 and args.tp == 4
    with pytest.raises(SystemExit):
        bench_scale.parse_args(["--kv-oversubscribe", "-1"])


def test_a_tp4_run_reports_per_gpu_and_gets_its_own_section_and_files():
    meta = {"model": "meta-llama/Llama-3.1-70B", "tp": 4, "kv_blocks": 100, "kv_oversubscribe": 3.0}
    assert bench_scale.heading(meta) == bench_scale.SECTION + ": meta-llama/Llama-3.1-70B TP4, KV 3x oversubscribed"
    assert bench_scale.heading({"model": "Qwen/Qwen3-8B", "tp": 1}) == bench_scale.SECTION
    assert bench_scale.variant("meta-llama/Llama-3.1-70B", 4) == "_llama-3.1-70b_tp4"
    assert bench_scale.variant("Qwen/Qwen3-8B", 1) == ""
    node = report.NodeRecord("a", "llm", "finished", "w", 0.0, 0.0, 1.0, 2.0)
    s = report.summarize("agentgate", 1.0, [report.WorkflowRecord(0, "react", 0, 0.0, 2.0, "finished", None, (node,))],
                         2, None, None, None, {})
    extra = {"lag": {"valid": True}, "gateway": {}, "after_tool_p99": None, "precision_recall": (None, None)}
    assert bench_scale.row(s, extra, 2, tp=4)["tps_per_gpu"] == s.tps_per_worker / 4


def test_every_ablation_differs_from_agentgate_in_its_one_switch():
    by = {c.name: c for c in bench_scale.CONFIGS}
    full = by["agentgate"]
    assert set(by) >= {"no_prediction", "no_pins", "no_tiers", "no_pipelining", "no_priorities", "kv_aware_radix",
                       "round_robin", "sglang_router", "sequential"}
    assert by["no_prediction"].gateway == (*full.gateway, "--no-prediction")
    assert by["no_pins"].gateway == (*full.gateway, "--no-pinning")
    assert by["no_tiers"].gateway == full.gateway and by["no_tiers"].worker == (*full.worker, "--l2-blocks", "0",
                                                                                  "--l3", "none")
    assert dict(zip(by["no_pipelining"].gateway[::2], by["no_pipelining"].gateway[1::2]))["--token-pipelining"] == "off"
    assert dict(zip(by["no_priorities"].gateway[::2], by["no_priorities"].gateway[1::2]))["--workflow-priority"] == "0"
    assert by["sequential"].gateway is None and by["sequential"].router is None
    assert by["sglang_router"].router == ("--policy", "cache_aware")
