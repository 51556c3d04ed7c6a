"""Count the hops of one workflow node's round trip through the gateway's code (issue: "the same workflow-node
round trip, followed through the code").

How it counts. The gateway runs in this process, on a real Redis and a stand-in worker
(scripts/standin_worker.py), and one workflow of one LLM node is submitted with POST /v1/workflows.
From just before that request until the workflow is finished, `sys.setprofile` records every Python
function call (not coroutine resumptions: a frame seen before is skipped) whose code lives in the
repository's gateway/, common/ or engine/ folders (the node answers `--tokens` tokens, 1 by default), on the asyncio tasks of that request and of what it
starts (the periodic loops — health probes, leases, janitor, KV index, awareness tick — are left out).
A hop is a call whose file differs from the previous recorded call's file; a re-entry is a hop into a
file the path already left once. It prints the totals, the files by entries, and the path itself
with consecutive calls in one file collapsed, for docs/architecture.md.

    .venv/bin/python scripts/trace_hops.py [--root DIR]   # --root: the tree to trace (a git archive)
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKGROUND = ("gateway-health", "gateway-leases", "gateway-janitor", "kvindex-consumer", "awareness-tick",
              "gateway-control", "gateway-journal")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tracer:
    def __init__(self, root: Path):
        self.folders = tuple(str(root / d) + "/" for d in ("gateway", "common", "engine"))
        self.root = str(root) + "/"
        self.calls: list[tuple[str, str]] = []
        self._seen: dict[int, object] = {}  # frames already entered (kept alive so ids stay unique)

    def __call__(self, frame, event, arg) -> None:
        if event != "call":
            return
        path = frame.f_code.co_filename
        if not path.startswith(self.folders):
            return
        if id(frame) in self._seen:
            return  # a coroutine resuming, not a call
        self._seen[id(frame)] = frame
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        if task is not None and task.get_name().startswith(BACKGROUND):
            return
        self.calls.append((path.removeprefix(self.root), frame.f_code.co_qualname))


def summarize(calls: list[tuple[str, str]]) -> dict:
    path: list[tuple[str, list[str]]] = []
    for file, fn in calls:
        if path and path[-1][0] == file:
            if fn not in path[-1][1]:
                path[-1][1].append(fn)
        else:
            path.append((file, [fn]))
    entries = Counter(file for file, _ in path)
    left: set[str] = set()
    reentries = 0
    for i, (file, _) in enumerate(path):
        if file in left:
            reentries += 1
        if i:
            left.add(path[i - 1][0])
    return {"hops": len(path) - 1, "files": len(entries), "reentries": reentries, "entries": entries,
            "path": path, "calls": len(calls)}


async def run(root: Path, tokens: int) -> dict:
    sys.path.insert(0, str(root))
    from aiohttp import ClientSession, web

    try:
        from common.redis_server import RedisServer
    except ImportError:  # a tree from before common/
        from engine.redis_server import RedisServer
    from gateway.app import create_app
    from gateway.config import GatewayConfig
    from gateway.keys import SCHEDULER

    redis = RedisServer().start()
    wport = free_port()
    worker = subprocess.Popen([sys.executable, "-m", "scripts.standin_worker", "--port", str(wport), "--tokens", str(tokens),
                               "--token-delay", "0"], cwd=ROOT)
    try:
        wurl = f"http://127.0.0.1:{wport}"
        async with ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(wurl + "/health") as r:
                        if r.status == 200:
                            break
                except OSError:
                    await asyncio.sleep(0.05)
            gport = free_port()
            config = GatewayConfig(worker_urls=(wurl,), redis_url=redis.url, key_prefix=f"hops{gport}")
            app = create_app(config)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", gport).start()
            body = {"nodes": [{"id": "a", "type": "llm", "max_tokens": tokens,
                               "messages": [{"role": "user", "content": "Say hello."}]}]}
            async with session.post(f"http://127.0.0.1:{gport}/v1/workflows", json=body) as r:  # warm-up
                answer = await r.json()
                if r.status != 202:
                    raise SystemExit(f"the gateway refused the workflow: {r.status} {answer}")
                wf = answer["id"]
            while app[SCHEDULER].runs.get(wf) is not None and app[SCHEDULER].runs[wf].status == "running":
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            tracer = Tracer(root)
            sys.setprofile(tracer)
            try:
                async with session.post(f"http://127.0.0.1:{gport}/v1/workflows", json=body) as r:
                    wf = (await r.json())["id"]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    run_ = app[SCHEDULER].runs.get(wf)
                    if run_ is None or run_.status != "running":
                        break
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.1)  # the finish's own writes
            finally:
                sys.setprofile(None)
            await runner.cleanup()
        return summarize(tracer.calls)
    finally:
        worker.terminate()
        worker.wait(timeout=10)
        redis.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT), help="the repository tree whose gateway is traced")
    p.add_argument("--path", action="store_true", help="print the collapsed path")
    p.add_argument("--tokens", type=int, default=1,
                   help="the node's output tokens (1: the streaming loop is walked once, so the count is the path's)")
    args = p.parse_args()
    out = asyncio.run(run(Path(args.root).resolve(), args.tokens))
    print(f"hops {out['hops']} among {out['files']} files; re-entries {out['reentries']}; calls {out['calls']}")
    print("entries per file:", ", ".join(f"{f} {n}" for f, n in out["entries"].most_common(12)))
    if args.path:
        for i, (file, fns) in enumerate(out["path"]):
            print(f"{i:3d} {file}: {', '.join(fns[:6])}{' …' if len(fns) > 6 else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
