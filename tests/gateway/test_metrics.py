"""The gateway's hand-rolled Prometheus text: cumulative histogram buckets, labelled counters."""

from __future__ import annotations

from gateway.metrics import Counter, Histogram


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    h = Histogram("lat", "latency", buckets=(0.01, 0.1, 1))
    for value in (0.00390625, 0.0078125, 0.0625, 0.5, 2, 3):  # sums exactly in binary
        h.observe(value, route="/a")
    h.observe(0.2, route="/b")
    lines = h.render()
    assert lines[2:8] == ['lat_bucket{le="0.01",route="/a"} 2', 'lat_bucket{le="0.1",route="/a"} 3',
                          'lat_bucket{le="1",route="/a"} 4', 'lat_bucket{le="+Inf",route="/a"} 6',
                          'lat_sum{route="/a"} 5.57421875', 'lat_count{route="/a"} 6']
    assert 'lat_bucket{le="0.1",route="/b"} 0' in lines and 'lat_bucket{le="1",route="/b"} 1' in lines


def test_counter_keys_labels_in_any_order_as_one_series():
    c = Counter("calls", "calls")
    c.inc(route="/x", status=200)
    c.inc(2, status=200, route="/x")
    assert c.render()[2:] == ['calls{route="/x",status="200"} 3.0']
