"""Stopping background tasks so that shutdown always ends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

RECANCEL_S = 1.0


async def cancel_and_wait(tasks: Iterable[asyncio.Task | None], *, recancel_s: float = RECANCEL_S) -> None:
    """Cancel the tasks and wait until every one has ended.

    A cancel can be lost: Python 3.11's asyncio.wait_for (redis-py sends each command through one) returns
    the result of an operation that completed as the cancel arrived and drops the cancel, so a loop task
    carries on into its next round. A task still running `recancel_s` after its cancel is cancelled again.
    Exceptions the tasks ended with are retrieved (they were logged where they happened, if anywhere).
    """
    tasks = [t for t in tasks if t is not None]
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=recancel_s)
    for task in tasks:
        if not task.cancelled():
            task.exception()
