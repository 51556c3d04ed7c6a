"""Speculative decoding: the contract.

A Speculator looks at a request's tokens so far and proposes up to k draft
tokens that the model would likely produce next. The scheduler feeds
[last token] + drafts to the model as one verify segment (one forward pass for
all of them, in the same batch as everything else), and `verify.py` keeps the
longest prefix the model agrees with plus one token of its own — so a step
always yields at least one token and, in greedy fp32, exactly the tokens a
plain run yields.

A speculator must be cheap (it runs on the engine thread every decode step)
and deterministic; it never sees the pool or the model.
"""

from __future__ import annotations

from typing import Protocol


class Speculator(Protocol):
    name: str

    def propose(self, token_ids: list[int], k: int) -> list[int]:
        """Up to k draft tokens to follow token_ids; [] when it has no good guess."""
