"""Request bodies of the worker's HTTP API (pydantic, only at this edge), and
their conversion into the engine's frozen SamplingParams.

Field names, defaults and error messages follow SGLang's own server, so SGLang
clients and routers work unchanged.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from common.errors import BadRequestError
from engine.grammar import Constraint
from engine.request import SamplingParams

MAX_N = 16
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20


class GenerateSamplingParams(BaseModel):
    """SGLang's `sampling_params`; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    sampling_seed: int | None = None
    seed: int | None = None
    json_schema: str | dict | None = None
    regex: str | None = None
    ebnf: str | None = None
    stream_interval: int | None = None
    logit_bias: dict[str, float] | None = None
    custom_params: dict | None = None


# One object, or one per prompt; the discriminator keeps pydantic from reporting
# both alternatives' errors for a single bad key.
OneOrManySamplingParams = Annotated[
    Union[Annotated[GenerateSamplingParams, Tag("one")], Annotated[list[GenerateSamplingParams], Tag("many")]],
    Discriminator(lambda v: "many" if isinstance(v, list) else "one"),
]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: OneOrManySamplingParams = Field(default_factory=GenerateSamplingParams)
    rid: str | list[str] | None = None
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    cache_salt: str | None = None
    priority: int | None = None
    input_embeds: Any = None
    image_data: Any = None
    lora_path: Any = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _OpenAICommon(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    rid: str | None = None
    cache_salt: str | None = None
    priority: int | None = None  # SGLang's: higher runs first; none = 0
    agent_hints: dict | None = None  # the gateway's; a worker accepts and ignores it
    response_format: dict | None = None
    regex: str | None = None  # SGLang's output constraints on its OpenAI routes
    ebnf: str | None = None


class CompletionRequest(_OpenAICommon):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None


class ChatCompletionRequest(_OpenAICommon):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict] | None = None
    tool_choice: Any = None
    chat_template_kwargs: dict | None = None
    # vLLM's extension: the prompt's ids in the first chunk, each delta's token ids with it (token_ids.py)
    return_token_ids: bool = False


_UNION_TAGS = ("one", "many")


MAX_PIN_TTL_S = 3600.0


class KVPrefix(BaseModel):
    """A prompt prefix for the /kv/* routes: token ids or text (tokenized as /generate does)."""

    model_config = ConfigDict(extra="forbid")

    input_ids: list[Annotated[int, Field(ge=0)]] | None = None
    text: str | None = None
    cache_salt: str | None = None


class PrefetchRequest(KVPrefix):
    pin_ttl_s: Annotated[float, Field(gt=0, le=MAX_PIN_TTL_S)] | None = None
    priority: int = 0


class PinRequest(KVPrefix):
    ttl_s: Annotated[float, Field(gt=0, le=MAX_PIN_TTL_S)]
    pin_id: str | None = None  # renew this live pin instead of pinning a prefix (give no prefix then)


class UnpinRequest(KVPrefix):
    pin_id: str | None = None


class AbortRequest(BaseModel):
    """SGLang's /abort_request: a rid (every request whose rid starts with it), or abort_all."""

    model_config = ConfigDict(extra="ignore")

    rid: str = ""
    abort_all: bool = False


def parse(model: type[BaseModel], body: Any) -> BaseModel:
    """Validate a JSON body; pydantic's complaints become one clear 400."""
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:8]:
            where = ".".join(str(p) for p in err["loc"] if p not in _UNION_TAGS) or "body"
            problems.append(f"{where}: {err['msg']}")
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise BadRequestError("invalid request: " + "; ".join(problems),
                              param=".".join(str(p) for p in first if p not in _UNION_TAGS) or None) from None


def build_sampling_params(
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float = 0.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    repetition_penalty: float = 1.0,
    min_new_tokens: int = 0,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    ignore_eos: bool = False,
    seed: int | None = None,
    skip_special_tokens: bool = True,
    no_stop_trim: bool = False,
    logit_bias: dict[str, float] | None = None,
    vocab_size: int,
    max_tokens_name: str = "max_new_tokens",
    constraint: Constraint | None = None,
) -> SamplingParams:
    """Check every value (SGLang's messages) and freeze them for the engine."""
    if not math.isfinite(temperature) or temperature < 0:
        raise BadRequestError(f"temperature must be a non-negative finite number, got {temperature}.",
                              param="temperature")
    if not (0 < top_p <= 1) or not math.isfinite(top_p):
        raise BadRequestError(f"top_p must be in (0, 1], got {top_p}.", param="top_p")
    if not (0 <= min_p <= 1):
        raise BadRequestError(f"min_p must be in [0, 1], got {min_p}.", param="min_p")
    if top_k < 1 and top_k != -1:
        raise BadRequestError(f"top_k must be -1 (disable) or at least 1, got {top_k}.", param="top_k")
    if not (-2 <= frequency_penalty <= 2):
        raise BadRequestError(f"frequency_penalty must be in [-2, 2], got {frequency_penalty}.",
                              param="frequency_penalty")
    if not (-2 <= presence_penalty <= 2):
        raise BadRequestError(f"presence_penalty must be in [-2, 2], got {presence_penalty}.",
                              param="presence_penalty")
    if not (0 < repetition_penalty <= 2):
        raise BadRequestError(f"repetition_penalty must be in (0, 2], got {repetition_penalty}.",
                              param="repetition_penalty")
    if max_new_tokens < 0:
        raise BadRequestError(f"{max_tokens_name} must be at least 0, got {max_new_tokens}.", param=max_tokens_name)
    if not (0 <= min_new_tokens <= max_new_tokens):
        raise BadRequestError(f"min_new_tokens must be in [0, max_new_tokens({max_new_tokens})], "
                              f"got {min_new_tokens}.", param="min_new_tokens")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise BadRequestError(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}", param="stop")
    if any(not s for s in stops):
        raise BadRequestError("stop sequences must be non-empty strings", param="stop")
    for t in stop_token_ids or []:
        if not 0 <= t < vocab_size:
            raise BadRequestError(f"stop_token_ids has {t}, outside the vocabulary [0, {vocab_size})",
                                  param="stop_token_ids")
    bias = {}
    for key, value in (logit_bias or {}).items():
        try:
            tok = int(key)
        except ValueError:
            raise BadRequestError(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        if not 0 <= tok < vocab_size:
            raise BadRequestError(f"logit_bias must has keys in [0, {vocab_size - 1}], got {tok}.",
                                  param="logit_bias")
        if not math.isfinite(value) or abs(value) > 100:
            raise BadRequestError(f"logit_bias values must be in [-100, 100], got {value}", param="logit_bias")
        bias[tok] = float(value)
    return SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
        repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens, stop=tuple(stops),
        stop_token_ids=tuple(stop_token_ids or ()), ignore_eos=ignore_eos, seed=seed,
        skip_special_tokens=skip_special_tokens, no_stop_trim=no_stop_trim,
        logit_bias=tuple(sorted(bias.items())), constraint=constraint,
    )


def reject_unsupported(**fields: Any) -> None:
    """Features this worker does not implement get a 400 that says so."""
    for name, value in fields.items():
        if value:
            raise BadRequestError(f"{name} is not supported by the agentgate engine worker", param=name)
