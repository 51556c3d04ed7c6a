"""The one thread that runs an engine's torch work, and the rule for every other thread.

Why one thread: libgomp (torch's OpenMP) keeps a team of worker threads per thread that
has ever run a parallel region with more than one thread, for as long as that thread
lives, and shrinking the count later does not release them. Once the teams' threads
outnumber the cores, libgomp stops spinning between parallel regions and parks its
workers on futexes, so every small op of a decode step pays a wake-up: a decode step ran
about twice as long (BENCHMARKS.md "Design measurements").

So an engine builds its model, measures its matmul plan and runs its loop on one
ComputeThread; any other thread that touches torch (the L3 reader and writer) calls
`single_threaded_torch()` first, so it never grows a team of its own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch


def single_threaded_torch() -> None:
    """For helper threads: their torch ops run on the calling thread alone (no OpenMP team)."""
    torch.set_num_threads(1)


class ComputeThread:
    """A daemon thread that runs the callables given to `run`, one after the other."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def run(self, fn: Callable[..., Any], *args) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, args, fut))
        return fut

    def close(self, timeout: float = 10.0) -> None:
        """Let the thread end once the job it runs returns (the caller makes it return)."""
        self._jobs.put(None)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever waits on the future
                fut.set_exception(exc)
