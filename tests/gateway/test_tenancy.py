"""API keys and tenants through a real gateway app on a free port, a real Redis and a fake worker: 401s,
404s across tenants (list, read, events, cancel, tool results, templates), admin-only routes, and the
cache salt each tenant's calls reach the worker with."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from gateway.auth.keys import KeyFileError, KeyTable, key_hash
from gateway.main import main as gateway_main

KEYS = {"a": "key-of-tenant-a", "b": "key-of-tenant-b", "root": "key-of-the-admin"}


def table() -> KeyTable:
    return KeyTable.parse(orjson.dumps([
        {"sha256": key_hash(KEYS["a"]), "tenant": "a", "scopes": ["user"]},
        {"sha256": key_hash(KEYS["b"]), "tenant": "b", "scopes": ["user"]},
        {"sha256": key_hash(KEYS["root"]), "tenant": "ops", "scopes": ["user", "admin"]}]), "test")


def auth(who: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[who]}", "Content-Type": "application/json"}


async def call(gw, who, method, path, body=None):
    return await gw.call(method, path, body, headers=auth(who) if who else None)


def llm(node_id: str, text: str, **extra) -> dict:
    return {"id": node_id, "messages": [{"role": "user", "content": text}], **extra}


@pytest.mark.asyncio
async def test_missing_or_unknown_key_is_a_401_in_openai_shape_and_probes_stay_open(gateway, fake_workers):
    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table())
    for method, path in (("GET", "/v1/workflows"), ("POST", "/v1/chat/completions"), ("GET", "/v1/templates"),
                         ("GET", "/metrics"), ("GET", "/v1/models"), ("GET", "/admin/workers")):
        for headers in (None, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Basic {KEYS['a']}"}):
            status, body, _ = await gw.call(method, path, headers=headers)
            assert status == 401, (method, path, body)
            assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
    for path in ("/health/live", "/health/ready", "/health"):
        status, _, _ = await gw.call("GET", path)
        assert status == 200, path
    assert w.calls == []  # nothing unauthenticated reached the worker


@pytest.mark.asyncio
async def test_tenant_b_gets_404_for_everything_of_tenant_a(gateway, fake_workers):
    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table())
    status, body, _ = await call(gw, "a", "POST", "/v1/workflows", {
        "nodes": [llm("ask", "secret: hunter2"), {"id": "tool", "type": "external"}, llm("use", "{{tool}}")],
        "edges": [{"from": "ask", "to": "tool"}, {"from": "tool", "to": "use"}]})
    assert status == 202, body
    wf = body["id"]
    await gw.wait_node(wf, "tool", "waiting", headers=auth("a"))
    status, listed, _ = await call(gw, "b", "GET", "/v1/workflows")
    assert status == 200 and listed["data"] == [] and listed["total"] == 0
    for method, path, payload in (("GET", f"/v1/workflows/{wf}", None), ("GET", f"/v1/workflows/{wf}/events", None),
                                  ("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "INJECTED BY B"}),
                                  ("DELETE", f"/v1/workflows/{wf}", None)):
        status, err, _ = await call(gw, "b", method, path, payload)
        assert status == 404 and err["error"]["code"] == "workflow_not_found", (method, path, err)
    status, mine, _ = await call(gw, "a", "GET", "/v1/workflows")
    assert [d["id"] for d in mine["data"]] == [wf]
    status, seen, _ = await call(gw, "root", "GET", f"/v1/workflows/{wf}")  # an admin sees every tenant's
    assert status == 200 and seen["nodes"]["tool"]["status"] == "waiting"
    status, _, _ = await call(gw, "a", "POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "from A"})
    assert status == 200
    done = await gw.wait(wf, headers=auth("a"))
    assert done["status"] == "finished"
    used = [c.body for c in w.calls if "from A" in orjson.dumps(c.body).decode()]
    assert used and not any("INJECTED" in orjson.dumps(c.body).decode() for c in w.calls)


@pytest.mark.asyncio
async def test_tenant_b_cannot_read_or_replace_tenant_a_template(gateway, fake_workers):
    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table())
    a_graph = {"name": "plan", "nodes": ["x", "y"], "edges": [{"source": "x", "target": "y"}]}
    assert (await call(gw, "a", "POST", "/v1/templates", a_graph))[0] == 201
    status, err, _ = await call(gw, "b", "GET", "/v1/templates/plan")
    assert status == 404 and err["error"]["code"] == "template_not_found"
    assert (await call(gw, "b", "GET", "/v1/templates"))[1]["data"] == []
    status, _, _ = await call(gw, "b", "POST", "/v1/templates", {"name": "plan", "nodes": ["evil"], "edges": []})
    assert status == 201  # B's own "plan"
    status, mine, _ = await call(gw, "a", "GET", "/v1/templates/plan")
    assert status == 200 and mine["nodes"] == ["x", "y"] and mine["name"] == "plan"
    assert (await call(gw, "b", "GET", "/v1/templates/plan"))[1]["nodes"] == ["evil"]
    assert (await call(gw, "a", "GET", "/v1/templates"))[1]["data"] == ["plan"]


@pytest.mark.asyncio
async def test_calls_reach_the_worker_with_their_tenant_salt_whatever_salt_the_client_names(gateway, fake_workers):
    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table())
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert (await call(gw, "b", "POST", "/v1/chat/completions", {**chat, "cache_salt": "tenant:a"}))[0] == 200
    assert (await call(gw, "a", "POST", "/v1/chat/completions", chat))[0] == 200
    status, body, _ = await call(gw, "b", "POST", "/v1/workflows", {"nodes": [
        llm("plain", "one"), llm("salted", "two", cache_salt="tenant:a")]})
    assert status == 202, body
    assert (await gw.wait(body["id"], headers=auth("b")))["status"] == "finished"
    salts = sorted(c.body.get("cache_salt") for c in w.calls)
    assert salts == ["tenant:a", "tenant:b", "tenant:b/tenant:a", "tenant:b/tenant:a"]
    status, err, _ = await call(gw, "b", "POST", "/v1/workflows", {"nodes": [llm("n", "x", cache_salt=5)]})
    assert status == 422 and "cache_salt must be a string" in err["error"]["message"]


@pytest.mark.asyncio
async def test_worker_management_and_cache_flush_are_admin_only(gateway, fake_workers):
    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table())
    for method, path in (("GET", "/admin/workers"), ("POST", "/admin/flush_cache"),
                         ("DELETE", f"/admin/workers?url={w.url}")):
        status, err, _ = await call(gw, "a", method, path)
        assert status == 403 and err["error"]["code"] == "admin_only", (method, path)
    status, listed, _ = await call(gw, "root", "GET", "/admin/workers")
    assert status == 200 and [x["url"] for x in listed["data"]] == [w.url]
    status, flushed, _ = await call(gw, "root", "POST", "/admin/flush_cache")
    assert status == 200 and list(flushed["flushed"]) == [w.url]
    status, err, _ = await call(gw, "root", "POST", "/admin/workers", {"url": "ftp://x"})
    assert status == 400 and err["error"]["param"] == "url"


def test_key_tables_hold_hashes_only_and_name_what_is_wrong(monkeypatch, tmp_path):
    with pytest.raises(KeyFileError, match="stored hashed"):
        KeyTable.parse(b'[{"key": "plain", "tenant": "a"}]', "f")
    with pytest.raises(KeyFileError, match="tenant must match"):
        KeyTable.parse(orjson.dumps([{"sha256": key_hash("k"), "tenant": "a/b"}]), "f")
    with pytest.raises(KeyFileError, match="scopes"):
        KeyTable.parse(orjson.dumps([{"sha256": key_hash("k"), "tenant": "a", "scopes": ["root"]}]), "f")
    env = {"AGENTGATE_API_KEYS": orjson.dumps({"keys": [{"sha256": key_hash("k"), "tenant": "a"}]}).decode()}
    loaded = KeyTable.load(None, env)
    assert loaded.lookup("k").tenant == "a" and not loaded.lookup("k").admin and loaded.lookup("K") is None
    path = tmp_path / "keys.json"
    path.write_bytes(orjson.dumps([{"sha256": key_hash("f"), "tenant": "t", "scopes": ["admin"]}]))
    assert KeyTable.load(str(path), env).lookup("f").admin  # the file wins over the environment
    assert KeyTable.load(None, {}) is None


def test_without_keys_a_non_loopback_host_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("AGENTGATE_API_KEYS", raising=False)
    assert gateway_main(["--host", "0.0.0.0", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert "refusing --host 0.0.0.0 without API keys" in err and err.count("\n") == 1


@pytest.mark.asyncio
async def test_sdk_sends_its_key_from_the_argument_or_the_environment(gateway, fake_workers, monkeypatch):
    from agentgate import AsyncClient
    from agentgate.errors import Unauthorized

    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table())
    async with AsyncClient(gw.url, api_key=KEYS["a"]) as client:
        assert (await client.list()).total == 0
    monkeypatch.setenv("AGENTGATE_API_KEY", KEYS["b"])
    async with AsyncClient(gw.url) as client:
        assert (await client.list()).total == 0
    monkeypatch.delenv("AGENTGATE_API_KEY")
    async with AsyncClient(gw.url) as client:
        with pytest.raises(Unauthorized):
            await client.list()
