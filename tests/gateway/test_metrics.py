"""The gateway's metrics through prometheus_client: cumulative histogram buckets, labelled counters,
HELP and TYPE for every family, label values escaped (they come back intact through the parser),
the process metrics beside ours."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Counter, Histogram, Metrics

NASTY = 'a "quoted" back\\slash and a\nnewline'


def _samples(family) -> list[tuple[str, dict, float]]:
    return [(s.name, s.labels, s.value) for s in family.samples]


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    h = Histogram("lat", "latency", buckets=(0.01, 0.1, 1))
    for value in (0.00390625, 0.0078125, 0.0625, 0.5, 2, 3):  # sums exactly in binary
        h.observe(value, route="/a")
    h.observe(0.2, route="/b")
    samples = _samples(h.family())
    a = {"route": "/a"}
    assert samples[:6] == [("lat_bucket", {**a, "le": "0.01"}, 2), ("lat_bucket", {**a, "le": "0.1"}, 3),
                           ("lat_bucket", {**a, "le": "1.0"}, 4), ("lat_bucket", {**a, "le": "+Inf"}, 6),
                           ("lat_count", a, 6), ("lat_sum", a, 5.57421875)]
    assert ("lat_bucket", {"route": "/b", "le": "0.1"}, 0) in samples
    assert ("lat_bucket", {"route": "/b", "le": "1.0"}, 1) in samples


def test_counter_keys_labels_in_any_order_as_one_series():
    c = Counter("calls_total", "calls")
    c.inc(route="/x", status=200)
    c.inc(2, status=200, route="/x")
    assert _samples(c.family()) == [("calls_total", {"route": "/x", "status": "200"}, 3.0)]


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_family_has_help_and_type_and_labels_round_trip():
    metrics = Metrics()
    metrics.requests.inc(route=NASTY, status="200")
    metrics.latency.observe(0.003, route=NASTY)
    metrics.predictions.inc(source="workflow", outcome="used")
    worker = SimpleNamespace(url="http://w:1", healthy=True, in_flight=2, load={"num_reqs": 3, "num_tokens": 40})
    text = metrics.render(SimpleNamespace(workers={"http://w:1": worker}), running_workflows=1).decode()
    families = _families(text)
    for family in families.values():
        assert family.documentation, family.name
        assert family.type != "unknown", family.name
    (sample,) = families["agentgate_gateway_requests"].samples
    assert sample.labels == {"route": NASTY, "status": "200"} and sample.value == 1.0
    buckets = {s.labels["le"]: s.value for s in families["agentgate_gateway_request_seconds"].samples
               if s.name.endswith("_bucket")}
    assert buckets["0.0025"] == 0 and buckets["0.005"] == 1 and buckets["+Inf"] == 1
    assert families["agentgate_gateway_prediction_precision"].samples[0].value == 1.0
    assert [(s.labels, s.value) for s in families["agentgate_gateway_worker_in_flight"].samples] == \
        [({"worker": "http://w:1"}, 2.0)]
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert "python_gc_objects_collected" in families and "python_info" in families


def test_a_counter_incremented_with_fewer_labels_exposes_the_missing_one_empty():
    metrics = Metrics()
    metrics.prefetches.inc(outcome="ok")
    metrics.prefetches.inc(outcome="ok", worker="w")
    text = metrics.render(SimpleNamespace(workers={}), running_workflows=0).decode()
    family = _families(text)["agentgate_gateway_prefetches"]
    samples = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
    assert samples == {(("outcome", "ok"), ("worker", "")): 1.0, (("outcome", "ok"), ("worker", "w")): 1.0}
