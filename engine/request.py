"""Request: frozen sampling parameters plus the mutable state of one generation."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.grammar import Constraint, GrammarState


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: whole vocabulary
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    constraint: "Constraint | None" = None  # grammar the output must match (engine/grammar.py)

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty or self.repetition_penalty != 1.0
                    or self.min_new_tokens or self.logit_bias)

    @property
    def greedy(self) -> bool:
        # SGLang treats temperature below 1e-6 as greedy, and so does top_k == 1.
        return self.temperature < 1e-6 or self.top_k == 1


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class StepOutput:
    """What one step produced for one request; delivered to the request's sink."""

    rid: str
    new_token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: dict | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: list[tuple[float, int, list[tuple[float, int]]]] = field(default_factory=list)
    retractions: int = 0
    spec: dict | None = None  # SGLang's spec_* meta_info fields, when speculation is on
    tier_tokens: dict[str, int] | None = None  # cached prompt tokens by tier (final chunk only)


@dataclass(eq=False)  # identity semantics: requests live in lists and sets
class Request:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[StepOutput], Any] | None = None
    salt: str | None = None
    return_logprob: bool = False
    top_logprobs_num: int = 0
    arrival: float = field(default_factory=time.monotonic)
    background: bool = False  # a prefetch: admitted after everything else, prefilled in small chunks
    priority: int = 0  # SGLang's: higher first; prefetches rank among themselves (engine/batching)

    # -- state, owned by the engine thread --
    status: Status = Status.WAITING
    output_ids: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)  # block table; matched prefix first
    num_computed: int = 0  # tokens whose K/V is in the pool
    prefilled: int = 0  # prompt tokens this request ran through the model itself (not found cached)
    fill_ids: list[int] = field(default_factory=list)  # tokens to prefill (prompt, or all tokens after preemption)
    cached_tokens: int = 0
    tier_tokens: dict[str, int] = field(default_factory=dict)  # prompt tokens copied in from "l2" / "l3"
    staged: list[int] = field(default_factory=list)  # cached blocks locked for it until admission
    finish_reason: dict | None = None
    generator: torch.Generator | None = None
    grammar: GrammarState | None = None  # the matcher of params.constraint, set by Engine.submit
    num_preemptions: int = 0
    first_token_time: float | None = None
    # incremental detokenization
    text: str = ""
    sent_text_len: int = 0
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list = field(default_factory=list)
    # speculative decoding (engine/spec)
    draft: list[int] = field(default_factory=list)  # proposed for this step
    spec_k: int = 0  # draft length to propose next
    spec_verify_ct: int = 0
    spec_proposed: int = 0
    spec_accepted: int = 0
    spec_misses: int = 0  # consecutive verifies that accepted nothing
    spec_ema: float = 0.5  # recent fraction of drafts accepted
    spec_hits: float = 0.0  # decayed counts of draft tokens accepted, and of verifies that rejected one:
    spec_rejects: float = 0.0  # the per-token acceptance estimate behind the draft length (scheduler)
    spec_cooldown: int = 0  # decode steps to wait before proposing again

    def __post_init__(self) -> None:
        if not self.fill_ids:
            self.fill_ids = list(self.prompt_ids)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.fill_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def can_speculate(self) -> bool:
        # penalties/biases depend on every earlier token and logprobs are per plain
        # step: such requests decode one token at a time
        return not (self.params.adjusts_logits or self.return_logprob)
