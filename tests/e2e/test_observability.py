"""/metrics of a real worker process and of a gateway in front of it, read by prometheus_client's
parser; the Grafana dashboard queries only metrics those outputs have; request ids end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.support import llm
from tests.support import http_json

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "agentgate.json"
OUR_NAME = re.compile(r"(?:agentgate_gateway_|agentgate:|sglang:|process_)[a-z0-9_:]+")


def _parse(text: str) -> dict:
    """family name → family; raises on any line the Prometheus text format does not allow."""
    families = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"{family.name} twice"
        families[family.name] = family
    return families


def _exposed_names(families: dict) -> set[str]:
    """Every series name a query may use: the samples', and those a declared family will have."""
    names = {s.name for f in families.values() for s in f.samples}
    for f in families.values():
        names |= {f.name + "_total"} if f.type == "counter" else \
            {f.name + suffix for suffix in ("_bucket", "_sum", "_count")} if f.type == "histogram" else {f.name}
    return names


async def _scrape_both(gw, worker) -> tuple[dict, dict]:
    wf = await gw.submit({"nodes": [llm("a", "Name one fruit.", max_tokens=4, temperature=0),
                                    llm("b", "What color is {{a}}?", max_tokens=4, temperature=0)]})
    assert (await gw.wait(wf, timeout=150))["status"] == "finished"
    status, gateway_text, headers = await gw.call("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    status, worker_text = http_json("GET", worker + "/metrics")
    assert status == 200
    return _parse(gateway_text), _parse(worker_text)


async def test_both_metrics_outputs_parse_with_help_type_and_process_metrics(gw, worker):
    gateway, engine = await _scrape_both(gw, worker)
    for source, families in (("gateway", gateway), ("worker", engine)):
        for family in families.values():
            assert family.documentation, f"{source}: {family.name} has no HELP"
            assert family.type in ("counter", "gauge", "histogram", "info"), f"{source}: {family.name}"
        for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"):
            assert families[name].samples[0].value > 0, (source, name)
    # SGLang's names stay, labelled as SGLang labels them
    (running,) = engine["sglang:num_running_reqs"].samples
    assert set(running.labels) == {"model_name", "engine_type", "tp_rank", "pp_rank"}
    assert engine["sglang:prompt_tokens"].samples[0].value > 0
    ttft = [s for s in engine["sglang:time_to_first_token_seconds"].samples if s.labels.get("le") == "+Inf"]
    assert ttft[0].value >= 2  # both nodes' calls
    assert gateway["agentgate_gateway_workflows"].type == "counter"
    finished = {s.labels["status"]: s.value for s in gateway["agentgate_gateway_nodes"].samples}
    assert finished["finished"] == 2
    (in_flight,) = gateway["agentgate_gateway_worker_in_flight"].samples
    assert in_flight.labels == {"worker": worker}


async def test_the_dashboard_queries_only_metrics_the_live_outputs_have(gw, worker):
    gateway, engine = await _scrape_both(gw, worker)
    exposed = _exposed_names(gateway) | _exposed_names(engine)
    dashboard = json.loads(DASHBOARD.read_text())
    queried, titles = set(), set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            titles.add(panel["title"])
            continue
        for target in panel["targets"]:
            names = set(OUR_NAME.findall(target["expr"]))
            assert names, f"panel {panel['title']!r} queries none of our metrics: {target['expr']}"
            queried |= names
    assert {"Gateway", "Workers (SGLang names)", "Agent awareness"} <= titles
    assert not queried - exposed, f"queried but not exposed: {sorted(queried - exposed)}"
    # the three parts are covered, the awareness counters among them
    assert {"agentgate_gateway_predictions_total", "agentgate_gateway_prefetch_hits_total",
            "agentgate_gateway_prefetch_wasted_tokens_total", "sglang:num_running_reqs",
            "agentgate:kv_pinned_blocks", "agentgate_gateway_requests_total"} <= queried


async def test_request_ids_are_taken_or_made_and_returned(gw):
    status, _, headers = await gw.call("GET", "/health/live", headers={"X-Request-Id": "client-id-42"})
    assert status == 200 and headers["X-Request-Id"] == "client-id-42"
    status, _, headers = await gw.call("GET", "/v1/workflows/wf-none")
    assert status == 404 and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])
    status, _, headers = await gw.call("GET", "/health/live", headers={"X-Request-Id": "bad id\twith tab"})
    assert headers["X-Request-Id"] != "bad id\twith tab" and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])


async def test_the_worker_has_the_probes_beside_sglangs_health(worker):
    assert http_json("GET", worker + "/health/live") == (200, {"status": "live"})
    assert http_json("GET", worker + "/health/ready") == (200, {"status": "ready"})
    status, body = http_json("GET", worker + "/health")
    assert status == 200 and body is None  # SGLang's: an empty 200
