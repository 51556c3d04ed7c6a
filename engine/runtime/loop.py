"""The engine thread's loop: drain the inbox (new requests, aborts, L3 loads done,
calls to run between steps), schedule a step, run it through the model runner,
turn its logits into tokens, and account for it. Nothing here ever kills the
worker: a failing step or scheduler fails what it held and the loop goes on."""

from __future__ import annotations

import logging
import queue
import time
from typing import TYPE_CHECKING

from engine.request import Status

if TYPE_CHECKING:
    from engine.runtime.engine import Engine

log = logging.getLogger("agentgate.engine")


class StepLoop:
    def __init__(self, engine: "Engine"):
        self.engine = engine

    def run(self) -> None:
        e = self.engine
        while not e.stopping:
            self.drain_inbox()
            try:
                batch = e.batcher.schedule()
            except Exception as exc:  # a scheduler bug must not kill the worker: fail what is in flight
                log.exception("scheduling failed")
                for req in list(e.batcher.running) + e.batcher.queued():
                    e.outputs.finish(req, {"type": "abort", "message": f"engine error: {exc}"})
                continue
            for req in e.batcher.take_resident():
                e.outputs.finish(req, {"type": "length", "length": 0})
            if batch is None:
                e.wake.wait(0.05)
                e.wake.clear()
                continue
            self.step(batch)

    def step(self, batch) -> None:
        e = self.engine
        t0 = time.monotonic()
        produced = 0
        work = {"prefill": sum(n for r, n in batch.chunks if not r.background),
                "prefetch": sum(n for r, n in batch.chunks if r.background),
                "decode_rows": sum(1 + len(r.draft) for r in batch.decodes)}  # before process() moves drafts
        make_up = e.trace.describe(batch) if e.trace is not None else None
        try:
            produced = e.outputs.process(batch, e.forward(batch, t0))
        except Exception as exc:  # one bad step must not take the worker down
            log.exception("engine step failed")
            for req in set(batch.requests) | {r for r, _ in batch.chunks} | set(batch.decodes):
                if not req.finished:
                    e.outputs.finish(req, {"type": "abort", "message": f"engine error: {exc}"})
        dt = time.monotonic() - t0
        e.step_cost.observe(work["decode_rows"], work["prefill"] + work["prefetch"], dt)
        e.stats.record_step(produced, dt, **work)
        if e.trace is not None:
            e.trace.step(dt, work, make_up)

    def drain_inbox(self) -> None:
        e = self.engine
        e.pins.expire()
        while True:
            try:
                kind, payload = e.inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                payload.status = Status.WAITING
                if e.trace is not None:
                    e.trace.arrive(payload.rid, len(payload.prompt_ids), payload.priority, payload.background)
                with e.stats.lock:
                    e.stats.num_requests += 1
                    e.stats.prompt_tokens += len(payload.prompt_ids)
                e.staging.stage(payload)
            elif kind == "loaded":
                e.staging.resume(*payload)
            elif kind == "abort":
                rid, abort_all, prefix = payload
                targets = list(e.batcher.running) + e.batcher.queued() + e.staging.requests()
                for req in targets:
                    if abort_all or req.rid == rid or (prefix and rid and req.rid.startswith(rid)):
                        e.outputs.finish(req, {"type": "abort", "message": "Aborted by request"})
            elif kind == "call":
                fn, fut = payload
                if not fut.set_running_or_notify_cancel():  # its caller gave up (client hung up)
                    continue
                try:
                    fut.set_result(fn())
                except Exception as exc:
                    fut.set_exception(exc)
