"""cancel_and_wait: shutdown ends even when a task's cancel is lost."""

from __future__ import annotations

import asyncio

import pytest

from gateway.tasks import cancel_and_wait

pytestmark = pytest.mark.asyncio


async def test_a_task_that_swallows_a_cancel_is_cancelled_again_until_it_ends():
    rounds = []

    async def loop_that_loses_a_cancel():
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if len(rounds) < 2:  # what a 3.11 wait_for racing a completion does: the cancel is gone
                    rounds.append("lost")
                    continue
                raise

    async def crashed():
        raise ValueError("ended before the stop")

    stubborn, failed = asyncio.create_task(loop_that_loses_a_cancel()), asyncio.create_task(crashed())
    await asyncio.sleep(0.02)
    await asyncio.wait_for(cancel_and_wait([stubborn, None, failed], recancel_s=0.05), timeout=5)
    assert stubborn.cancelled() and rounds == ["lost", "lost"]
    assert isinstance(failed.exception(), ValueError)  # left as it ended, nothing raised by the stop
