"""scripts/bench_gateway_scale.py: which calls of a workflow run before its first tool, and a real
`--quick` run (a sim-cluster, Redis, the gateway under tracemalloc) that holds its workflows, measures
them, cancels them and finds none left running."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scripts import bench_gateway_scale as bgs
from scripts import scale_workload
from tests.support import REPO_ROOT


def test_the_first_wave_is_the_llm_calls_no_tool_precedes():
    trace = scale_workload.generate(8, float("inf"), 0, "quick", bgs.KINDS)
    waves = {e["kind"]: bgs.first_wave(scale_workload.build(trace, e).to_dict()) for e in trace["workflows"][:4]}
    assert waves == {"react": 1, "planner": 1, "code_edit": 0, "chat": 1}  # think_1, plan, (read_file first), reply_1
    payload = {"nodes": [{"id": "a"}, {"id": "b"}, {"id": "t", "type": "external"}, {"id": "c"}],
               "edges": [{"source": "a", "target": "t"}, {"source": "t", "target": "c"}]}
    assert bgs.first_wave(payload) == 2  # a and b; c waits for the tool


@pytest.mark.slow
def test_quick_run_holds_measures_and_frees_its_workflows(tmp_path):
    before = (REPO_ROOT / "BENCHMARKS.md").read_text()
    proc = subprocess.run([sys.executable, "scripts/bench_gateway_scale.py", "--quick", "--out-dir", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "bench_gateway_scale_quick.json").read_text())["rows"]
    assert row["count"] == row["in_flight"] == 20 and row["after_end_running"] == 0
    assert row["first_wave_done"] == row["first_wave_calls"] > 0
    assert row["hold_rss_mb"] > 0 and row["heap"]["top"] and row["heap_marginal"]["top"]
    assert "RSS and CPU per in-flight workflow" in proc.stdout
    assert (REPO_ROOT / "BENCHMARKS.md").read_text() == before, "a quick run must not touch BENCHMARKS.md"
