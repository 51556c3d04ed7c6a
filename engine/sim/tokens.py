"""Deterministic generated tokens: a request's output is a function of its prompt and seed only.

An agent's output quotes its context a lot (code being edited, tool results, JSON re-emitted), so
the stream alternates runs copied from the prompt with fresh runs drawn from the vocabulary; the
real n-gram speculator then finds (or misses) drafts in these tokens exactly as it would in a
model's, and its acceptance follows. The sim never stops on EOS: a call runs to max_tokens (or a
stop string / stop token), so lengths come from the workload.
"""

from __future__ import annotations

import hashlib
import random

COPY_FRACTION = 0.35  # of runs, copied from the prompt
COPY_RUN = (8, 48)  # tokens per copied run
FRESH_RUN = (4, 24)  # tokens per fresh run
FIRST_ORDINARY_ID = 256  # fresh tokens skip the low ids, where tokenizers keep special tokens


def request_seed(prompt_ids: list[int], seed: int | None, engine_seed: int) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((engine_seed, seed)).encode())
    h.update(b"".join(t.to_bytes(4, "little") for t in prompt_ids))
    return int.from_bytes(h.digest(), "little")


class TokenStream:
    """The tokens a request generates, produced on demand and kept (verification reads ahead)."""

    __slots__ = ("_rng", "_prompt", "_vocab", "_banned", "tokens")

    def __init__(self, prompt_ids: list[int], seed: int, vocab_size: int, banned: set[int]):
        self._rng = random.Random(seed)
        self._prompt = prompt_ids
        self._vocab = vocab_size
        self._banned = banned
        self.tokens: list[int] = []

    def take(self, start: int, n: int) -> list[int]:
        while len(self.tokens) < start + n:
            self._run()
        return self.tokens[start:start + n]

    def _run(self) -> None:
        rng = self._rng
        if len(self._prompt) > COPY_RUN[0] and rng.random() < COPY_FRACTION:
            n = rng.randint(*COPY_RUN)
            at = rng.randrange(0, max(1, len(self._prompt) - n))
            run = [t for t in self._prompt[at:at + n] if t not in self._banned]
        else:
            run = []
        if not run:
            lo = min(FIRST_ORDINARY_ID, self._vocab - 1)
            run = [rng.randrange(lo, self._vocab) for _ in range(rng.randint(*FRESH_RUN))]
            run = [t for t in run if t not in self._banned] or [lo]
        self.tokens.extend(run)
