"""What a dispatched node holds while it runs, and the one place that gives it back.

A node sent to a worker holds a slot on that worker (`pool.reserve`) and counts
in its workflow's `running`. `NodeCall` takes both at dispatch (which never
awaits) and `release()` gives both back, once however often it is called. The
node's task calls it as soon as it is done with the worker, so a retry or the
node's successors can take the slot at once; the task's done callback
(`Lifecycle.track`) calls it again whatever happened — an exception, a cancel,
even a cancel that arrived before the task first ran, when no `finally` inside
it would have run. So no slot outlives its task.
"""

from __future__ import annotations

from common.workflow.run import WorkflowRun
from gateway.workers.pool import WorkerPool


class NodeCall:
    __slots__ = ("pool", "run", "node", "url", "released")

    def __init__(self, pool: WorkerPool, run: WorkflowRun, node: str, url: str):
        self.pool, self.run, self.node, self.url = pool, run, node, url
        pool.reserve(url)
        run.running += 1
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.run.running -= 1
        self.pool.release(self.url)
