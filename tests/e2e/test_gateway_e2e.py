"""The gateway in front of a real engine worker process: a diamond workflow end to end,
and chat calls whose shared prefix the worker serves from its cache."""

from __future__ import annotations


import orjson
import pytest

from gateway.keys import HASHER
from tests.gateway.support import llm

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

SYSTEM = ("You are a careful assistant inside an agent workflow. Answer in one short sentence. "
          "Never use lists. Prefer plain words. ") * 6


async def test_diamond_workflow_runs_end_to_end(gw):
    wf = await gw.submit({"nodes": [
        llm("topic", "Name one fruit. {{inputs.hint}}", max_tokens=6, temperature=0),
        llm("color", "What color is {{topic}}?", max_tokens=6),
        llm("taste", "How does {{topic}} taste?", max_tokens=6),
        llm("summary", "Combine: {{color}} / {{taste}}", max_tokens=8)], "inputs": {"hint": "Be brief."}})
    body = await gw.wait(wf, timeout=150)
    assert body["status"] == "finished", body
    for name, node in body["nodes"].items():
        assert node["status"] == "finished" and node["output"], name
        assert 0 < node["usage"]["completion_tokens"] <= 8
    assert body["nodes"]["summary"]["timings"]["started"] >= max(
        body["nodes"]["color"]["timings"]["finished"], body["nodes"]["taste"]["timings"]["finished"])
    events = await gw.events(wf)
    tokens = "".join(e["data"]["text"] for e in events if e["event"] == "token" and e["data"]["node"] == "topic")
    assert tokens == body["outputs"]["topic"]
    assert events[-1]["event"] == "workflow_finished"


async def test_chat_shares_a_cached_prefix_and_tokenizes_like_the_worker(gw):
    def chat(question: str, **extra) -> dict:
        return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                "max_tokens": 4, "temperature": 0, **extra}

    status, first, _ = await gw.call("POST", "/v1/chat/completions",
                                     {**chat("What is the capital of France?"), "agent_hints": {"agent_id": "a"}})
    assert status == 200, first
    status, second, _ = await gw.call("POST", "/v1/chat/completions", chat("And of Italy?"))
    assert status == 200, second
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0 and cached >= 0.5 * second["usage"]["prompt_tokens"], second["usage"]
    hasher = gw.app[HASHER]
    assert hasher.tokenizer is not None, "the gateway did not load the worker's tokenizer"
    assert len(hasher.chat_ids(chat("And of Italy?")["messages"])) == second["usage"]["prompt_tokens"]
    async with gw.session.post(gw.url + "/v1/chat/completions", data=orjson.dumps(
            chat("And of Spain?", stream=True, stream_options={"include_usage": True}))) as r:
        assert r.status == 200
        lines = [ln[6:] for ln in (await r.read()).decode().split("\n") if ln.startswith("data: ")]
    chunks = [orjson.loads(ln) for ln in lines[:-1]]
    assert lines[-1] == "[DONE]" and chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
