"""Agent awareness against a real engine worker: prefetched prefixes show up as cached_tokens in
the calls that follow — because of the prefetch (every system prompt here is unique, and the
same flow without prediction or pins is the control) — pins hold through a flood of unrelated
requests during a tool call and are gone after, and client-driven tagged calls get their next
call's prefix prefetched.

One worker for the module, with a small L1 pool (1,024 tokens) and no L2/L3, so that what is
not pinned really is evicted by a flood."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import pytest_asyncio

from common.redis_server import RedisServer
from gateway.keys import HASHER
from gateway.planner.prefix import common_prefix
from gateway.keys import AWARENESS
from gateway.keys import TAGGED
from tests.gateway.support import GatewayHandle, fast_config
from tests.support import http_json, start_worker, stop_worker

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

POOL_TOKENS = 1024
BLOCK = 16


@pytest.fixture(scope="module")
def redis_url():
    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def small_worker(model_dir, tmp_path_factory):
    # Prefetch chunks ride along busy steps (the GPU default): token pipelining prefills a downstream prompt
    # while its upstream decodes, which the CPU default (prefetches only in idle steps) leaves to timing.
    worker = start_worker(model_dir, tmp_path_factory.mktemp("aware"), "--kv-pool-tokens", str(POOL_TOKENS),
                          "--l2-blocks", "0", "--l3", "none", "--prefetch-chunk-tokens", "128")
    yield worker.url
    stop_worker(worker)


@pytest_asyncio.fixture
async def gateways(small_worker, redis_url):
    handles = []

    async def start(**overrides) -> GatewayHandle:
        config = fast_config(redis_url, [small_worker], key_prefix="aw" + uuid.uuid4().hex[:6], request_timeout_s=120,
                             **overrides)
        handle = await GatewayHandle(config).start()
        handles.append(handle)
        await until(lambda: handle.app[HASHER].tokenizer is not None, timeout=30)
        return handle

    yield start
    for h in handles:
        await h.stop()


async def until(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def unique_system(tag: str) -> str:
    return (f"[{tag} {uuid.uuid4().hex}] You are a careful assistant inside an agent workflow. Answer in one "
            "short sentence, never use lists, prefer plain words and name your sources when you have any. ") * 3


def chat_node(node_id: str, system: str, user: str, max_tokens: int = 4, **extra) -> dict:
    return {"id": node_id, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}], **extra}


def block_floor(n: int) -> int:
    return n // BLOCK * BLOCK


def system_tokens(gw: GatewayHandle, system: str) -> int:
    """Tokens of the prompt's system message (it ends with a special token: a safe prefix)."""
    return len(gw.app[HASHER].chat_ids([{"role": "system", "content": system}])) - 3  # minus "<|im_start|>assistant\n"


def cached(node: dict) -> int:
    return node["usage"]["prompt_tokens_details"]["cached_tokens"]


async def chain(gw: GatewayHandle, tag: str, a_tokens: int = 40, **options) -> tuple[dict, int, str]:
    system = unique_system(tag)
    wf = await gw.submit({**options, "nodes": [
        {"id": "a", "max_tokens": a_tokens, "ignore_eos": True, "temperature": 0,
         "messages": [{"role": "user", "content": "Count from one to twenty in words."}]},
        chat_node("b", system, "Summarize this: {{a}}")]})
    body = await gw.wait(wf, timeout=240)
    assert body["status"] == "finished", body
    return body, block_floor(system_tokens(gw, system)), system


async def test_a_chain_reads_its_prefetched_prefix_from_cache(gateways):
    gw = await gateways(token_pipelining="off")
    body, prefix, _ = await chain(gw, "B")
    b = body["nodes"]["b"]
    assert b["prefetch"]["predicted"] and b["prefetch"]["late"] is False, b["prefetch"]
    assert prefix >= 160 and cached(b) >= prefix, (cached(b), prefix, b["prefetch"])
    assert b["prefetch"]["hit"] and b["prefetch"]["from"]["computed"] >= prefix
    control = await gateways(prediction=False)
    body, prefix, _ = await chain(control, "B-control")
    assert cached(body["nodes"]["b"]) < prefix  # the same flow without prefetch recomputes it


async def test_token_pipelining_prefills_the_upstream_output_while_it_streams(gateways):
    gw = await gateways()
    body, _, system = await chain(gw, "PIPE", a_tokens=80, options={"token_pipelining": True})
    b = body["nodes"]["b"]
    assert b["prefetch"]["pipelined"] and b["prefetch"]["prefetches"] >= 2, b["prefetch"]
    hasher = gw.app[HASHER]

    def prompt(output: str) -> list[int]:
        return hasher.chat_ids([{"role": "system", "content": system},
                                {"role": "user", "content": "Summarize this: " + output}])

    before_output = common_prefix(prompt(body["outputs"]["a"]), prompt(""))
    # At least two blocks of a's output were prefilled while a streamed (a static prefetch stops before it).
    assert cached(b) >= block_floor(before_output) + 2 * BLOCK, (cached(b), before_output)


async def pinned_flow(gw: GatewayHandle, worker: str, tag: str) -> tuple[dict, int, dict]:
    system = unique_system(tag)
    wf = await gw.submit({
        "nodes": [chat_node("ask", system, "Which tool should I call?"), {"id": "tool", "type": "external"},
                  chat_node("after", system, "The tool said: {{tool}}")],
        "edges": [{"from": "ask", "to": "tool"}, {"from": "tool", "to": "after"}]})
    await gw.wait_node(wf, "tool", "waiting", timeout=120)
    aw = gw.app[AWARENESS]
    await until(lambda: (wf, "after") in aw.prefetcher.slots and aw.prefetcher.slots[(wf, "after")].prefetches)
    pins_during_tool = _pin_count(worker)
    # The flood: unrelated prompts, more than the whole pool, straight to the worker.
    for i in range(6):
        flood = f"Unrelated request {i} {uuid.uuid4().hex}: " + " ".join(f"item{i}-{j}" for j in range(80))
        status, _ = await asyncio.to_thread(  # off the loop: the gateway in this process keeps running
            http_json, "POST", worker + "/generate", {"text": flood, "sampling_params": {"max_new_tokens": 1}})
        assert status == 200
    status, _, _ = await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "sunny, 21 C"})
    assert status == 200
    body = await gw.wait(wf, timeout=240)
    assert body["status"] == "finished", body
    return body, block_floor(system_tokens(gw, system)), pins_during_tool


async def test_a_pinned_prefix_survives_a_flood_during_a_tool_call_and_is_released(gateways, small_worker):
    gw = await gateways(token_pipelining="off")
    body, prefix, pins_during_tool = await pinned_flow(gw, small_worker, "PIN")
    assert pins_during_tool >= 1
    after = body["nodes"]["after"]
    assert cached(after) >= prefix, (cached(after), prefix, after["prefetch"])
    assert after["prefetch"]["pin_held_s"] > 0 and body["nodes"]["tool"]["prefetch"]["caller_pins"]
    await until(lambda: _pin_count(small_worker) == 0, timeout=10)  # released, not left to their TTL
    control = await gateways(pinning=False, token_pipelining="off")
    body, prefix, pins_during_tool = await pinned_flow(control, small_worker, "PIN-control")
    assert pins_during_tool == 0
    assert cached(body["nodes"]["after"]) < prefix  # unpinned, the flood evicted it


def _pin_count(worker: str) -> int:
    status, stats = http_json("GET", worker + "/kv/stats")
    assert status == 200
    return stats["pins"]["pins"]


async def test_tagged_client_calls_get_their_next_call_prefetched(gateways, small_worker):
    gw = await gateways()
    template = "e2e-agent-" + uuid.uuid4().hex[:8]
    status, _, _ = await gw.call("POST", "/v1/templates", {"name": template, "nodes": ["plan", "act"], "edges": [
        {"source": "plan", "target": "act"}, {"source": "act", "target": "plan"}]})
    assert status == 201
    prompts = {"plan": unique_system("PLAN"), "act": unique_system("ACT")}
    tagged = gw.app[TAGGED]

    async def call(agent: str, node_id: str, question: str) -> dict:
        status, out, _ = await gw.call("POST", "/v1/chat/completions", {
            "messages": [{"role": "system", "content": prompts[node_id]}, {"role": "user", "content": question}],
            "max_tokens": 2, "temperature": 0,
            "agent_hints": {"template": template, "node_id": node_id, "agent_id": agent}})
        assert status == 200, out
        await until(lambda: not tagged._tasks)
        return out

    for q in ("What is 2+2?", "What is 3+3?"):  # learns plan → act → plan and both static prefixes
        await call("a1", "plan", q)
        await call("a1", "act", q)
    await until(lambda: not gw.app[AWARENESS].prefetcher.tasks)
    status, _ = http_json("POST", small_worker + "/flush_cache")  # nothing of either prompt is cached now (nor pinned)
    assert status == 200
    await call("a2", "plan", "What is 4+4?")
    slot = gw.app[AWARENESS].prefetcher.slots[(f"agent:{template}:a2", "act")]
    await until(lambda: slot.prefetches > 0)
    out = await call("a2", "act", "What is 4+4?")
    static = block_floor(system_tokens(gw, prompts["act"]))
    assert static >= 160 and out["usage"]["prompt_tokens_details"]["cached_tokens"] >= static, out["usage"]

