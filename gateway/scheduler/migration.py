"""Request migration: a node's call whose worker dies mid-stream continues on another worker from the
tokens it already produced (as Dynamo migrates a request), instead of starting over.

The first attempt asks the worker for token ids in its stream (`return_token_ids`, vLLM's extension of
the chat API, which the embedded worker serves): the prompt's ids in the first chunk and, with each text
delta, the ids whose text is entirely in what was sent so far (the worker holds text back at a possible
stop string or an unfinished character; ids follow their text). `Progress` keeps those ids and their
text. When the stream breaks (a retryable failure after tokens came), the node is retried as a
continuation: SGLang's /generate with input_ids = prompt ids + produced ids, max_new_tokens = what is
left, the node's sampling otherwise unchanged; its output is the produced text plus the continuation's.
Greedy decoding gives exactly the uninterrupted run's tokens (fp32), since the continuation's prefill sees
the same sequence the interrupted decode did. Text the first attempt already sent as token events is not
sent again.

Only calls whose continuation is the same computation migrate: text output, no tools or grammar
(the constraint's state is not carried over), no frequency/presence/repetition penalties (which count
only a call's own output tokens). The others start over on the next worker, as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

from common.workflow.spec import NodeSpec
from gateway.errors import WorkerCallError
from gateway.scheduler.executor import CallResult
from gateway.workers.client import StreamTimeouts, WorkerClient

# Node params under which a continuation is not the same computation (and the penalties, unless neutral).
NOT_MIGRATABLE = ("tools", "response_format", "regex", "ebnf")
# Node params → SGLang sampling_params of the continuation.
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "stop": "stop",
            "stop_token_ids": "stop_token_ids", "ignore_eos": "ignore_eos", "seed": "sampling_seed",
            "skip_special_tokens": "skip_special_tokens", "no_stop_trim": "no_stop_trim",
            "logit_bias": "logit_bias"}


@dataclass
class Progress:
    """What a node's call produced so far that another worker can continue from."""
    prompt_ids: list[int] | None = None
    ids: list[int] = field(default_factory=list)  # produced tokens whose text is all in `text`
    text: str = ""
    emitted: int = 0  # characters of the node's output already sent as token events, over all attempts

    @property
    def resumable(self) -> bool:
        return self.prompt_ids is not None and bool(self.ids)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "Progress | None":
        return cls(**data) if isinstance(data, dict) else None


def migratable(spec: NodeSpec) -> bool:
    return spec.output == "text" and same_computation(spec.params)


def same_computation(params: dict) -> bool:
    """Whether a call with these OpenAI params continued from its produced ids computes what it would have."""
    if any(params.get(k) is not None for k in NOT_MIGRATABLE) or params.get("n") not in (None, 1):
        return False
    return not params.get("frequency_penalty") and not params.get("presence_penalty") and \
        params.get("repetition_penalty") in (None, 1, 1.0) and not params.get("logprobs")


def continuation_body(params: dict, max_tokens: int, progress: Progress, rid: str, priority: int,
                      default_temperature: float = 0.0) -> dict:
    """SGLang /generate continuing a call with OpenAI sampling `params` and `max_tokens` from `progress`.
    `default_temperature`: what the first attempt ran with when params leave it out (0 for workflow nodes,
    executor.chat_body; 1 for a proxied call, OpenAI's default)."""
    sp = {SAMPLING[k]: params[k] for k in SAMPLING if params.get(k) is not None}
    sp.setdefault("temperature", default_temperature)
    sp["max_new_tokens"] = max_tokens - len(progress.ids)
    if params.get("min_tokens"):
        sp["min_new_tokens"] = max(0, params["min_tokens"] - len(progress.ids))
    body = {"input_ids": progress.prompt_ids + progress.ids, "sampling_params": sp, "stream": True, "rid": rid}
    if priority:
        body["priority"] = priority
    return body


class Recorder:
    """Fed the chunks of a first attempt's chat stream: keeps `progress` and counts what was emitted."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.text: list[str] = []

    def on_chunk(self, chunk: dict, delta: str | None, ids: list | None) -> None:
        if self.progress.prompt_ids is None and isinstance(chunk.get("prompt_token_ids"), list):
            self.progress.prompt_ids = list(chunk["prompt_token_ids"])
        if delta:
            self.text.append(delta)
            self.progress.emitted += len(delta)
        if ids:
            self.progress.ids.extend(int(t) for t in ids)
            self.progress.text = "".join(self.text)  # ids come with the delta that completes their text


async def run_continuation(client: WorkerClient, body: dict, progress: Progress,
                           on_delta: Callable[[str], Awaitable[None]], timeouts: StreamTimeouts,
                           incremental: bool) -> CallResult:
    """Stream the continuation; token events carry only text not sent before (by an earlier attempt)."""
    text, meta = "", {}
    async for chunk in client.stream_json("/generate", body, timeouts):
        if not isinstance(chunk, dict) or "error" in chunk:
            err = chunk.get("error") if isinstance(chunk, dict) else chunk
            message = err.get("message", err) if isinstance(err, dict) else err
            raise WorkerCallError(client.url, f"error mid-stream: {message}", retryable=False)
        new = chunk.get("text") or ""
        delta = new if incremental else new[len(text):]
        text = text + delta if incremental else new
        meta = chunk.get("meta_info") or meta
        whole = len(progress.text) + len(text)
        if delta and whole > progress.emitted:
            await on_delta(delta[len(delta) - (whole - progress.emitted):])
            progress.emitted = whole
    reason = meta.get("finish_reason")
    kind = reason.get("type") if isinstance(reason, dict) else reason
    if kind is None:
        raise WorkerCallError(client.url, "the continuation ended before the call finished")
    if kind == "abort":
        raise WorkerCallError(client.url, f"the continuation was aborted: {reason}", retryable=False)
    produced = len(progress.ids) + int(meta.get("completion_tokens") or 0)
    prompt = len(progress.prompt_ids or ())
    usage = {"prompt_tokens": prompt, "completion_tokens": produced, "total_tokens": prompt + produced,
             "prompt_tokens_details": {"cached_tokens": min(prompt, int(meta.get("cached_tokens") or 0))},
             "migrated_tokens": len(progress.ids)}
    return CallResult(progress.text + text, usage, kind)
