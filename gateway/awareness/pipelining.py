"""Token-level pipelining: while an upstream node streams, the prompts of the nodes that
quote it grow, and their prefix is prefilled on their chosen worker block by block.

A `StreamTap` keeps, per workflow, the text each running node has streamed so
far. Every `blocks` blocks of new output (≈4 characters a token) it asks
for a plan pass, which renders the downstream prompts with that partial text
(planner/prefix.py cuts them where no continuation can change the tokens) and
hands the longer prefix to the prefetcher; the prefetcher sends it once it holds
`blocks` more full blocks than the last one sent, one request in flight per node. When the upstream finishes,
only the last partial block and what follows it remain to prefill.

Whether it pays depends on the machine: the increments are prefill work that
shares the CPU with the upstream's own decode. `TOKEN_PIPELINING_DEFAULT` is what
scripts/bench_pipelining.py measured here (BENCHMARKS.md "Token pipelining");
a workflow sets `options.token_pipelining` to choose for itself, and the
gateway's `--token-pipelining on|off|auto` (`--no-token-pipelining` = off)
overrides the default, or every workflow when off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Measured on the 2-core CPU (BENCHMARKS.md "Token pipelining"): the downstream's TTFT drops 2.6-4x, but
# the increments take the cores the upstream's decode needs, and the makespan lands between 0.93x and
# 1.07x with the machine's load. It does not reliably pay here, so workflows opt in.
TOKEN_PIPELINING_DEFAULT = False
CHARS_PER_TOKEN = 4


def pipelining_for(mode: str, options: dict | None) -> bool:
    """mode: the gateway's "on" | "off" | "auto"; options: the workflow's."""
    if mode == "off":
        return False
    asked = (options or {}).get("token_pipelining")
    if asked is not None:
        return bool(asked)
    return mode == "on" or (mode == "auto" and TOKEN_PIPELINING_DEFAULT)


@dataclass
class StreamTap:
    block_size: int
    blocks: int = 2  # GatewayConfig.token_pipelining_blocks
    texts: dict[str, list[str]] = field(default_factory=dict)  # running node → text streamed so far
    chars: dict[str, int] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)  # chars at the last plan pass it asked for

    def add(self, node: str, text: str) -> bool:
        """Record streamed text; True when enough arrived since the last plan pass to plan again."""
        self.texts.setdefault(node, []).append(text)
        chars = self.chars[node] = self.chars.get(node, 0) + len(text)
        if chars - self.planned.get(node, 0) < self.blocks * self.block_size * CHARS_PER_TOKEN:
            return False
        self.planned[node] = chars
        return True

    def reset(self, node: str) -> None:
        """The node is (re)dispatched: its output streams again from the start."""
        for d in (self.texts, self.chars, self.planned):
            d.pop(node, None)

    def partial(self, running: set[str]) -> dict[str, str]:
        """node → text so far, for the nodes still running."""
        return {n: "".join(parts) for n, parts in self.texts.items() if n in running and parts}
