"""The next LLM calls of a client-driven agent, from its registered template.

The graph runs in the client; the gateway sees only its LLM calls, each tagged
with the template node it serves. After a call for node `n`, the next calls are
`predict_next(graph, learned, n)` (templates.py: learned transitions between
tagged calls when there are any, else the template's edges). A template also
has nodes the gateway never sees a call for — tools, routers, plain functions —
so a predicted node that has never been called through the gateway is looked
through: its own successors inherit its probability (up to `MAX_HOPS` such
nodes in a row; a path that ends without reaching a called node predicts no
call). That is how `agent → tools → agent` predicts the agent's
next call before any transition was learned; once learned, the ReAct self-loop
`agent → agent` comes straight from the counts.
"""

from __future__ import annotations

from collections.abc import Collection

from common.workflow.template_graph import TemplateGraph, predict_next

MAX_HOPS = 3


def next_calls(graph: TemplateGraph, learned: dict[str, dict[str, int]], node: str,
               called: Collection[str]) -> list[tuple[str, float]]:
    """(node that will call next, probability), most likely first. `called`: the template
    nodes seen in tagged calls so far (the others are looked through)."""
    found: dict[str, float] = {}
    frontier = [(node, 1.0)]
    for _ in range(MAX_HOPS + 1):
        nxt: list[tuple[str, float]] = []
        for source, p in frontier:
            for target, q in predict_next(graph, learned, source):
                if target in called or target == node:
                    found[target] = found.get(target, 0.0) + p * q
                else:  # a tool, a router, the end: what follows it is what calls next
                    nxt.append((target, p * q))
        if not nxt:
            break
        frontier = nxt
    return sorted(((n, min(p, 1.0)) for n, p in found.items()), key=lambda x: (-x[1], x[0]))
