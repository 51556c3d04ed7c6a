"""scripts/bench_chaos.py --quick on real processes (Redis, two gateways, three stand-in workers): every
fault row ends with nothing lost and no finished node re-run, each fault hit workflows in flight, every
SSE follower saw its workflow end, and the fuzz row found no server error."""

from __future__ import annotations

import pytest

from scripts import bench_chaos

pytestmark = pytest.mark.slow


def test_quick_chaos_run_loses_nothing():
    rows = bench_chaos.main(["--quick", "--no-write"])
    assert [r.fault for r in rows] == [f.name for f in bench_chaos.faults(bench_chaos.parse_args(["--quick"]))]
    for r in rows:
        assert (r.lost, r.reruns) == (0, 0), r
        assert r.accepted == r.completed + r.failed == 12, r
        assert r.recovery_s is not None, r
        assert r.in_flight > 0, r  # the fault hit a load in flight
    by_name = {r.fault: r for r in rows}
    assert by_name["48 concurrent SSE followers"].notes == "48/48 followers saw workflow_finished"
    assert ", 0 server errors, 0 non-OpenAI errors" in by_name["schemathesis fuzz of gateway B"].notes
