"""The seeded agent workload of scripts/bench_scale.py (and scripts/fidelity_sim.py), written to a trace.

`generate` draws the workflows (kind, arrival time, every length and tool latency) from a seed and
returns a JSON-able trace; `build` turns one trace entry into an agentgate Workflow plus its tool
callables, identically every time, so any configuration replays the same trace. Texts are words of
a fixed list (about one token each with the embedded tokenizer); every LLM call's output length is
fixed by the trace (max_tokens = min_tokens), so real and simulated workers produce the same lengths.

Kinds, sized for 8B models (SIZES["8b"]; SIZES["cpu"] scales them down for the CPU engine):
- react: a 2-8k-token system prompt, 5-20 think/act steps, observations of 200-4,000 tokens,
  heavy-tailed tool latencies (log-normal, 0.2-30 s);
- map_reduce: plan, a fan-out of 8-64 map calls over 500-2,000-token chunks, reduce;
- planner: planner, 3-6 executors (a tool, then an LLM call each), a critic;
- code_edit: read a file of 8-32k tokens (a tool), edit it, run the tests (a tool), fix;
- chat: a multi-turn session of 3-8 turns, the user's think time between turns.
Each kind has a few system prompts that its workflows share (agents of one deployment share them).
"""

from __future__ import annotations

import asyncio
import math
import random

from agentgate.workflow import Workflow

KINDS = ("react", "map_reduce", "planner", "code_edit", "chat")
SYSTEMS_PER_KIND = 4
CONTEXT_TOKENS = 40960  # the simulated model's context (Qwen3-8B)
WORDS = ("the of and to in is for on that with as by at from this be are or an it not which have has was "
         "all can more will one about if their there use data time any each new other these some into file "
         "value list step result tool call agent task plan check test error return output input model cache "
         "query table user node graph page line code function class method module config server worker "
         "request response token prompt memory block region price cost report score state event order").split()

SIZES = {
    "8b": {"system": (2000, 8000), "question": (50, 200), "react_steps": (5, 20), "obs": (200, 4000),
           "think_out": (60, 250), "fanout": (8, 64), "chunk": (500, 2000), "map_out": (50, 200),
           "reduce_out": (200, 600), "executors": (3, 6), "exec_out": (100, 400), "file": (8000, 32000),
           "edit_out": (200, 800), "turns": (3, 8), "turn_in": (50, 300), "turn_out": (100, 300),
           "tool_s": (0.2, 30.0), "think_s": (2.0, 10.0)},
    "cpu": {"system": (150, 400), "question": (10, 30), "react_steps": (2, 4), "obs": (30, 120),
            "think_out": (8, 16), "fanout": (2, 4), "chunk": (40, 120), "map_out": (6, 12),
            "reduce_out": (10, 20), "executors": (2, 3), "exec_out": (8, 16), "file": (300, 800),
            "edit_out": (12, 24), "turns": (2, 3), "turn_in": (10, 40), "turn_out": (8, 16),
            "tool_s": (0.2, 2.0), "think_s": (0.5, 2.0)},
}
SIZES["quick"] = {**SIZES["cpu"], "tool_s": (0.05, 0.5), "think_s": (0.05, 0.2)}  # bench_scale --quick


def text(seed: int, tokens: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(max(1, tokens)))


def tool_latency(rng: random.Random, lo: float, hi: float) -> float:
    """Heavy-tailed: log-normal around lo * 4, clipped to [lo, hi]."""
    return round(min(hi, max(lo, rng.lognormvariate(math.log(lo * 4), 1.1))), 3)


def generate(count: int, rate: float, seed: int, size: str = "8b", kinds: tuple[str, ...] = KINDS) -> dict:
    """A trace: `count` workflows, Poisson arrivals at `rate` per second (inf: all at once), kinds in turn."""
    rng = random.Random(seed)
    s = SIZES[size]
    t, entries = 0.0, []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        e = {"index": i, "at": round(t, 4), "kind": kind, "seed": rng.randrange(1 << 30),
             "system": rng.randrange(SYSTEMS_PER_KIND)}
        r = lambda key: rng.randint(*s[key])  # noqa: E731
        if kind == "react":
            steps = r("react_steps")
            e.update(question=r("question"), steps=[{"out": r("think_out"), "obs": r("obs"),
                                                     "tool_s": tool_latency(rng, *s["tool_s"])} for _ in range(steps)],
                     answer=r("think_out"))
        elif kind == "map_reduce":
            e.update(question=r("question"), plan=r("think_out"),
                     maps=[{"chunk": r("chunk"), "out": r("map_out")} for _ in range(r("fanout"))], reduce=r("reduce_out"))
        elif kind == "planner":
            e.update(question=r("question"), plan=r("think_out"), critic=r("think_out"),
                     executors=[{"obs": r("obs"), "out": r("exec_out"), "tool_s": tool_latency(rng, *s["tool_s"])}
                                for _ in range(r("executors"))])
        elif kind == "code_edit":
            e.update(question=r("question"), file=r("file"), read_s=tool_latency(rng, *s["tool_s"]),
                     edit=r("edit_out"), test_s=tool_latency(rng, *s["tool_s"]), report=r("obs") // 4 + 1,
                     fix=r("edit_out"))
        else:
            e.update(turns=[{"in": r("turn_in"), "out": r("turn_out"), "think_s": round(rng.uniform(*s["think_s"]), 3)}
                            for _ in range(r("turns"))])
        entries.append(e)
        if rate != float("inf"):
            t += rng.expovariate(rate)
    system_tokens = {k: [rng.randint(*s["system"]) for _ in range(SYSTEMS_PER_KIND)] for k in KINDS}
    for e in entries:  # every conversation fits the context (Qwen3-8B: 40,960 tokens), as an agent keeps it
        if e["kind"] == "react":  # a ReAct loop stops where its history would overflow
            used, keep = system_tokens["react"][e["system"]] + e["question"] + e["answer"] + 512, []
            for step in e["steps"]:
                used += step["out"] + step["obs"] + 8
                if used > CONTEXT_TOKENS and keep:
                    break
                keep.append(step)
            e["steps"] = keep
        if e["kind"] == "code_edit":
            room = CONTEXT_TOKENS - system_tokens["code_edit"][e["system"]] - e["question"] - 2 * e["edit"] - \
                e["report"] - 512
            e["file"] = max(min(e["file"], room), 1)
    return {"format": "agentgate-scale-trace/1", "seed": seed, "size": size, "rate": rate, "count": count,
            "system_tokens": system_tokens, "workflows": entries}


def footprint(trace: dict) -> tuple[int, int]:
    """(working set, largest call) in tokens: the KV the whole trace keeps if nothing is evicted (each
    workflow's own context at its largest, each system prompt it uses once) and the longest single
    prompt plus output, which any worker must hold to serve it."""
    systems: set[tuple[str, int]] = set()
    total = largest = 0
    for e in trace["workflows"]:
        kind = e["kind"]
        sys_t = trace["system_tokens"][kind][e["system"]]
        systems.add((kind, e["system"]))
        if kind == "react":
            own = [e["question"] + sum(st["out"] + st["obs"] + 8 for st in e["steps"]) + e["answer"]]
        elif kind == "map_reduce":
            own = [e["plan"] + m["chunk"] + m["out"] for m in e["maps"]]
            own.append(e["question"] + sum(m["out"] for m in e["maps"]) + e["reduce"])
        elif kind == "planner":
            own = [e["question"] + e["plan"] + x["obs"] + x["out"] for x in e["executors"]]
            own.append(e["question"] + sum(x["out"] for x in e["executors"]) + e["critic"])
        elif kind == "code_edit":
            own = [e["question"] + e["file"] + 2 * e["edit"] + e["report"] + e["fix"]]
        else:
            own = [sum(t["in"] + t["out"] for t in e["turns"])]
        total += sum(own)
        largest = max(largest, sys_t + max(own))
    return total + sum(trace["system_tokens"][k][i] for k, i in systems), largest


TEMPLATE_HEADROOM = 1.05  # a call's chat template adds a few tokens a message to what footprint() counts


def call_blocks(tokens: int, block_size: int = 16) -> int:
    """KV blocks one call of `tokens` (footprint's count) needs on a worker, its chat template included."""
    return math.ceil(tokens * TEMPLATE_HEADROOM / block_size) + 1


def kv_blocks_for(trace: dict, oversubscribe: float, workers: int, block_size: int = 16,
                  floor_calls: int = 2) -> tuple[int, float]:
    """Each worker's L1 KV blocks so that the trace's working set is `oversubscribe` times the cluster's
    L1 capacity, but never below `floor_calls` of its largest calls; (blocks, the oversubscription they give)."""
    working, largest = footprint(trace)
    blocks = max(int(working // (oversubscribe * workers * block_size)), floor_calls * call_blocks(largest, block_size))
    return blocks, working / (blocks * workers * block_size)


def _tool(seconds: float, output: str, time_scale: float):
    async def tool(call):
        await asyncio.sleep(seconds * time_scale)
        return output

    return tool


def _llm(wf: Workflow, node: str, messages: list, tokens: int, after=()) -> None:
    wf.llm(node, messages=messages, max_tokens=tokens, min_tokens=tokens, temperature=0.0, after=after)


def build(trace: dict, e: dict, time_scale: float = 1.0) -> Workflow:
    """The workflow of trace entry `e`; tools sleep their latency × time_scale (1/speedup for sim workers)."""
    kind, seed = e["kind"], e["seed"]
    system = ("system", text(KINDS.index(kind) * 1000 + e["system"], trace["system_tokens"][kind][e["system"]]))
    wf = Workflow(f"scale-{kind}")
    if kind == "react":
        msgs = [system, ("user", text(seed, e["question"]))]
        prev = None
        for k, step in enumerate(e["steps"], 1):
            _llm(wf, f"think_{k}", list(msgs), step["out"], after=[prev] if prev else ())
            wf.external(f"act_{k}", _tool(step["tool_s"], text(seed + k, step["obs"]), time_scale), after=f"think_{k}")
            msgs += [("assistant", f"{{{{think_{k}}}}}"), ("user", f"Observation: {{{{act_{k}}}}}")]
            prev = f"act_{k}"
        _llm(wf, "answer", msgs, e["answer"], after=[prev])
    elif kind == "map_reduce":
        q = ("user", text(seed, e["question"]))
        _llm(wf, "plan", [system, q], e["plan"])
        for j, m in enumerate(e["maps"]):
            _llm(wf, f"map_{j}", [system, ("user", "{{plan}}\n" + text(seed + j + 1, m["chunk"]))], m["out"],
                 after="plan")
        joined = "\n".join(f"{{{{map_{j}}}}}" for j in range(len(e["maps"])))
        _llm(wf, "reduce", [system, q, ("user", joined)], e["reduce"], after=[f"map_{j}" for j in range(len(e["maps"]))])
    elif kind == "planner":
        q = ("user", text(seed, e["question"]))
        _llm(wf, "plan", [system, q], e["plan"])
        for j, x in enumerate(e["executors"]):
            wf.external(f"tool_{j}", _tool(x["tool_s"], text(seed + j + 1, x["obs"]), time_scale), after="plan")
            _llm(wf, f"exec_{j}", [system, q, ("assistant", "{{plan}}"), ("user", f"Step {j}: {{{{tool_{j}}}}}")],
                 x["out"], after=f"tool_{j}")
        joined = "\n".join(f"{{{{exec_{j}}}}}" for j in range(len(e["executors"])))
        _llm(wf, "critic", [system, q, ("user", joined)], e["critic"],
             after=[f"exec_{j}" for j in range(len(e["executors"]))])
    elif kind == "code_edit":
        q = ("user", text(seed, e["question"]))
        wf.external("read_file", _tool(e["read_s"], text(seed + 1, e["file"]), time_scale))
        msgs = [system, q, ("user", "File:\n{{read_file}}")]
        _llm(wf, "edit", msgs, e["edit"], after="read_file")
        wf.external("run_tests", _tool(e["test_s"], text(seed + 2, e["report"]), time_scale), after="edit")
        _llm(wf, "fix", msgs + [("assistant", "{{edit}}"), ("user", "Tests:\n{{run_tests}}")], e["fix"],
             after="run_tests")
    else:
        msgs, prev = [system], None
        for k, turn in enumerate(e["turns"], 1):
            if prev:
                wf.external(f"user_{k}", _tool(turn["think_s"], text(seed + k, turn["in"]), time_scale), after=prev)
                msgs = msgs + [("user", f"{{{{user_{k}}}}}")]
            else:
                msgs = msgs + [("user", text(seed + k, turn["in"]))]
            _llm(wf, f"reply_{k}", list(msgs), turn["out"], after=[f"user_{k}"] if prev else ())
            msgs = msgs + [("assistant", f"{{{{reply_{k}}}}}")]
            prev = f"reply_{k}"
    return wf.validate()
