"""The routing contract.

A policy gets one `RouteRequest` (what the call's prompt is, as chained block
hashes of its tokens) and the candidate workers (`WorkerView`s: healthy, with a
free slot) and returns the URL of the one that should serve it. `choose` is
synchronous and cheap: it runs on the event loop for every call. After the call
is sent, the router tells the policy (`on_routed`) so that policies with memory
(kv_aware's record of what it sent where) can learn. A policy never performs I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.workers.view import WorkerView


@dataclass(frozen=True)
class RouteRequest:
    prompt_tokens: int
    block_hashes: tuple[int, ...] = ()
    block_size: int = 16
    max_tokens: int = 0  # the call's output budget, when known (0: unknown)


class RoutingPolicy(ABC):
    name: str = "base"
    # Whether choose() reads req.block_hashes. Callers skip tokenizing and hashing the prompt
    # (about 0.5 ms per 150-token prompt) when it does not, or when there is only one worker to pick.
    uses_prefix: bool = False

    @classmethod
    def from_config(cls, config=None) -> "RoutingPolicy":
        """This policy with the settings it reads from a GatewayConfig (None: its defaults)."""
        return cls()

    @abstractmethod
    def choose(self, req: RouteRequest, workers: Sequence[WorkerView]) -> str:
        """URL of the worker for `req`; `workers` is never empty."""

    def route(self, req: RouteRequest, workers: Sequence[WorkerView], prefer: str | None = None,
              slack: int = 0) -> str:
        """The one route decision of a call: the policy's choice, unless `prefer` (a worker where the call's
        prefix was fetched ahead of it) is among `workers` and carries at most `slack` more requests; the
        policy learns where the call went."""
        url = self.choose(req, workers)
        if prefer is not None and prefer != url:
            views = {w.url: w for w in workers}
            mine = views.get(prefer)
            if mine is not None and mine.load <= views[url].load + slack:
                url = prefer
        self.on_routed(req, url)
        return url

    def on_routed(self, req: RouteRequest, url: str) -> None:
        """The call for `req` was sent to `url`."""

    def on_removed(self, url: str) -> None:
        """`url` left the pool (its cache is gone or unknown)."""
