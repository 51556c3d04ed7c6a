"""The one error hierarchy. Every error carries its HTTP status; servers turn it
into OpenAI-shaped JSON: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations


class AgentGateError(Exception):
    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_json(self) -> dict:
        return error_body(self.message, self.type, self.status, param=self.param, code=self.code)


class BadRequestError(AgentGateError):
    status = 400
    type = "invalid_request_error"


class ContextLengthError(BadRequestError):
    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param, code="context_length_exceeded")


class AuthenticationError(AgentGateError):
    """A missing or unknown API key (OpenAI's 401 shape, code invalid_api_key)."""
    status = 401
    type = "invalid_request_error"

    def __init__(self, message: str = "missing or invalid API key: send it as 'Authorization: Bearer <key>'"):
        super().__init__(message, code="invalid_api_key")


class PermissionDeniedError(AgentGateError):
    status = 403
    type = "permission_error"


class NotFoundError(AgentGateError):
    status = 404
    type = "not_found_error"


class ConflictError(AgentGateError):
    status = 409
    type = "conflict_error"


class UnprocessableError(AgentGateError):
    status = 422
    type = "invalid_request_error"


class ServiceUnavailableError(AgentGateError):
    status = 503
    type = "service_unavailable"


def error_body(message: str, type_: str, status: int, *, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code if code is not None else status}}


class ValidationProblems(UnprocessableError):
    """A 422 that lists every problem found, not just the first."""

    def __init__(self, problems: list[str], *, param: str | None = None):
        super().__init__("invalid workflow: " + "; ".join(problems), param=param, code="invalid_workflow")
        self.problems = list(problems)

    def to_json(self) -> dict:
        body = super().to_json()
        body["error"]["problems"] = self.problems
        return body
