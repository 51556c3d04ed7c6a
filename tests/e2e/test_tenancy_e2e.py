"""Tenant isolation against the real engine worker, started with --api-key, behind a gateway with API keys
and that worker key: tenant B gets 0 cached tokens from tenant A's prompts (a chat call, a chat call naming
A's salt, a workflow node), while A's own repeat is served from cache; the worker refuses anyone without
the key (its control routes included) and answers its health probes."""

from __future__ import annotations

import orjson
import pytest
import pytest_asyncio

from gateway.auth.keys import KeyTable, key_hash
from tests.gateway.support import GatewayHandle, fast_config
from tests.support import http_json, start_worker, stop_worker

pytestmark = pytest.mark.slow

WORKER_KEY = "worker-secret-for-the-gateway"
KEYS = {"a": "tenant-a-key", "b": "tenant-b-key"}
PROMPT = ("Read the note and answer. The library on Elm Street opens at nine on weekdays and at ten on "
          "Saturdays; it is closed on Sundays. Members may borrow up to eight books at a time for three weeks, "
          "and renew them twice online. Question: when does the library open on Saturdays?")


@pytest.fixture(scope="module")
def keyed_worker(model_dir, tmp_path_factory):
    worker = start_worker(model_dir, tmp_path_factory.mktemp("keyed-worker"), "--api-key", WORKER_KEY)
    yield worker.url
    stop_worker(worker)


@pytest_asyncio.fixture
async def tenant_gw(keyed_worker, redis_url):
    table = KeyTable.parse(orjson.dumps([{"sha256": key_hash(k), "tenant": t} for t, k in KEYS.items()]), "t")
    handle = await GatewayHandle(fast_config(redis_url, [keyed_worker], key_prefix="ten", api_keys=table,
                                             worker_api_key=WORKER_KEY, request_timeout_s=120)).start()
    yield handle
    await handle.stop()


def headers(tenant: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[tenant]}", "Content-Type": "application/json"}


async def chat(gw, tenant: str, **extra) -> int:
    body = {"model": "default", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2,
            "temperature": 0, **extra}
    status, out, _ = await gw.call("POST", "/v1/chat/completions", body, headers=headers(tenant))
    assert status == 200, out
    return out["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_the_worker_wants_its_key_on_every_route_but_health(keyed_worker):
    for method, path, body in (("POST", "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 1}}),
                               ("POST", "/flush_cache", None), ("POST", "/abort_request", {"rid": "x"}),
                               ("GET", "/get_server_info", None), ("POST", "/v1/chat/completions", {})):
        status, out = http_json(method, keyed_worker + path, body)
        assert status == 401 and out["error"]["code"] == "invalid_api_key", (path, out)
    assert http_json("GET", keyed_worker + "/health")[0] == 200
    status, info = http_json("GET", keyed_worker + "/get_server_info", headers={
        "Authorization": f"Bearer {WORKER_KEY}"})
    assert status == 200 and "api_key" not in info  # the key is never reported back


@pytest.mark.asyncio
async def test_tenant_b_gets_no_cached_tokens_from_tenant_a(tenant_gw):
    gw = tenant_gw
    assert (await gw.call("POST", "/admin/flush_cache", headers=headers("a")))[0] == 403
    await chat(gw, "a")
    assert await chat(gw, "a") > 0  # A's own repeat is cached: the cache works through the worker key
    assert await chat(gw, "b", cache_salt="tenant:a") == 0  # naming A's salt does not reach A's cache
    status, body, _ = await gw.call("POST", "/v1/workflows", {"nodes": [
        {"id": "n", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2}]}, headers=headers("b"))
    assert status == 202, body
    done = await gw.wait(body["id"], headers=headers("b"), timeout=120)
    assert done["status"] == "finished", done
    assert done["nodes"]["n"]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert done["nodes"]["n"]["usage"]["prompt_tokens"] > 40
    assert await chat(gw, "b") > 0  # B's own prompt, cached by its workflow node under B's salt
