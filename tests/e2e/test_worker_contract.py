"""The worker's published contract: /openapi.json lists every route with its request models, and
schemathesis fuzzing every operation (valid and invalid requests) against a real embedded worker gets no
server error and an OpenAI-shaped error for every refusal; the worker still generates afterwards. The worker
runs with a 64-token context, so no fuzzed call can generate for long on the test machine's cores."""

from __future__ import annotations

import pytest

from engine.worker.contract import OPS
from scripts.contract_fuzz import fuzz
from tests.support import http_json, start_worker, stop_worker

EXAMPLES = 8

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_worker(model_dir, tmp_path_factory):
    worker = start_worker(model_dir, tmp_path_factory.mktemp("contract"), "--context-length", "64",
                          "--max-running-requests", "8")
    yield worker
    stop_worker(worker)


def test_the_document_lists_every_route_with_its_models(small_worker):
    status, doc = http_json("GET", small_worker.url + "/openapi.json")
    assert status == 200
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == set(OPS)
    generate = doc["paths"]["/generate"]["post"]
    assert generate["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerateRequest"}
    assert set(generate["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "max_new_tokens" in doc["components"]["schemas"]["GenerateSamplingParams"]["properties"]
    assert doc["paths"]["/v1/models/{model}"]["get"]["parameters"][0]["name"] == "model"


def test_schemathesis_finds_no_server_error_and_the_worker_still_generates(small_worker):
    report = fuzz(small_worker.url, EXAMPLES)
    assert report.server_errors == []
    assert report.bad_errors == []
    assert report.operations == len(OPS) - 1  # all but /openapi.json itself
    assert 200 in report.by_status and 400 in report.by_status
    status, _ = http_json("GET", small_worker.url + "/health")
    assert status == 200
    status, out = http_json("POST", small_worker.url + "/generate", {
        "text": "The capital of France is", "sampling_params": {"max_new_tokens": 4, "temperature": 0}})
    assert status == 200 and out["meta_info"]["completion_tokens"] == 4, out
