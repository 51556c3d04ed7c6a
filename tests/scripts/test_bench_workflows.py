"""scripts/bench_workflows.py: its measurements on hand-made records, and a real `--quick` run
(one worker, agentgate + sequential) that must produce the table, both plots and the results JSON."""

from __future__ import annotations

import hashlib
import inspect
import json
import random
import subprocess
import sys

import pytest
from agentgate.state import WorkflowState
from agentgate.tools import ToolCall, bind

from scripts import bench_workflows as bench
from scripts import bench_workflows_report as report
from tests.support import REPO_ROOT

INF = float("inf")


def test_arrival_plan_is_poisson_reproducible_and_cycles_examples():
    plan = bench.arrival_plan(0.5, 200, ("a", "b", "c"), seed=7)
    assert plan == bench.arrival_plan(0.5, 200, ("a", "b", "c"), seed=7)
    assert plan != bench.arrival_plan(0.5, 200, ("a", "b", "c"), seed=8)
    gaps = [y.at - x.at for x, y in zip(plan, plan[1:])]
    assert plan[0].at == 0 and all(g >= 0 for g in gaps)
    draws, t, times = random.Random(7), 0.0, []  # exponential gaps at this rate (mean 1/rate), seeded
    for _ in plan:
        times.append(t)
        t += draws.expovariate(0.5)
    assert [a.at for a in plan] == times
    assert [(a.example, a.variant) for a in plan[:4]] == [("a", 0), ("b", 0), ("c", 0), ("a", 1)]
    assert all(a.at == 0 for a in bench.arrival_plan(INF, 5, ("a",), seed=0))


def state(nodes: dict, status: str = "finished") -> WorkflowState:
    return WorkflowState.from_json({"id": "wf-x", "status": status, "created": 100.0, "nodes": nodes})


def llm(started, first, finished, prompt, cached, completion, worker="http://w:1") -> dict:
    return {"type": "llm", "status": "finished", "worker": worker,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "prompt_tokens_details": {"cached_tokens": cached}},
            "timings": {"started": started, "finished": finished, "ttft_s": first - started}}


def chain(t: float) -> dict:
    """a → tool → b for a workflow arriving at t: a waits 1 s for a worker, b starts 1 s after the tool."""
    return {"a": llm(t + 1, t + 3, t + 5, prompt=1000, cached=0, completion=20),
            "tool": {"type": "external", "status": "finished", "timings": {"started": t + 5, "finished": t + 6}},
            "b": {**llm(t + 7, t + 7.5, t + 10, prompt=1100, cached=1000, completion=30, worker="http://w:2"),
                  "prefetch": {"predicted": True, "hit": True, "prefix_tokens": 1000}}}


UPSTREAM = {"a": set(), "tool": {"a"}, "b": {"tool"}}


def test_records_and_summary_follow_the_documented_definitions():
    rec = report.workflow_record(0, "react", 0, 100.0, 110.0, state(chain(100)), UPSTREAM, {"http://w:1": "worker 1"})
    by = {n.node: n for n in rec.nodes}
    assert by["a"].ready == 100.0 and by["tool"].ready == 105 and by["b"].ready == 106
    assert by["a"].worker == "worker 1" and by["b"].worker == "http://w:2"
    assert by["a"].first_token == 103 and by["tool"].first_token is None
    assert not by["a"].after_tool and by["b"].after_tool  # b's input is the tool's result
    assert (by["a"].predicted, by["a"].prefetch_hit) == (False, None) and (by["b"].predicted, by["b"].prefetch_hit) == (True, True)

    late = report.workflow_record(1, "react", 0, 104.0, 124.0, state(chain(104)), UPSTREAM)
    failed = report.WorkflowRecord(2, "react", 1, 105.0, 130.0, "error", "boom", ())
    s = report.summarize("agentgate", 0.5, [rec, late, failed], workers=2)
    assert s.workflows == 3 and s.failed == 1
    assert s.makespan_s == pytest.approx(30.0)  # first arrival 100 → last end 130
    assert s.hit_rate == pytest.approx(2000 / 4200)
    assert s.completion_tokens == 100 and s.tps_per_worker == pytest.approx(100 / 30 / 2)
    assert s.tps_per_user == pytest.approx((50 / 10 + 50 / 20) / 2)
    # TTFT counts from "inputs ready": a 3 s (1 s waiting + 2 s prefill), b 1.5 s (1 s waiting + 0.5 s)
    assert s.ttft_p50_s == pytest.approx(2.25) and s.ttft_p99_s == pytest.approx(3.0)
    assert s.e2e_p50_s == pytest.approx(15.0)
    assert s.ttft_after_tool_p50_s == pytest.approx(1.5)  # b only: a's input is no tool result
    assert (s.predicted_calls, s.prefetch_hits) == (2, 2)  # b in both finished workflows


def test_work_counters_are_read_summed_and_tabled():
    text = ('# TYPE agentgate:engine_forward_seconds_total counter\n'
            'agentgate:engine_forward_seconds_total{model_name="m"} 12.5\n'
            'agentgate:prefill_computed_tokens_total{model_name="m"} 900\n'
            'agentgate:prefetch_computed_tokens_total{model_name="m"} 300\n'
            'agentgate:decode_rows_total{model_name="m"} 40\n'
            'agentgate:engine_steps_total{model_name="m"} 30\n'
            'sglang:prompt_tokens_total{model_name="m"} 5000\n')
    one = report.work_counters(text)
    assert one == {"forward_s": 12.5, "prefill_tokens": 900, "prefetch_tokens": 300, "decode_rows": 40, "steps": 30}
    rec = report.WorkflowRecord(0, "react", 0, 100.0, 125.0, "finished", None, ())
    s = report.summarize("agentgate", INF, [rec], workers=2, work=[one, {**one, "forward_s": 7.5}])
    assert s.work["workers"] == 2 and s.work["forward_s"] == 20.0 and s.work["prefetch_tokens"] == 600
    table = "\n".join(report.work_table([s, report.summarize("round_robin", INF, [rec], workers=2)]))
    assert "| all at once | agentgate | 20 | 40% | 1800 | 600 | 80 | 60 |" in table  # 20 s / (25 s × 2)
    assert "round_robin" not in table  # a cell whose workers could not be read has no row
    again = report.from_json(json.loads(json.dumps(report.to_json({}, [s], {}, {}))))[1][0]
    assert again.work == s.work


def test_section_states_ratios_and_targets():
    def cell(config, makespan, after_tool=1.0, predicted=0, hits=0):
        return report.CellSummary(config, INF, 4, 0, makespan, 1, 2, 0.1, 0.2, 0.5, 3.0, 1.0, 10, 5, 100,
                                  after_tool, predicted, hits)

    text = report.section([cell("agentgate", 10.0, 0.25, 20, 19), cell("no_prediction", 12.0, 1.5),
                           cell("round_robin", 30.0), cell("sequential", 20.0)],
                          {"command": "x", "when": "today", "machine": "m", "workers": 2, "threads": 1,
                           "kv_memory_gb": 1.0, "workflows": 4, "examples": ["react"], "tool_latency_s": 0.5},
                          "agentgate", {"round_robin": 2.5, "sequential": 4.0}, ("p.png", "t.png"))
    assert text.startswith("## Workflows\n")
    assert "| all at once | round_robin | 30.0 | 3.00× |" in text
    assert "3.00× lower makespan than round_robin (target ≥ 2.5×: met)" in text
    assert "2.00× lower makespan than sequential (target ≥ 4×: not met)" in text
    assert "![Pareto frontier](p.png)" in text
    assert "| all at once | agentgate | 10.0 | 1.00× | 1.0 | 2.0 | 0.10 | 0.20 | 0.25 | 50% | 19/20 |" in text
    assert "19 of 20 predicted calls (95%) hit their prefetched prefix at dispatch (target ≥ 90%: met)" in text
    assert "TTFT after a tool call 0.25 s vs 1.50 s with no_prediction: 6.00× (target ≥ 5×: met)" in text


def test_repeats_report_the_median_run_every_makespan_and_the_engine_work_against_the_router():
    def cell(config, makespan, forward_s):
        return report.CellSummary(config, INF, 4, 0, makespan, 1, 2, 0.1, 0.2, 0.5, 3.0, 1.0, 10, 5, 100,
                                  work={"workers": 2, "forward_s": forward_s, "prefill_tokens": 0,
                                        "prefetch_tokens": 0, "decode_rows": 0, "steps": 0})

    ours = report.median_runs([cell("agentgate", 11.0, 9.0), cell("agentgate", 9.0, 8.0),
                               cell("agentgate", 10.0, 8.5), cell("agentgate", 12.0, 9.5)])
    assert ours.makespan_s == 10.0 and ours.work["forward_s"] == 8.5  # the lower middle of four, whole
    assert ours.makespan_runs == (11.0, 9.0, 10.0, 12.0)  # in the order they ran
    peer = report.median_runs([cell("sglang_router", 13.0, 10.0), cell("sglang_router", 14.0, 9.0),
                               cell("sglang_router", 12.5, 11.0)])
    assert peer.makespan_s == 13.0
    text = report.section([ours, peer], {"command": "x", "when": "today", "machine": "m", "workers": 2, "threads": 1,
                                         "kv_memory_gb": 1.0, "workflows": 4, "examples": ["diamond"],
                                         "tool_latency_s": 0.0}, "agentgate", {"sglang_router": 1.25},
                          ("p.png", "t.png"))
    assert "Each cell ran 4 times, the configurations taking turns" in text
    assert "agentgate @ all at once 11.0, 9.0, 10.0, 12.0; sglang_router @ all at once 13.0, 14.0, 12.5 s." in text
    assert "1.30× lower makespan than sglang_router (target ≥ 1.25×: met)" in text
    assert ("agentgate 8.5 forward-seconds for 100 completion tokens, sglang_router 10.0 for 100 (0.85×; "
            "target ≤ 1: met)") in text


def test_configs_are_data_and_quick_defaults_are_small(tmp_path):
    configs = {c.name: c for c in bench.CONFIGS}
    assert {"agentgate", "no_prediction", "no_pinning", "token_pipelining", "round_robin", "least_load",
            "sequential"} <= set(configs)
    assert all(c.gateway is None or "--policy" in c.gateway for c in bench.CONFIGS)
    # the agent-awareness ablations differ from the full system by their one switch, on the same workers
    for name, switch in (("no_prediction", "--no-prediction"), ("no_pinning", "--no-pinning"),
                         ("token_pipelining", "on"), ("with_priority", "--workflow-priority")):
        assert switch in configs[name].gateway and switch not in configs["agentgate"].gateway
        assert configs[name].worker == configs["agentgate"].worker == bench.SPEC
    # speculation is its own ablation: the same gateway, workers without it
    assert configs["no_speculation"].gateway == configs["agentgate"].gateway
    assert configs["no_speculation"].worker == ()
    # the baselines are what a deployment without agentgate has: each worker's radix cache alone
    for name in ("round_robin", "least_load", "sequential", "kv_aware_radix"):
        assert configs[name].worker == bench.RADIX_ONLY
        # behind a plain router a workflow's calls are like anyone's: no priority above other tenants
        gateway = configs[name].gateway
        assert gateway is None or gateway[gateway.index("--workflow-priority") + 1] == "0"
        assert configs[name].gateway is None or "--no-prediction" in configs[name].gateway
    args = bench.parse_args(["--quick"])
    assert (args.workers, args.threads, args.workflows, args.rates) == (1, 1, 2, [INF])
    assert [c.name for c in args.configs] == ["agentgate", "sequential"]
    assert args.out_dir is None  # a temp dir, never docs/
    full = bench.parse_args([])
    assert full.workers == 2 and full.out_dir == REPO_ROOT / "docs" and len(full.configs) == len(bench.CONFIGS)
    with pytest.raises(SystemExit):
        bench.parse_args(["--configs", "agentgate,warp_drive"])


def test_slowed_tools_keep_their_parameters_for_the_sdk():
    def act(call, question: str = ""):
        return call.node + question

    slow = bench.slowed(act, 0.01)
    assert list(inspect.signature(slow).parameters) == ["call", "question"]
    args, kwargs = bind(slow, ToolCall("wf", "act_1", (), {}, {"question": "?"}))
    assert slow(*args, **kwargs) == "act_1?"


def test_from_json_redraws_plots_and_section_without_running_anything(tmp_path):
    records, summaries = {}, []
    for config, slowdown in (("agentgate", 1.0), ("sequential", 1.5)):
        for rate in (0.5, INF):
            cell = [report.workflow_record(i, "multi_agent", i, 100.0 + i, 110.0 + i * slowdown,
                                           state(chain(100 + i * slowdown)), UPSTREAM, {"http://w:1": "worker 1"})
                    for i in range(3)]
            records[(config, rate)] = cell
            summaries.append(report.summarize(config, rate, cell, workers=2))
    meta = {"command": "scripts/bench_workflows.py --quick", "when": "today", "machine": "m", "workers": 2,
            "threads": 1, "kv_memory_gb": 1.0, "workflows": 3, "examples": ["multi_agent"], "tool_latency_s": 0.0,
            "rates": [0.5, INF], "configs": ["agentgate", "sequential"]}
    path = tmp_path / "bench_workflows.json"
    path.write_text(json.dumps(report.to_json(meta, summaries, records, {})))
    assert bench.main(["--from-json", str(path)]) == 0
    for name in ("pareto.png", "timeline.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    text = (tmp_path / "bench_workflows.md").read_text()
    assert "| 0.5 wf/s | sequential |" in text and "| all at once | agentgate |" in text
    panels = bench.timeline_panels(meta, records)
    labels = {c.name: c.label for c in bench.CONFIGS}
    assert [title for title, _ in panels] == [labels["agentgate"], labels["sequential"]]
    assert panels[0][1].index == panels[1][1].index == 0


@pytest.mark.slow
def test_quick_run_writes_the_table_plots_and_results(tmp_path):
    md = REPO_ROOT / "BENCHMARKS.md"
    before = hashlib.sha256(md.read_bytes()).hexdigest() if md.exists() else None
    proc = subprocess.run([sys.executable, "scripts/bench_workflows.py", "--quick", "--out-dir", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "## Workflows" in proc.stdout and "| all at once | sequential |" in proc.stdout
    for name in ("pareto.png", "timeline.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    results = json.loads((tmp_path / "bench_workflows.json").read_text())
    summaries = {s["config"]: s for s in results["summaries"]}
    assert set(summaries) == {"agentgate", "sequential"}
    for s in summaries.values():
        assert s["workflows"] == 2 and s["failed"] == 0
        assert s["completion_tokens"] > 0 and 0 < s["hit_rate"] < 1 and s["makespan_s"] > 0
        assert 0 < s["ttft_p50_s"] <= s["ttft_p99_s"] < s["makespan_s"]
    cells = {c["config"]: c for c in results["cells"]}
    gateway_workers = {n["worker"] for w in cells["agentgate"]["workflows"] for n in w["nodes"] if n["kind"] == "llm"}
    assert gateway_workers == {"worker 1"}
    # the same workflows, the same greedy prompts, whichever way they were served
    prompts = {c: sorted(n["prompt_tokens"] for w in cells[c]["workflows"] for n in w["nodes"]) for c in cells}
    assert prompts["agentgate"] == prompts["sequential"]
    assert (tmp_path / "bench_workflows.md").read_text().startswith("## Workflows")
    after = hashlib.sha256(md.read_bytes()).hexdigest() if md.exists() else None
    assert before == after, "a quick run must not touch BENCHMARKS.md"


def test_an_agent_run_becomes_a_record_of_its_calls():
    from agentgate.state import AgentRun, CallInfo

    run = AgentRun({"answer": "42"}, (CallInfo("triage", 900, 0, 20, 1.5, 101.0),
                                      CallInfo("billing", 1000, 800, 30, 2.0, 103.0)))
    rec = report.agent_record(3, "agents_sdk", 1, 100.0, 106.0, run)
    assert (rec.status, rec.latency, rec.completion_tokens) == ("finished", 6.0, 50)
    first, second = rec.nodes
    assert (first.node, first.ready, first.started, first.finished, first.after_tool) == \
        ("triage_1", 101.0, 101.0, 102.5, False)
    assert (second.node, second.finished, second.cached_tokens, second.after_tool) == ("billing_2", 105.0, 800, True)
    assert first.first_token is None  # not streamed: in no TTFT
    s = report.summarize("agentgate", INF, [rec], workers=1)
    assert s.hit_rate == pytest.approx(800 / 1900) and s.example_latency == {"agents_sdk": 6.0}
    assert bench.parse_args(["--examples", "react,agents_sdk,react_langgraph"]).examples == (
        "react", "agents_sdk", "react_langgraph")


@pytest.mark.slow
def test_quick_run_drives_the_framework_agents_through_the_gateway_and_against_a_worker(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/bench_workflows.py", "--quick", "--out-dir", str(tmp_path),
                           "--examples", "react_langgraph,agents_sdk"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "bench_workflows.json").read_text())
    for cell in results["cells"]:  # agentgate (the gateway) and sequential (a worker's own chat API)
        assert [w["example"] for w in cell["workflows"]] == ["react_langgraph", "agents_sdk"]
        for w in cell["workflows"]:
            assert w["status"] == "finished", w
            nodes = [n["node"] for n in w["nodes"]]
            if w["example"] == "react_langgraph":  # a required tool call, then final_answer
                assert nodes == ["agent_1", "agent_2"]
            else:  # triage hands off; billing calls a tool, then answers
                assert nodes[:2] == ["triage_1", "billing_2"] and len(nodes) >= 3
            assert all(n["completion_tokens"] > 0 for n in w["nodes"])


def test_background_prompts_are_unrelated_and_about_the_asked_length():
    from common.tokenizer import Tokenizer
    from engine.model.prepare import default_model_dir

    rng = random.Random(3)
    prompts = [bench.background_prompt(i, 800, rng) for i in range(20)]
    assert len({p.splitlines()[0] for p in prompts}) == 20  # each differs from its first line on
    tok = Tokenizer(str(default_model_dir()))
    sizes = [len(tok.encode(p)) for p in prompts]
    assert all(700 <= n <= 900 for n in sizes), sizes
    again = random.Random(3)
    assert [bench.background_prompt(i, 800, again) for i in range(20)] == prompts  # seeded


class _Tenant:
    """A stand-in for AsyncClient.chat: counts calls in flight; every fifth one fails."""

    def __init__(self):
        self.in_flight = self.most = self.calls = 0

    async def chat(self, prompt, **sampling):
        import asyncio

        from agentgate.errors import AgentGateError
        from agentgate.state import ChatResult

        self.calls += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.05)
            if self.calls % 5 == 0:
                raise AgentGateError("overloaded")
            return ChatResult("ok", "stop", {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 2}})
        finally:
            self.in_flight -= 1


def test_background_load_is_bounded_accounts_for_every_call_and_stops():
    import argparse
    import asyncio

    async def drive():
        tenants = [_Tenant(), _Tenant()]
        stop = asyncio.Event()
        args = argparse.Namespace(seed=0, background_rate=400.0, background_tokens=40)
        task = asyncio.create_task(bench.background_load(args, tenants, stop))
        await asyncio.sleep(0.4)
        stop.set()
        return tenants, await asyncio.wait_for(task, 5)

    tenants, stats = asyncio.run(drive())
    assert stats["sent"] == stats["finished"] + stats["failed"] + stats["cancelled"] > 10
    assert stats["failed"] > 0 and stats["prompt_tokens"] == 10 * stats["finished"]
    assert stats["cached_tokens"] == 2 * stats["finished"]
    assert sum(t.most for t in tenants) <= bench.BACKGROUND_INFLIGHT  # 400/s offered, 8 in flight at most
    assert abs(tenants[0].calls - tenants[1].calls) <= 1  # spread over the clients in turn
    assert all(t.in_flight == 0 for t in tenants)  # nothing left running after stop


def test_pressure_section_names_the_tenants_and_compares_with_the_radix_pool(tmp_path, monkeypatch):
    def cell(config, after_tool, background):
        return report.CellSummary(config, 0.1, 4, 0, 50.0, 1, 2, 0.1, 0.2, 0.5, 3.0, 1.0, 10, 5, 100,
                                  after_tool, background=background)

    meta = {"command": "x --background-rate 0.5", "when": "today", "machine": "m", "workers": 2, "threads": 1,
            "kv_memory_gb": 0.1, "workflows": 4, "examples": ["react"], "tool_latency_s": 5.0,
            "worker_args": ["--l2-blocks=0"], "background_rate": 0.5, "background_tokens": 800,
            "background_max_tokens": 16, "background_inflight": 8}
    text = report.section([cell("agentgate", 0.4, {"sent": 30, "finished": 29}),
                           cell("no_prediction", 0.8, {"sent": 31, "finished": 31}),
                           cell("kv_aware_radix", 2.4, {"sent": 30, "finished": 30})],
                          meta, "agentgate", {}, ("p.png", "t.png"), "## Workflows under memory pressure")
    assert text.startswith("## Workflows under memory pressure\n")
    assert "arrive at 0.5/s during every cell" in text and "~800-token prompt, 16 tokens out, at most 8" in text
    assert "agentgate @ 0.1 wf/s 29 of 30" in text and "Every worker also ran with `--l2-blocks=0`" in text
    assert "0.40 s vs 0.80 s with no_prediction: 2.00× (target ≥ 5×: not met)" in text
    assert "0.40 s vs 2.40 s with kv_aware_radix: 6.00× (target ≥ 5×: met)" in text
    # the two sections live side by side in BENCHMARKS.md: writing one leaves the other alone
    from scripts import benchlib

    monkeypatch.setattr(benchlib, "ROOT", tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text("# B\n\n## Workflows under memory pressure\n\nold pressure\n")
    benchlib.update_benchmarks_md("## Workflows", "## Workflows\n\nplain\n")
    benchlib.update_benchmarks_md("## Workflows under memory pressure", text)
    benchlib.update_benchmarks_md("## Workflows", "## Workflows\n\nplain again\n")
    out = (tmp_path / "BENCHMARKS.md").read_text()
    assert out.count("## Workflows\n") == 1 and "plain again" in out and "plain\n" not in out.replace("plain again", "")
    assert out.count("## Workflows under memory pressure\n") == 1 and "old pressure" not in out


def test_step_trace_report_sorts_steps_by_kind_and_calls_by_node(tmp_path):
    from scripts import step_trace_report as trace

    def step(t, prefill=0, prefetch=0, decodes=()):
        return {"ev": "step", "t": t, "dt": 0.1, "prefill": prefill, "prefetch": prefetch, "rows": 1,
                "decodes": [[rid, 100, drafts] for rid, drafts in decodes], "chunks": []}

    events = [{"ev": "arrive", "t": 1.0, "rid": "warm-up", "prompt": 1, "priority": 0, "background": False},
              step(1.5, prefill=40),  # before the cell's start: skipped
              {"ev": "arrive", "t": 2.0, "rid": "wf-ab.plan.1", "prompt": 900, "priority": 0, "background": False},
              {"ev": "arrive", "t": 2.0, "rid": "prefetch-1", "prompt": 800, "priority": -1, "background": True},
              step(2.1, prefill=30), step(2.2, decodes=[("wf-ab.plan.1", 0)]),
              step(2.3, prefetch=64, decodes=[("wf-ab.plan.1", 3)]), step(2.4, prefill=16, decodes=[("x", 0)]),
              step(2.5, prefetch=32)]
    (tmp_path / "agentgate-worker1.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    (tmp_path / "agentgate.start").write_text("1.9")
    s = trace.summarize(trace.load(tmp_path)["agentgate"], start=1.9)
    assert s["steps"] == 5 and s["decode_rows"] == 1 + 4 + 1
    assert {k: v[0] for k, v in s["kinds"].items()} == {"decode": 1, "mixed": 1, "prefill": 1, "prefetch+decode": 1,
                                                        "prefetch": 1}
    assert s["rows_per_decode_step"] == 2.0 and s["arrivals"]["worker1"] == {"plan": 1, "prefetch": 1}
    assert trace.main([str(tmp_path)]) == 0


def test_step_trace_report_tells_steps_alone_from_steps_beside_another_worker():
    from scripts import step_trace_report as trace

    def step(t, dt, decodes=1):
        return {"ev": "step", "t": t, "dt": dt, "prefill": 0, "prefetch": 0, "rows": decodes,
                "decodes": [[f"r{i}", 100, 0] for i in range(decodes)], "chunks": []}

    workers = {"worker1": [step(1.0, 0.1), step(1.2, 0.2, decodes=3), step(2.0, 0.1)],
               # worker2 steps 1.05-1.25: over all of worker1's 1.0-1.2 step, none of its 0.9-1.0 or 1.9-2.0
               "worker2": [step(1.25, 0.2, decodes=2), step(5.0, 0.1)]}
    out = trace.overlap(workers)
    # together: worker1's 1.0-1.2 step (shared 0.2 of 0.2) and worker2's 1.05-1.25 (shared 0.15 of 0.2)
    assert out["together"][:3] == [2, pytest.approx(0.4), 2] and out["together"][4] == 5
    assert out["alone"][:3] == [3, pytest.approx(0.3), 3] and out["alone"][4] == 3
    assert trace.overlap(workers, start=1.5)["together"][0] == 0  # worker1's 2.0 and worker2's 5.0 steps
