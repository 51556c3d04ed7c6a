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
    proc = subprocess.run([sys.executable, "scripts/bench_scale.py", "--quick", "--out-dir", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "bench_scale_quick.json").read_text())
    assert [(r["config"], r["workers"]) for r in data["rows"]] == [("agentgate", 2), ("round_robin", 2)]
    assert all(r["failed"] == 0 and r["workflows"] == 5 and r["lag"]["median_step_ms"] > 0 for r in data["rows"])
    trace = json.loads((tmp_path / "scale_trace_quick.json").read_text())
    assert trace == scale_workload.generate(5, float("inf"), 0, "quick")
    assert (tmp_path / "pareto_scale_quick.png").stat().st_size > 0
    assert "At scale (simulated H100)" in proc.stdout and "simulated" in proc.stdout
    assert (REPO_ROOT / "BENCHMARKS.md").read_text() == before, "a quick run must not touch BENCHMARKS.md"
