"""Admission: what the gateway takes on before it forwards anything.

Per tenant (the anonymous one without keys): at most `tenant_concurrency` calls in flight and
`tenant_max_workflows` workflows running on this replica, and a token rate of `tenant_tokens_per_min`
(a bucket a minute deep; a call costs its max_tokens plus its prompt at ~4 characters a token) —
past either, a 429 with Retry-After. Over all tenants: `max_inflight` proxied calls at once; more wait
in a FIFO queue of at most `max_queue` for `queue_timeout_s`, and a full queue or a wait that ran out
is a 503 with Retry-After. SSE followers: at most `max_sse` in all and `tenant_max_sse` per tenant
(429). 0 turns a bound off. The tenant's concurrency and token rate hold across every replica sharing
the app's Redis (gateway/admission_shared.py); while Redis does not answer, and for everything else
(workflows running, the global bound, SSE), counts are this replica's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from common.errors import AgentGateError, ServiceUnavailableError
from gateway.admission_shared import SharedLimits

CHARS_PER_TOKEN = 4


class TooManyRequestsError(AgentGateError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int, code: str = "rate_limited"):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class OverloadedError(ServiceUnavailableError):
    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, code="overloaded")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limits:
    tenant_concurrency: int = 0
    tenant_tokens_per_min: int = 0
    tenant_max_workflows: int = 0
    max_inflight: int = 0
    max_queue: int = 0
    queue_timeout_s: float = 30.0
    max_sse: int = 0
    tenant_max_sse: int = 0


class TokenBucket:
    def __init__(self, per_min: int):
        self.capacity, self.rate = float(per_min), per_min / 60.0
        self.level, self.at = float(per_min), time.monotonic()

    def take(self, cost: float) -> float:
        """0 when `cost` was taken; else the seconds until it could be."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        cost = min(cost, self.capacity)  # a call bigger than the bucket passes once it is full
        if self.level >= cost:
            self.level -= cost
            return 0.0
        return (cost - self.level) / self.rate


def output_budget(body: dict) -> int:
    """A call's most output tokens, in whichever form it came (OpenAI's or SGLang's); 0 when not given."""
    params = body.get("sampling_params") if isinstance(body.get("sampling_params"), dict) else {}
    for value in (body.get("max_completion_tokens"), body.get("max_tokens"), params.get("max_new_tokens")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def estimate_tokens(body: dict, default_max_tokens: int) -> int:
    """A call's cost for the token rate: the tokens it may generate plus its prompt's (~4 chars each)."""
    prompt = body.get("messages") or body.get("prompt") or body.get("text") or body.get("input_ids") or ""
    size = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], int) else \
        len(str(prompt)) // CHARS_PER_TOKEN
    return (output_budget(body) or default_max_tokens) + size


def workflow_tokens(spec) -> int:
    """A workflow's cost for the token rate: each LLM node's max_tokens plus its prompt template's size."""
    return sum(n.max_tokens + sum(len(c) for _, c in n.messages) // CHARS_PER_TOKEN
               for n in spec.nodes if n.kind == "llm")


class Admission:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.inflight = 0
        self.queue: deque[asyncio.Future] = deque()
        self.tenant_calls: dict[str, int] = {}
        self.buckets: dict[str, TokenBucket] = {}
        self.workflows: dict[str, str] = {}  # workflow id → tenant, while it runs here
        self.sse = 0
        self.tenant_sse: dict[str, int] = {}
        self.shared: SharedLimits | None = None  # set once the app has Redis (app.py)

    # -- per tenant --------------------------------------------------------------------------------------
    async def charge(self, tenant: str | None, tokens: int) -> None:
        per_min = self.limits.tenant_tokens_per_min
        if not per_min:
            return
        wait = await self.shared.take(tenant or "", per_min, tokens) if self.shared is not None else None
        if wait is None:  # no shared bucket, or Redis does not answer: this replica's own
            wait = self.buckets.setdefault(tenant or "", TokenBucket(per_min)).take(tokens)
        if wait:
            raise TooManyRequestsError(f"tenant token rate exceeded ({per_min} tokens/min); this call needs "
                                       f"~{tokens}", retry_after=max(1, math.ceil(wait)), code="token_rate")

    async def admit_workflow(self, tenant: str | None, tokens: int, running: set | dict) -> None:
        """Check a workflow submission (before it is created); `running`: the ids still running here."""
        cap = self.limits.tenant_max_workflows
        if cap:
            self.workflows = {w: t for w, t in self.workflows.items() if w in running}
            mine = sum(t == (tenant or "") for t in self.workflows.values())
            if mine >= cap:
                raise TooManyRequestsError(f"the tenant has {mine} workflows running (limit {cap})",
                                           retry_after=1, code="too_many_workflows")
        await self.charge(tenant, tokens)

    def started_workflow(self, wf_id: str, tenant: str | None) -> None:
        if self.limits.tenant_max_workflows:
            self.workflows[wf_id] = tenant or ""

    @asynccontextmanager
    async def call(self, tenant: str | None, tokens: int):
        """One proxied call's place: the tenant's bounds (429), then a global slot (queued; 503)."""
        key, cap = tenant or "", self.limits.tenant_concurrency
        place = await self.shared.enter(key, cap) if cap and self.shared is not None else None
        if place is False or place is None and cap and self.tenant_calls.get(key, 0) >= cap:
            raise TooManyRequestsError(f"the tenant has {cap} calls in flight (its limit)", retry_after=1,
                                       code="tenant_concurrency")
        self.tenant_calls[key] = self.tenant_calls.get(key, 0) + 1
        try:
            await self.charge(tenant, tokens)
            await self._acquire()
            try:
                yield
            finally:
                self._release()
        finally:
            if place:
                await self.shared.leave(key, place)
            self.tenant_calls[key] -= 1
            if not self.tenant_calls[key]:
                del self.tenant_calls[key]

    # -- the global bound ----------------------------------------------------------------------------------
    async def _acquire(self) -> None:
        cap = self.limits.max_inflight
        if not cap or self.inflight < cap and not self.queue:
            self.inflight += 1
            return
        if len(self.queue) >= self.limits.max_queue:
            raise OverloadedError(f"the gateway is at capacity ({cap} calls in flight, {len(self.queue)} queued)",
                                  retry_after=1)
        fut = asyncio.get_running_loop().create_future()
        self.queue.append(fut)
        try:
            done, _ = await asyncio.wait({fut}, timeout=self.limits.queue_timeout_s)
        except asyncio.CancelledError:
            self._abandon(fut)
            raise
        if not done:
            self._abandon(fut)
            raise OverloadedError(f"no capacity freed up within {self.limits.queue_timeout_s:g} s",
                                  retry_after=max(1, math.ceil(self.limits.queue_timeout_s / 4)))

    def _abandon(self, fut: asyncio.Future) -> None:
        if fut.done():  # the slot was handed over as the wait ended: give it on
            self._release()
        else:
            fut.cancel()
            self.queue.remove(fut)

    def _release(self) -> None:
        while self.queue:  # hand the slot straight to the first waiter (inflight stays)
            fut = self.queue.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.inflight -= 1

    # -- SSE followers ---------------------------------------------------------------------------------------
    @contextmanager
    def follower(self, tenant: str | None):
        key, lim = tenant or "", self.limits
        if lim.max_sse and self.sse >= lim.max_sse:
            raise TooManyRequestsError(f"{self.sse} event streams are open (the gateway's limit)", retry_after=1,
                                       code="too_many_streams")
        if lim.tenant_max_sse and self.tenant_sse.get(key, 0) >= lim.tenant_max_sse:
            raise TooManyRequestsError(f"the tenant has {lim.tenant_max_sse} event streams open (its limit)",
                                       retry_after=1, code="too_many_streams")
        self.sse += 1
        self.tenant_sse[key] = self.tenant_sse.get(key, 0) + 1
        try:
            yield
        finally:
            self.sse -= 1
            self.tenant_sse[key] -= 1
            if not self.tenant_sse[key]:
                del self.tenant_sse[key]
