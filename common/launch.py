"""Serving and starting servers: the event loop our HTTP servers run on, and waiting for a
server process we started to answer GET /health."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.request


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Return once url/health answers 200; raise if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s")


def server_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for an HTTP server: uvloop's where it is installed (a dependency on Linux; it
    cuts the gateway's per-request overhead, see BENCHMARKS.md "Gateway"), else asyncio's own.
    AGENTGATE_EVENT_LOOP=asyncio forces asyncio's."""
    if os.environ.get("AGENTGATE_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
