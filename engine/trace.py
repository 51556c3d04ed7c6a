"""An optional record of what the engine did, step by step (`--step-trace FILE`): JSON lines.

Two kinds of line, both stamped with the wall clock (`t`, seconds since the epoch), so traces of
several workers and a client's own log line up:

- `{"ev": "arrive", "rid", "prompt", "priority", "background"}`: a request reached the engine loop;
- `{"ev": "step", "dt", "prefill", "prefetch", "rows", "decodes": [[rid, context, drafts], ...],
  "chunks": [[rid, tokens, start], ...]}`: one forward step, how long it took and what it ran.

This is how a batch's make-up is compared between two ways of driving the same workers (for
example the gateway against a client-driven router): same tokens, but how many steps, how many
rows per step, and who arrived when. Off by default; writing a line costs microseconds.
"""

from __future__ import annotations

import threading
import time

import orjson


class StepTrace:
    def __init__(self, path: str):
        self._file = open(path, "ab", buffering=1 << 16)
        self._lock = threading.Lock()

    def arrive(self, rid: str, prompt: int, priority: int, background: bool) -> None:
        self._write({"ev": "arrive", "t": time.time(), "rid": rid, "prompt": prompt, "priority": priority,
                     "background": background})

    @staticmethod
    def describe(batch) -> dict:
        """A scheduled step's make-up, taken before it runs (running it moves the counts it reads)."""
        return {"rows": batch.forward.num_tokens,
                "decodes": [[r.rid, r.num_computed, len(r.draft)] for r in batch.decodes],
                "chunks": [[r.rid, n, r.num_computed] for r, n in batch.chunks]}

    def step(self, dt: float, work: dict, make_up: dict) -> None:
        self._write({"ev": "step", "t": time.time(), "dt": round(dt, 6), "prefill": work["prefill"],
                     "prefetch": work["prefetch"], **make_up})

    def _write(self, record: dict) -> None:
        with self._lock:
            self._file.write(orjson.dumps(record) + b"\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()
