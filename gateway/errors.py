"""Gateway-specific errors, on top of the one hierarchy in common/errors.py."""

from __future__ import annotations

from common.errors import AgentGateError, ServiceUnavailableError


class PayloadTooLargeError(AgentGateError):
    status = 413
    type = "invalid_request_error"


class RequestTimeoutError(AgentGateError):
    """The client did not send its request in time; the connection is closed after the reply."""
    status = 408
    type = "invalid_request_error"

    def __init__(self, message: str):
        super().__init__(message, code="request_timeout")


class NoWorkerError(ServiceUnavailableError):
    """No healthy worker can take the call now; clients retry after `retry_after` seconds."""

    def __init__(self, message: str = "no healthy worker is available", *, retry_after: int = 1):
        super().__init__(message, code="no_worker")
        self.retry_after = retry_after


class StateUnavailableError(ServiceUnavailableError):
    """Redis did not answer: within a request, or for longer than the scheduler waits out (redis_retry_s)."""

    def __init__(self, message: str = "the state store (Redis) is unavailable", *, retry_after: int = 1):
        super().__init__(message, code="state_unavailable")
        self.retry_after = retry_after


class WorkerCallError(Exception):
    """A call to one worker failed. `retryable` calls go to another worker (connection
    reset, 5xx, a timeout, worker gone); the others (a 4xx: the request itself is bad) do not.
    `timed_out`: the worker took too long (no reply, no first token, a stall between tokens)."""

    def __init__(self, url: str, message: str, *, status: int | None = None, retryable: bool = True,
                 body: bytes | None = None, timed_out: bool = False):
        super().__init__(f"{url}: {message}")
        self.url = url
        self.status = status
        self.retryable = retryable
        self.body = body
        self.timed_out = timed_out

    @property
    def kind(self) -> str:
        """What failed, for the breaker and the metrics: "timeout" | "connection" | "status"."""
        return "timeout" if self.timed_out else "connection" if self.status is None else "status"
