"""The worker pool: who is healthy, how loaded, and slots for concurrent calls.

Workers come from --worker-urls and from the Redis registry (a set of URLs that
workers or operators add to). A background loop probes every worker each
`health_interval_s`: /health, then /get_load. A breaker (breaker.py) takes a
failing worker out; a passing probe puts it back. What counts against a
worker is its own fault: a refused or broken connection (opens the breaker at
once), a timeout or a 5xx (`breaker_failures` in a row). A 4xx never does: the
request was bad, and the gateway validates requests so that a client's
malformed body never reaches a worker to be blamed on it. Slots: the gateway
keeps at most `capacity` calls open on a worker, counting what the worker
reports as running there (other clients' load included). `changed` wakes
whoever waits for a slot or for a worker to come back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp

from gateway.config import DEFAULT_WORKER_SLOTS, GatewayConfig
from gateway.errors import WorkerCallError
from gateway.workers.view import WorkerView
from gateway.workers.breaker import CircuitBreaker
from gateway.workers.client import StreamTimeouts, WorkerClient

log = logging.getLogger("agentgate.gateway")
# Streamed calls' deadlines when the configuration leaves them out, by worker kind (/get_server_info
# "backend"): the embedded CPU engine prefills slowly and shares its cores with every call in its batch;
# any other (SGLang on an accelerator) answers within seconds unless something is stuck.
STREAM_TIMEOUTS = {"agentgate-engine": StreamTimeouts(first_token_s=180.0, inter_token_s=60.0),
                   None: StreamTimeouts(first_token_s=60.0, inter_token_s=30.0)}


@dataclass
class WorkerState:
    client: WorkerClient
    breaker: CircuitBreaker
    capacity: int
    in_flight: int = 0
    load: dict = field(default_factory=dict)
    model_info: dict = field(default_factory=dict)
    server_info: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def healthy(self) -> bool:
        return self.breaker.opened_at is None  # the breaker is closed (breaker.allows_calls), read as data

    def busy(self) -> int:
        return max(self.in_flight, self.load.get("num_reqs", 0))

    def view(self) -> WorkerView:
        return WorkerView(url=self.url, in_flight=self.in_flight, num_reqs=self.load.get("num_reqs", 0),
                          num_waiting=self.load.get("num_waiting_reqs", 0),
                          step_s=self.load.get("step_s", 0.0), token_s=self.load.get("token_s", 0.0),
                          row_s=self.load.get("row_s"))


class WorkerPool:
    def __init__(self, config: GatewayConfig, session: aiohttp.ClientSession):
        self.config = config
        self.session = session
        self.workers: dict[str, WorkerState] = {}
        self._changed: asyncio.Future | None = None  # resolved (and replaced) by notify()
        self.on_removed = []  # callbacks(url), e.g. the routing policy forgetting the worker's prefixes

    # -- membership ----------------------------------------------------------------------------
    def add(self, url: str) -> WorkerState:
        url = url.rstrip("/")
        if url not in self.workers:
            client = WorkerClient(url, self.session, self.config.request_timeout_s, self.config.worker_api_key)
            breaker = CircuitBreaker(self.config.breaker_failures, self.config.breaker_cooldown_s)
            breaker.record_failure(hard=True)  # out until its first probe passes
            breaker.opened_at -= self.config.breaker_cooldown_s  # ...which may run at once
            self.workers[url] = WorkerState(client, breaker, self.config.worker_concurrency or DEFAULT_WORKER_SLOTS)
        return self.workers[url]

    def remove(self, url: str) -> None:
        if self.workers.pop(url.rstrip("/"), None) is not None:
            for callback in self.on_removed:
                callback(url)
            self.notify()

    def sync(self, urls: Iterable[str]) -> None:
        for url in urls:
            self.add(url)

    # -- health --------------------------------------------------------------------------------
    async def probe(self, w: WorkerState) -> None:
        """/health decides health; /get_load and the info endpoints only refresh what we know."""
        if not w.breaker.may_probe():
            return
        was_healthy = w.healthy
        if await w.client.health():
            w.breaker.record_success()
        else:
            w.breaker.record_failure(hard=True)
        if w.healthy:
            try:
                if not w.model_info:
                    w.model_info = await w.client.get_json("/get_model_info")
                    w.server_info = await w.client.get_json("/get_server_info")
                    limit = w.server_info.get("max_running_requests")
                    if isinstance(limit, int) and limit > 0:
                        w.capacity = min(self.config.worker_concurrency or limit, limit)
                w.load = await w.client.get_load()
            except WorkerCallError as exc:
                log.info("worker %s is up but its info/load did not come: %s", w.url, exc)
        if w.healthy != was_healthy:
            log.log(logging.INFO if w.healthy else logging.WARNING, "worker %s is now %s", w.url,
                    "healthy" if w.healthy else "out (unhealthy)")
        self.notify()  # health or load changed: slots may have freed

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(w) for w in list(self.workers.values())))

    def stream_timeouts(self, w: WorkerState) -> StreamTimeouts:
        default = STREAM_TIMEOUTS.get(w.server_info.get("backend"), STREAM_TIMEOUTS[None])
        first, inter = self.config.first_token_timeout_s, self.config.inter_token_timeout_s
        return StreamTimeouts(default.first_token_s if first is None else first,
                              default.inter_token_s if inter is None else inter)

    def streams_token_ids(self, w: WorkerState) -> bool:
        """Whether request migration may ask `w` for token ids in its chat stream (the embedded engine's)."""
        return self.config.request_migration and w.server_info.get("backend") == "agentgate-engine"

    @staticmethod
    def incremental(w: WorkerState) -> bool:
        """Whether `w`'s /generate stream sends each chunk's new text only (else the text so far)."""
        return bool(w.server_info.get("incremental_streaming_output"))

    def record_failure(self, url: str, exc: WorkerCallError) -> None:
        """A call failed by the worker's fault (a retryable WorkerCallError; never a 4xx)."""
        w = self.workers.get(url)
        if w is None or not exc.retryable:
            return
        w.breaker.record_failure(hard=exc.kind == "connection")
        if not w.healthy:
            log.warning("worker %s taken out after: %s", url, exc)
            self.notify()

    # -- slots ---------------------------------------------------------------------------------
    def healthy(self) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.healthy]

    def available(self, exclude: Iterable[str] = ()) -> list[WorkerView]:
        excluded = set(exclude)
        return [w.view() for w in self.healthy() if w.url not in excluded and w.busy() < w.capacity]

    def reserve(self, url: str) -> WorkerState:
        w = self.workers[url]
        w.in_flight += 1
        return w

    def release(self, url: str) -> None:
        w = self.workers.get(url)
        if w is not None:
            w.in_flight = max(w.in_flight - 1, 0)
            # Our finished call no longer counts in the worker's last reported load either.
            if w.load.get("num_reqs", 0) > 0:
                w.load["num_reqs"] -= 1
        self.notify()

    def notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    async def wait_changed(self, timeout: float | None = None) -> None:
        """Until the next notify() (a slot freed, a worker came or went) or `timeout`.
        Callers check, then wait, with no await in between, so no wake-up is lost."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._changed), timeout)
        except asyncio.TimeoutError:
            pass

    def model_dir(self) -> str | None:
        for w in self.workers.values():
            path = w.model_info.get("tokenizer_path") or w.model_info.get("model_path")
            if path:
                return path
        return None
