"""The gateway's published contract: /openapi.json is built from the pydantic models and lists every route,
and schemathesis fuzzing every operation (valid and invalid requests) against a real gateway on a real
Redis gets no server error, an OpenAI-shaped error for every refusal, and leaves the gateway healthy."""

from __future__ import annotations

import asyncio

import pytest

from common.openapi import undocumented
from gateway.api.contract import OPS
from scripts.contract_fuzz import fuzz

pytestmark = pytest.mark.asyncio
EXAMPLES = 12


async def test_the_document_lists_every_route_with_its_models(gateway, fake_workers):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    status, doc, _ = await gw.call("GET", "/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    assert undocumented(gw.app, OPS) == []
    submit = doc["paths"]["/v1/workflows"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/WorkflowIn"}
    node = doc["components"]["schemas"]["NodeIn"]
    assert {"id", "messages", "max_tokens", "temperature", "output"} <= set(node["properties"])
    assert set(doc["paths"]["/v1/workflows/{id}"]) == {"get", "delete"}
    assert doc["paths"]["/v1/workflows"]["get"]["parameters"][1] == {
        "name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 200}}
    assert doc["paths"]["/v1/chat/completions"]["post"]["responses"]["400"]["content"]["application/json"] == {
        "schema": {"$ref": "#/components/schemas/Error"}}


async def test_schemathesis_finds_no_server_error_and_the_gateway_stays_healthy(gateway, fake_workers):
    workers = await fake_workers(2)
    gw = await gateway([w.url for w in workers])
    report = await asyncio.to_thread(fuzz, gw.url, EXAMPLES)
    assert report.operations == len(OPS) - 1  # all but /openapi.json itself, which schemathesis leaves out
    assert report.server_errors == []
    assert report.bad_errors == []
    assert report.calls >= report.operations * 2  # every operation answered valid and invalid requests
    assert any(400 <= s < 500 for s in report.by_status)
    for path in ("/health/live", "/health/ready", "/health"):
        status, body, _ = await gw.call("GET", path)
        assert status == 200, (path, body)
    # a workflow still runs end to end after the fuzz
    wf = await gw.submit({"nodes": [{"id": "a", "messages": [{"role": "user", "content": "hi"}]}]})
    assert (await gw.wait(wf))["status"] == "finished"
