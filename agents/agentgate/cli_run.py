"""`agentgate run FILE.py|FILE.json`: submit a workflow, show each node's progress live, then
its outputs and prefix-cache stats.

A .json file is the REST body of POST /v1/workflows. A .py file defines `workflow`
(a Workflow, or a dict) or `build()` returning one, and optionally `tools`
({node: callable}) for external nodes the workflow does not carry itself.

A .py file may instead define `run_agent(client, *, quick, inputs)`: an agent that drives
its own graph (a LangGraph graph, say) and calls the gateway's chat API itself. It gets a
`Client` and returns an `AgentRun` (agents/agentgate/state.py); its outputs and per-call cache stats
are shown the same way.

`--quick` passes quick=True to `build()` / `run_agent()`: the example agents
(agents/agentgate/examples/) then make fewer and shorter calls, for smoke tests.
"""

from __future__ import annotations

import argparse
import inspect
import runpy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from agentgate.client import Client
from agentgate.errors import AgentGateError
from agentgate.events import Event, NodeFinished, NodeRetry, NodeStarted, Token
from agentgate.state import AgentRun, WorkflowState


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .py file defining `workflow` or `build()`, or a .json workflow body")
    p.add_argument("--gateway", default=None, help="gateway URL (default $AGENTGATE_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=None, help="gateway API key (default $AGENTGATE_API_KEY)")
    p.add_argument("--input", action="append", default=[], metavar="KEY=VALUE", help="set a workflow input")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request / longest event silence")
    p.add_argument("--quick", action="store_true", help="pass quick=True to the file's build() or run_agent() "
                                                        "(fewer, shorter calls)")
    p.set_defaults(func=cmd_run)


@dataclass(frozen=True)
class Loaded:
    """What a file gives `agentgate run`: a workflow (+ tools) to submit, or an agent to call."""

    workflow: Any = None
    tools: dict = field(default_factory=dict)
    agent: Callable | None = None  # run_agent(client, *, quick, inputs) -> AgentRun


def load(path: Path, *, quick: bool = False) -> Loaded:
    """The workflow and tools, or the client-driven agent, of a .json or .py file."""
    if path.suffix == ".json":
        if quick:
            raise SystemExit("--quick applies to .py files (build(quick=...)), not to a .json workflow")
        return Loaded(orjson.loads(path.read_bytes()))
    ns = runpy.run_path(str(path), run_name="__agentgate_run__")
    if callable(ns.get("run_agent")):
        return Loaded(agent=ns["run_agent"])
    if callable(ns.get("build")):
        build = ns["build"]
        if quick and "quick" not in inspect.signature(build).parameters:
            raise SystemExit(f"{path}: build() takes no `quick` parameter, so --quick means nothing to it")
        workflow = build(quick=True) if quick else build()
    elif quick:
        raise SystemExit(f"{path}: --quick needs a build(quick=...) function, not a `workflow` value")
    else:
        workflow = ns.get("workflow")
    if workflow is None:
        raise SystemExit(f"{path} defines neither `workflow`, `build()` nor `run_agent()`")
    return Loaded(workflow, dict(ns.get("tools") or {}))


def parse_inputs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--input wants KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


@dataclass
class Row:
    status: str = "pending"
    tokens: int = 0
    started: float | None = None
    ttft_s: float | None = None
    worker: str = ""


class Progress:
    """Per-node rows updated from the event stream; `table()` renders them."""

    def __init__(self, node_ids: list[str]):
        self.rows = {n: Row() for n in node_ids}

    def on_event(self, event: Event) -> None:
        row = self.rows.setdefault(event.node, Row()) if event.node else None
        if isinstance(event, NodeStarted):
            row.status = "waiting (tool)" if event.external else "running"
            row.started, row.worker = time.monotonic(), event.worker or ""
        elif isinstance(event, Token):
            if row.ttft_s is None and row.started is not None:
                row.ttft_s = time.monotonic() - row.started
            row.tokens += 1
        elif isinstance(event, NodeRetry):
            row.status = "retrying"
        elif isinstance(event, NodeFinished):
            row.status = event.status
            if event.usage:
                row.tokens = event.usage.get("completion_tokens", row.tokens)

    def table(self, title: str = "") -> Table:
        t = Table(title=title)
        for col in ("node", "status", "tokens", "ttft"):
            t.add_column(col, justify="right" if col in ("tokens", "ttft") else "left")
        for node, r in self.rows.items():
            t.add_row(node, r.status, str(r.tokens or ""), f"{r.ttft_s * 1000:.0f} ms" if r.ttft_s else "")
        return t


def summary(state: WorkflowState) -> Group:
    outputs = Table(title="outputs", show_lines=True)
    outputs.add_column("node")
    outputs.add_column("output", overflow="fold")
    for node, text in state.outputs.items():
        outputs.add_row(node, text if isinstance(text, str) else orjson.dumps(text).decode())
    cache = Table(title=f"prefix cache: {state.cache.cached_tokens}/{state.cache.prompt_tokens} prompt tokens "
                        f"cached ({state.cache.hit_rate:.0%})")
    for col in ("node", "status", "prompt", "cached", "completion", "ttft", "worker"):
        cache.add_column(col, justify="left" if col in ("node", "status", "worker") else "right")
    for n in state.nodes.values():
        cache.add_row(n.id, n.status, str(n.prompt_tokens), str(n.cached_tokens), str(n.completion_tokens),
                      f"{n.ttft_s * 1000:.0f} ms" if n.ttft_s is not None else "", n.worker or "")
    return Group(outputs, cache)


def agent_summary(run: AgentRun) -> Group:
    outputs = Table(title="outputs", show_lines=True)
    outputs.add_column("name")
    outputs.add_column("output", overflow="fold")
    for name, text in run.outputs.items():
        outputs.add_row(name, text)
    rate = run.cached_tokens / run.prompt_tokens if run.prompt_tokens else 0.0
    calls = Table(title=f"prefix cache: {run.cached_tokens}/{run.prompt_tokens} prompt tokens cached ({rate:.0%})")
    for col in ("call", "node", "prompt", "cached", "completion", "time"):
        calls.add_column(col, justify="left" if col == "node" else "right")
    for i, c in enumerate(run.calls, 1):
        calls.add_row(str(i), c.node, str(c.prompt_tokens), str(c.cached_tokens), str(c.completion_tokens),
                      f"{c.duration_s * 1000:.0f} ms" if c.duration_s is not None else "")
    return Group(outputs, calls)


def run_client_agent(agent: Callable, args: argparse.Namespace, url: str | None, console: Console) -> int:
    try:
        with Client(url, timeout=args.timeout, api_key=args.api_key) as client, console.status("agent running"):
            run = agent(client, quick=args.quick, inputs=parse_inputs(args.input))
    except AgentGateError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(agent_summary(run))
    console.print(f"agent: [green]finished[/green] ({len(run.calls)} calls)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import os

    console = Console()
    loaded = load(Path(args.file), quick=args.quick)
    url = args.gateway or os.environ.get("AGENTGATE_URL")
    if loaded.agent is not None:
        return run_client_agent(loaded.agent, args, url, console)
    workflow, tools = loaded.workflow, loaded.tools
    payload = workflow.payload() if hasattr(workflow, "payload") else workflow
    progress = Progress([n["id"] for n in payload.get("nodes", [])])
    try:
        with Client(url, timeout=args.timeout, api_key=args.api_key) as client, \
                Live(progress.table(), console=console, refresh_per_second=8, transient=False) as live:
            def on_event(event: Event) -> None:
                progress.on_event(event)
                live.update(progress.table(f"workflow {event.data.get('workflow', '')}".strip()))

            state = client.run(workflow, tools=tools, inputs=parse_inputs(args.input), on_event=on_event)
    except AgentGateError as exc:
        console.print(f"[red]error:[/red] {exc}")
        for problem in exc.problems:
            console.print(f"  - {problem}")
        return 2
    console.print(summary(state))
    colour = "green" if state.status == "finished" else "red"
    console.print(f"workflow {state.id}: [{colour}]{state.status}[/{colour}]" + (f" ({state.error})" if state.error
                                                                              else ""))
    return 0 if state.status == "finished" else 1
