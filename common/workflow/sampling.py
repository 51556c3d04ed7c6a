"""What the gateway checks in a call before forwarding it to a worker.

A body a worker cannot read must be refused here, with a 400 naming the field:
forwarded, it would fail on the worker (often as a 5xx, which counts against
the worker's breaker: four bad requests could take every worker out) and the
gateway's own prompt hashing would trip on it first. So the fields the gateway
and workers read get their types and ranges checked (the ranges SGLang and the
embedded engine enforce); fields it does not know pass through untouched, for
the worker to judge. The body is forwarded as the client sent it, never as
parsed here.

`Sampling` is also a workflow node's sampling fields (api/schemas.py), so a node
with a bad value is refused at submission, not after it reached a worker.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.errors import BadRequestError

MAX_STOP = 16
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
TokenId = Annotated[int, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]


class Sampling(BaseModel):
    """OpenAI/SGLang sampling fields of a chat or completion call (and of a workflow node)."""
    model_config = ConfigDict(extra="allow")
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    top_k: int | None = None
    min_p: Probability | None = None
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None = None
    stop_token_ids: list[TokenId] | None = None
    seed: int | None = None
    ignore_eos: bool | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=2, allow_inf_nan=False)] | None = None
    min_tokens: Count | None = None

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int | None) -> int | None:
        if v is not None and v < 1 and v != -1:
            raise ValueError("top_k must be -1 (no limit) or at least 1")
        return v


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None


class _Call(Sampling):
    model: str | None = None
    max_tokens: Count | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    stream: bool | None = None
    stream_options: dict | None = None
    user: str | None = None
    rid: str | None = None
    cache_salt: str | None = None
    priority: int | None = None
    logit_bias: dict[str, float] | None = None


class ChatCall(_Call):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Count | None = None
    logprobs: bool | None = None
    top_logprobs: Count | None = None
    tools: list[dict] | None = None
    chat_template_kwargs: dict | None = None
    response_format: dict | None = None


class CompletionCall(_Call):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    logprobs: Count | None = None
    echo: bool | None = None


class GenerateSampling(Sampling):
    max_new_tokens: Count | None = None
    min_new_tokens: Count | None = None


class GenerateCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str | list[str] | None = None
    input_ids: list[TokenId] | list[list[TokenId]] | None = None
    sampling_params: GenerateSampling | list[GenerateSampling] | None = None
    stream: bool | None = None
    rid: str | list[str] | None = None
    cache_salt: str | None = None
    priority: int | None = None


CALLS: dict[str, type[BaseModel]] = {"/v1/chat/completions": ChatCall, "/v1/completions": CompletionCall,
                                     "/generate": GenerateCall}


def check_call(path: str, body: dict[str, Any]) -> None:
    """Raise a 400 naming the first bad field of a call to `path` (body without agent_hints)."""
    try:
        CALLS[path].model_validate(body)
    except ValidationError as exc:
        raise bad_request(exc) from None
    if path == "/generate" and body.get("text") is None and body.get("input_ids") is None:
        raise BadRequestError("a /generate call needs text or input_ids", param="text")


def bad_request(exc: ValidationError) -> BadRequestError:
    errors = exc.errors()
    problems = [f"{_where(e['loc'])}: {e['msg']}" for e in errors[:8]]
    return BadRequestError("invalid request: " + "; ".join(problems), param=_where(errors[0]["loc"]))


def _where(loc: tuple) -> str:
    """pydantic's location of an error, without the names it gives union members ("str", "list[...]")."""
    return ".".join(str(p) for p in loc if isinstance(p, int) or "[" not in p and p not in _UNION_TAGS) or "body"


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "function-after", "GenerateSampling", "ContentPart"}
