"""A redis-server the tests may stop, restart and pause: the gateway's outage tests.

Unlike the session's server (nothing saved), this one is common/redis_server.py's
durable kind: it keeps an append-only file fsynced on every write, so a restart on the same port
and directory comes back with every key the gateway had written, as a
production Redis with AOF on would. `pause()`/`resume()` send SIGSTOP/SIGCONT:
the port stays open and connections hang, as under a stalled Redis.
"""

from __future__ import annotations

import os
import signal

from common.redis_server import RedisServer


class ChaosRedis(RedisServer):
    def __init__(self):
        super().__init__(durable=True)

    def kill(self) -> None:
        """Stop at once (SIGKILL): what was fsynced to the AOF survives, as after a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()  # a paused server cannot act on SIGTERM
        super().stop()
