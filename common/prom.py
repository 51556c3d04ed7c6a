"""Prometheus exposition through prometheus_client, shared by the worker and the gateway.

Both keep their numbers in their own objects (the engine thread's EngineStats, the gateway's
Metrics) and turn them into metric families at scrape time; prometheus_client writes the text
(HELP and TYPE for every family, escaped label values) and adds the process metrics
(process_cpu_seconds_total, process_resident_memory_bytes, ...), Python's GC and platform info.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# The text format every Prometheus (and promtool) reads; the families written are all in it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_RUNTIME = (ProcessCollector(registry=None), PlatformCollector(registry=None),
            GCCollector(registry=CollectorRegistry()))  # it insists on registering somewhere


class _Families:
    """A collector for one scrape: the families computed for it."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(families: Iterable[Metric]) -> bytes:
    """The Prometheus text of `families` followed by the process, GC and platform metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families)))
    for collector in _RUNTIME:
        registry.register(collector)
    return generate_latest(registry)


def gauge(name: str, help_: str, labels: dict[str, str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def counter(name: str, help_: str, labels: dict[str, str], value: float) -> CounterMetricFamily:
    """`name` ends in _total (as exposed); prometheus_client keeps the family's name without it."""
    family = CounterMetricFamily(name.removesuffix("_total"), help_, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def histogram(name: str, help_: str, labels: dict[str, str], bounds, counts, total: float) -> HistogramMetricFamily:
    """`counts` per bucket, not cumulative, with the one above every bound last (as the engine keeps them)."""
    family = HistogramMetricFamily(name, help_, labels=list(labels))
    family.add_metric(list(labels.values()), cumulative_buckets(bounds, counts), total)
    return family


def cumulative_buckets(bounds, counts) -> list[tuple[str, float]]:
    buckets, acc = [], 0
    for bound, count in zip(bounds, counts):
        acc += count
        buckets.append((_bound(bound), acc))
    buckets.append(("+Inf", acc + sum(counts[len(bounds):])))
    return buckets


def _bound(bound: float) -> str:
    return repr(float(bound))
