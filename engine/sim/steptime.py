"""Step-time models: how long one engine step of a given make-up takes on the simulated hardware.

A step is described by `StepWork` (prompt tokens computed, their context, decode rows and their
context). Two models answer it:
- `AicStepModel`: aiconfigurator-core (NVIDIA's per-kernel database measured on real GPUs, SGLang
  tables), compiled once per (model, GPU, TP) and asked once per step (a few microseconds);
- `TableStepModel`: a measured table (`agentgate profile` writes one from the embedded engine).
"""

from __future__ import annotations

import bisect
import json
import threading
from dataclasses import dataclass
from pathlib import Path

TABLE_FORMAT = "agentgate-step-table/1"


@dataclass(frozen=True)
class StepWork:
    prefill_tokens: int = 0  # prompt tokens computed this step (all chunks)
    prefill_context: int = 0  # the longest chunk's context at its end (prefix + chunk)
    prefill_prefix: int = 0  # that chunk's cached prefix
    decode_rows: int = 0  # decode and verify query rows
    decode_context: int = 0  # mean context of the decoding sequences


class AicStepModel:
    """Step times from aiconfigurator-core's compiled engine (SGLang backend)."""

    _handles: dict[tuple[str, str, int], object] = {}
    _lock = threading.Lock()

    def __init__(self, model: str, gpu: str, tp: int = 1):
        self.name = f"aiconfigurator-core {_aic_version()} {model} on {gpu} tp{tp} (sglang)"
        key = (model, gpu, tp)
        with self._lock:  # one compile per process: a sim-cluster's workers share it
            if key not in self._handles:
                from aiconfigurator_core.sdk.engine import EngineHandle

                self._handles[key] = EngineHandle.compile(model, gpu, "sglang", tp_size=tp)
        self.handle = self._handles[key]

    def seconds(self, w: StepWork) -> float:
        if w.prefill_tokens > 0:
            # one mixed step: the prompt chunk's attention over its context, the decode rows' over theirs
            osl = max(2, 2 * (w.decode_context - w.prefill_context)) if w.decode_rows else 2
            ms = self.handle.mixed_step_latency(w.prefill_tokens, w.decode_rows, max(w.prefill_context, 1), osl,
                                                w.prefill_prefix)
        elif w.decode_rows > 0:
            ms = self.handle.decode_step_latency(w.decode_rows, max(w.decode_context, 1), 2)
        else:
            return 0.0
        return ms / 1000.0


def _aic_version() -> str:
    from importlib.metadata import version

    return version("aiconfigurator-core")


class _Grid:
    """seconds on a grid of (x, context or prefix), bilinear inside, linear in x beyond its ends, clamped in
    the other axis."""

    def __init__(self, xs: list[float], ctx: list[float], seconds: list[list[float]], what: str):
        if sorted(xs) != xs or sorted(ctx) != ctx or len(xs) < 2 or len(ctx) < 1:
            raise ValueError(f"timing table {what}: axes must be ascending, at least 2 x 1 points")
        if len(seconds) != len(xs) or any(len(row) != len(ctx) for row in seconds):
            raise ValueError(f"timing table {what}: seconds must be {len(xs)} rows of {len(ctx)}")
        self.xs, self.ctx, self.s = xs, ctx, seconds

    def at(self, x: float, c: float) -> float:
        c = min(max(c, self.ctx[0]), self.ctx[-1])
        j = min(max(bisect.bisect_right(self.ctx, c) - 1, 0), max(len(self.ctx) - 2, 0))
        i = min(max(bisect.bisect_right(self.xs, x) - 1, 0), len(self.xs) - 2)
        fx = (x - self.xs[i]) / (self.xs[i + 1] - self.xs[i])

        def along_x(col: int) -> float:
            return self.s[i][col] + fx * (self.s[i + 1][col] - self.s[i][col])

        if len(self.ctx) == 1:
            return along_x(0)
        fc = (c - self.ctx[j]) / (self.ctx[j + 1] - self.ctx[j])
        return along_x(j) + fc * (along_x(j + 1) - along_x(j))


class TableStepModel:
    """Step times from a measured table (JSON, format agentgate-step-table/1):
    {"prefill": {"tokens": [...], "prefix": [...], "seconds": [[...]]},    a step of one prompt chunk after a cached prefix
     "decode": {"rows": [...], "context": [...], "seconds": [[...]]},      a step of decode rows only
     "shared_seconds": s}                                                  what a mixed step pays once
    A mixed step costs prefill + decode - shared."""

    def __init__(self, table: dict, name: str = "table"):
        if table.get("format") != TABLE_FORMAT:
            raise ValueError(f"timing table {name}: format must be {TABLE_FORMAT!r}")
        try:
            p, d = table["prefill"], table["decode"]
            self.prefill = _Grid([float(v) for v in p["tokens"]], [float(v) for v in p["prefix"]], p["seconds"],
                                 "prefill")
            self.decode = _Grid([float(v) for v in d["rows"]], [float(v) for v in d["context"]], d["seconds"],
                                "decode")
            self.shared = float(table.get("shared_seconds", 0.0))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"timing table {name}: missing or malformed {exc}") from None
        self.name = f"table {name}" + (f" ({table['source']})" if table.get("source") else "")
        self.table = table

    @classmethod
    def load(cls, path: str | Path) -> "TableStepModel":
        try:
            table = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--timing-table {path}: {exc}") from None
        return cls(table, str(path))

    def seconds(self, w: StepWork) -> float:
        total, parts = 0.0, 0
        if w.prefill_tokens > 0:
            total += self.prefill.at(w.prefill_tokens, w.prefill_prefix)
            parts += 1
        if w.decode_rows > 0:
            total += self.decode.at(w.decode_rows, w.decode_context)
            parts += 1
        if parts == 2:
            total -= self.shared
        return max(total, 0.0)
