"""Bad input gets a 4xx naming what is wrong, never a 500: malformed chat bodies, invalid
sampling values in workflow nodes, a worker's refusal kept in the node's error, and a small
seeded hand-fuzz of every JSON route after which the gateway is still healthy."""

from __future__ import annotations

import json
import random

import pytest

from tests.gateway.support import llm

pytestmark = pytest.mark.asyncio

FIELDS = ("message", "type", "code", "param")


def assert_openai_error(status: int, err, code: int) -> None:
    assert status == code, (status, err)
    assert isinstance(err, dict) and set(err["error"]) >= set(FIELDS), err


async def test_a_message_without_role_with_agent_hints_is_a_400(gateway, fake_workers, model_dir):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url], tokenizer_path=str(model_dir))  # a real chat template renders the messages
    body = {"messages": [{"content": "hi"}], "agent_hints": {"template": "t", "node_id": "n", "agent_id": "a"}}
    status, err, _ = await gw.call("POST", "/v1/chat/completions", body)
    assert_openai_error(status, err, 400)
    assert err["error"]["param"] == "messages.0.role", err
    assert not w.calls


async def test_non_text_content_with_two_workers_is_a_400(gateway, fake_workers):
    workers = await fake_workers(2)
    gw = await gateway([w.url for w in workers])
    status, err, _ = await gw.call("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]})
    assert_openai_error(status, err, 400)
    assert err["error"]["param"].startswith("messages.0.content"), err
    assert not any(w.calls for w in workers)


@pytest.mark.parametrize("field,value", [("temperature", -1), ("top_p", 5), ("top_k", 0), ("stop", 7),
                                         ("temperature", "warm"), ("frequency_penalty", 9)])
async def test_invalid_sampling_values_in_a_node_are_refused_at_submission(gateway, fake_workers, field, value):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    status, err, _ = await gw.call("POST", "/v1/workflows", {"nodes": [llm("a", "hi", **{field: value})]})
    assert_openai_error(status, err, 422)
    assert f"nodes.0.{field}" in err["error"]["message"], err
    assert not w.calls


async def test_a_workers_refusal_is_kept_in_the_nodes_error(gateway, fake_workers):
    refuse = lambda body: "the prompt is too long for this worker" if "refuse" in str(body["messages"]) else None  # noqa: E731
    (w,) = await fake_workers(1, refuse_when=refuse)
    gw = await gateway([w.url])
    wf = await gw.submit({"nodes": [llm("a", "please refuse")]})
    body = await gw.wait(wf)
    assert body["status"] == "failed" and body["nodes"]["a"]["attempts"] == 1
    assert "the prompt is too long for this worker" in body["nodes"]["a"]["error"], body
    assert "the prompt is too long for this worker" in body["error"], body


# -- a seeded hand-fuzz ------------------------------------------------------------------------------------
WEIRD = [None, True, -1, 0, 2**70, 1.5, float("1e308"), "", "x" * 3, [], [1, "a"], {}, {"a": {"b": []}}, "\u0000\ud7ff"]


def mutate(rng: random.Random, value, depth: int = 0):
    """A value like `value` but wrong somewhere: a field dropped, retyped or added, at any depth."""
    if isinstance(value, dict) and value and depth < 4 and rng.random() < 0.7:
        out = dict(value)
        key = rng.choice(list(out))
        roll = rng.random()
        if roll < 0.2:
            del out[key]
        elif roll < 0.3:
            out[rng.choice(["extra", "role", "content", "id", "type"])] = rng.choice(WEIRD)
        else:
            out[key] = mutate(rng, out[key], depth + 1)
        return out
    if isinstance(value, list) and value and depth < 4 and rng.random() < 0.7:
        out = list(value)
        i = rng.randrange(len(out))
        out[i] = mutate(rng, out[i], depth + 1)
        return out
    return rng.choice(WEIRD)


CHAT = {"model": "fake-model", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": [
    {"type": "text", "text": "hi"}]}], "max_tokens": 4, "temperature": 0.5, "stop": ["x"], "stream": False,
        "agent_hints": {"template": "t", "node_id": "n", "agent_id": "a", "priority": 1}}
COMPLETION = {"prompt": "once", "max_tokens": 4, "temperature": 0.0, "stream": False}
GENERATE = {"text": "abc", "sampling_params": {"max_new_tokens": 4, "temperature": 0.0}}
WORKFLOW = {"nodes": [{"id": "a", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2},
                      {"id": "t", "type": "external"}, {"id": "b", "messages": [{"role": "user", "content": "{{a}}"}]}],
            "edges": [{"from": "a", "to": "b", "condition": {"regex": "echo"}}, {"from": "a", "to": "t"}],
            "inputs": {"k": "v"}, "priority": 1, "options": {"token_pipelining": False}}
TEMPLATE = {"name": "tpl", "nodes": ["a", {"id": "b"}], "edges": [{"from": "a", "to": "b", "conditional": True}]}


async def test_a_hand_fuzz_gets_no_server_error_and_leaves_the_gateway_healthy(gateway, fake_workers):
    workers = await fake_workers(2)
    gw = await gateway([w.url for w in workers])
    wf = await gw.submit({"nodes": [llm("a", "x"), {"id": "t", "type": "external"}], "edges": [{"from": "a", "to": "t"}]})
    await gw.wait_node(wf, "t", "waiting")
    rng = random.Random(19)
    routes = [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION), ("/generate", GENERATE),
              ("/v1/workflows", WORKFLOW), ("/v1/templates", TEMPLATE),
              (f"/v1/workflows/{wf}/nodes/t/result", {"output": "ok"})]
    statuses: dict[int, int] = {}
    for i in range(300):
        path, valid = routes[i % len(routes)]
        if i % 25 == 0:  # not JSON at all
            status, err, _ = await gw.call("POST", path, raw=rng.choice([b"{", b"\xff\xfe", b"[1,2", b"nul"]))
        else:
            body = mutate(rng, valid) if i % 7 else rng.choice(WEIRD)
            status, err, _ = await gw.call("POST", path, raw=json.dumps(body).encode())
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (path, status, err)
        if status >= 400:
            assert set(err["error"]) >= set(FIELDS), err
    assert sum(n for s, n in statuses.items() if 400 <= s < 500) >= 150, statuses
    status, health, _ = await gw.call("GET", "/health")
    assert status == 200 and all(h["breaker"] == "closed" for h in health["workers"].values()), health
    status, body, _ = await gw.call("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "ok"}]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: ok"
