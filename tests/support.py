"""Helpers the tests share: driving an in-process Engine from the test thread,
and starting / calling a real worker process. Fixtures live in conftest.py."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# what a child process needs to import engine, gateway and the SDK (`agentgate`, in agents/) from this checkout
CHILD_PYTHONPATH = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "agents")])

# Every in-process engine of the suite uses these, so two engines compared
# token for token differ only in what a test changes. The matmul backend is
# pinned: MatmulPlan.probe picks per machine by timing, and two engines whose
# probes disagree would round differently.
ENGINE_DEFAULTS = dict(dtype="float32", threads=2, kv_memory_gb=0.25, matmul_backend="numpy")
WORKER_START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 180


# -- in-process engine --------------------------------------------------------------------------------
class Outcome(NamedTuple):
    """Everything one finished request delivered to its sink."""

    rid: str
    output_ids: list[int]
    text: str
    finish_reason: dict
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: list
    steps: list  # every StepOutput, in order


class RequestWatcher:
    """A request's sink: collects StepOutputs from the engine thread and lets
    the test thread wait for the first one or the last one."""

    def __init__(self, rid: str):
        self.rid = rid
        self.steps: list = []
        self.started = threading.Event()
        self.done = threading.Event()

    def __call__(self, out) -> None:
        self.steps.append(out)
        self.started.set()
        if out.finished:
            self.done.set()

    def wait(self, timeout: float = REQUEST_TIMEOUT_S) -> Outcome:
        assert self.done.wait(timeout), f"request {self.rid} did not finish within {timeout}s"
        last = self.steps[-1]
        return Outcome(
            rid=self.rid,
            output_ids=[t for s in self.steps for t in s.new_token_ids],
            text="".join(s.text_delta for s in self.steps),
            finish_reason=last.finish_reason,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            cached_tokens=last.cached_tokens,
            logprobs=[lp for s in self.steps for lp in s.logprobs],
            steps=list(self.steps),
        )


_rids = itertools.count()


def submit(engine, prompt_ids: list[int], params, *, rid: str | None = None, **request_kwargs) -> RequestWatcher:
    """Submit one request to an in-process engine; returns its watcher."""
    from engine.request import Request

    rid = rid or f"test-{next(_rids)}"
    watcher = RequestWatcher(rid)
    engine.submit(Request(rid=rid, prompt_ids=list(prompt_ids), params=params, sink=watcher, **request_kwargs))
    return watcher


def generate(engine, prompts: list[list[int]], params, **request_kwargs) -> list[Outcome]:
    """Submit every prompt before waiting for any (so they share batches), then
    return their outcomes in prompt order."""
    watchers = [submit(engine, p, params, **request_kwargs) for p in prompts]
    return [w.wait() for w in watchers]


def greedy(max_new_tokens: int, **kwargs):
    from engine.request import SamplingParams

    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, **kwargs)


def engine_state(engine) -> tuple[bool, dict]:
    """(has work, kv.usage()) read consistently in the engine thread."""
    return engine.call(lambda: (engine.batcher.has_work(), engine.kv.usage())).result(timeout=60)


def wait_idle(engine, timeout: float = 60.0) -> dict:
    """Wait until the engine has no request left; returns its kv.usage() then."""
    deadline = time.monotonic() + timeout
    while True:
        busy, usage = engine_state(engine)
        if not busy:
            return usage
        assert time.monotonic() < deadline, f"engine still busy after {timeout}s: {usage}"
        time.sleep(0.05)


# -- a real worker process ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class WorkerProcess(NamedTuple):
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def start_worker(model_dir: Path, log_dir: Path, *extra_args: str, threads: int | None = 2,
                 env: dict | None = None) -> WorkerProcess:
    """Launch `python -m engine.worker.main` on a free port and wait for /health. threads=None passes no
    --threads (the worker picks its share of the host); `env` replaces the process environment."""
    port = free_port()
    log_path = log_dir / f"worker-{port}.log"
    cmd = [sys.executable, "-m", "engine.worker.main", "--port", str(port), "--model-path", str(model_dir),
           "--dtype", "float32", "--kv-memory-gb", "0.25", *(["--threads", str(threads)] if threads else []),
           *extra_args]
    if "--l3" not in extra_args:  # never the user's cache dir
        cmd += ["--l3", f"dir:{log_dir / 'l3'}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    worker = WorkerProcess(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while not _healthy(worker.url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(worker)
            pytest.fail(f"worker on port {port} did not become healthy (exit code {proc.returncode}):\n"
                        f"{worker.log_tail()}")
        time.sleep(0.25)
    return worker


def stop_worker(worker: WorkerProcess) -> None:
    if worker.proc.poll() is None:
        worker.proc.terminate()
        try:
            worker.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait(timeout=15)


def http_json(method: str, url: str, body=None, *, raw: bytes | None = None, timeout: float = REQUEST_TIMEOUT_S,
              headers: dict | None = None):
    """(status, parsed JSON body or text) of one HTTP call; 4xx/5xx do not raise."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")


def record_shared_prefix_reads(monkeypatch, min_blocks: int) -> list[int]:
    """Lower the engine's shared-prefix threshold to min_blocks and record, per step it builds,
    how many decoding sequences read a prefix through the shared path."""
    import engine.model.batch as batch
    import engine.batching.batch as step_batch

    counts: list[int] = []
    real = step_batch.build_short_group

    def spy(seqs, block_size, share=True):
        group = real(seqs, block_size, share)
        counts.append(sum(p.end - p.start for p in group.shared))
        return group

    monkeypatch.setattr(batch, "MIN_SHARED_BLOCKS", min_blocks)
    monkeypatch.setattr(step_batch, "build_short_group", spy)
    return counts
