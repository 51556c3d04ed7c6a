"""`agentgate run FILE.py|FILE.json`: submit a workflow, show each node's progress live, then
its outputs and prefix-cache stats.

A .json file is the REST body of POST /v1/workflows. A .py file defines `workflow`
(a Workflow, or a dict) or `build()` returning one, and optionally `tools`
({node: callable}) for external nodes the workflow does not carry itself.
"""

from __future__ import annotations

import argparse
import runpy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from agents.client import Client
from agents.errors import AgentGateError
from agents.events import Event, NodeFinished, NodeRetry, NodeStarted, Token
from agents.state import WorkflowState


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .py file defining `workflow` or `build()`, or a .json workflow body")
    p.add_argument("--gateway", default=None, help="gateway URL (default $AGENTGATE_URL or http://127.0.0.1:8000)")
    p.add_argument("--input", action="append", default=[], metavar="KEY=VALUE", help="set a workflow input")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request / longest event silence")
    p.set_defaults(func=cmd_run)


def load(path: Path) -> tuple[Any, dict]:
    """(workflow, tools) from a .json or .py file."""
    if path.suffix == ".json":
        return orjson.loads(path.read_bytes()), {}
    ns = runpy.run_path(str(path), run_name="__agentgate_run__")
    workflow = ns["build"]() if callable(ns.get("build")) else ns.get("workflow")
    if workflow is None:
        raise SystemExit(f"{path} defines neither `workflow` nor `build()`")
    return workflow, dict(ns.get("tools") or {})


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


def cmd_run(args: argparse.Namespace) -> int:
    import os

    console = Console()
    workflow, tools = load(Path(args.file))
    url = args.gateway or os.environ.get("AGENTGATE_URL")
    payload = workflow.payload() if hasattr(workflow, "payload") else workflow
    progress = Progress([n["id"] for n in payload.get("nodes", [])])
    try:
        with Client(url, timeout=args.timeout) as client, \
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
