"""engine/launch.server_loop: the event loop the gateway's and workers' HTTP servers run on."""

from __future__ import annotations

import asyncio

import uvloop

from common.launch import server_loop


def test_servers_run_on_uvloop_unless_asyncio_is_asked_for(monkeypatch):
    monkeypatch.delenv("AGENTGATE_EVENT_LOOP", raising=False)
    loop = server_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        loop.close()
    monkeypatch.setenv("AGENTGATE_EVENT_LOOP", "asyncio")
    loop = server_loop()
    try:
        assert not isinstance(loop, uvloop.Loop) and isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()
