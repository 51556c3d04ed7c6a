"""The SDK's errors: one class per gateway status, built from its OpenAI-shaped JSON.

The gateway answers every failure as {"error": {"message", "type", "param", "code"}}
(422 adds "problems", 503 a Retry-After header). `from_response` turns that into
the matching class below, so callers catch what they mean (`except NotFound`)
instead of comparing status codes. Local failures (the builder's validation, a
gateway that cannot be reached, a tool that raised) use the same base class.
"""

from __future__ import annotations


class AgentGateError(Exception):
    """Base of every SDK error. `status` is the HTTP status (None when nothing was answered)."""

    status: int | None = None

    def __init__(self, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | int | None = None, status: int | None = None, problems: list[str] | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        self.problems = list(problems or [])
        self.body = body


class BadRequest(AgentGateError):
    status = 400


class NotFound(AgentGateError):
    status = 404


class Conflict(AgentGateError):
    status = 409


class PayloadTooLarge(AgentGateError):
    status = 413


class ValidationFailed(AgentGateError):
    """422: the workflow (or body) is invalid; `problems` lists every problem found."""

    status = 422

    def __str__(self) -> str:
        return self.message if not self.problems else f"{self.message} ({len(self.problems)} problem(s))"


class Unavailable(AgentGateError):
    """503 after the retries ran out: no worker could take the call. `retry_after` in seconds."""

    status = 503

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Unauthorized(AgentGateError):
    """401: no API key, or one the gateway does not know (give api_key= or $AGENTGATE_API_KEY)."""

    status = 401


class RateLimited(Unavailable):
    """429 after the retries ran out: the tenant's concurrency, token rate or stream bound. `retry_after` in s."""

    status = 429


class ServerError(AgentGateError):
    """Any other 5xx."""

    status = 500


class GatewayUnreachable(AgentGateError):
    """No HTTP answer at all (connection refused or reset, timeout) after the retries ran out."""


class ToolFailed(AgentGateError):
    """A Python callable behind an external node raised; the workflow was cancelled. `__cause__` holds why."""

    def __init__(self, message: str, *, node: str, workflow_id: str):
        super().__init__(message)
        self.node = node
        self.workflow_id = workflow_id


class WorkflowFailed(AgentGateError):
    """`run(..., raise_on_failure=True)` saw the workflow end failed or cancelled; `state` is its final state."""

    def __init__(self, message: str, *, state):
        super().__init__(message)
        self.state = state


BY_STATUS: dict[int, type[AgentGateError]] = {400: BadRequest, 401: Unauthorized, 404: NotFound, 409: Conflict,
                                              413: PayloadTooLarge, 422: ValidationFailed, 429: RateLimited,
                                              503: Unavailable}


def from_response(status: int, body, retry_after: float | None = None) -> AgentGateError:
    """The typed error for a non-2xx answer; `body` is the parsed JSON (or text) the gateway sent."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"message": body if isinstance(body, str) and body else f"HTTP {status}"}
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else AgentGateError)
    kwargs = dict(type=err.get("type"), param=err.get("param"), code=err.get("code"), status=status,
                  problems=err.get("problems"), body=body if isinstance(body, dict) else None)
    message = str(err.get("message") or f"HTTP {status}")
    if cls is Unavailable:
        return Unavailable(message, retry_after=retry_after, **kwargs)
    return cls(message, **kwargs)
