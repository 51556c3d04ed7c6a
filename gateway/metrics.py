"""Prometheus metrics of the gateway, written by prometheus_client (common/prom.py).

Counters and histograms live on one `Metrics` object hung off the app; gauges
(workers, load, running workflows) are read from the live objects at scrape time.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from common.prom import cumulative_buckets, exposition

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Counter:
    def __init__(self, name: str, help_: str):
        self.name, self.help = name, help_
        self.values: dict[tuple, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def family(self) -> Metric:
        return _family(CounterMetricFamily, self.name.removesuffix("_total"), self.help,
                       [(dict(k), v) for k, v in sorted(self.values.items())])


class Histogram:
    def __init__(self, name: str, help_: str, buckets=LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help_, tuple(buckets)
        # labels → [count per bucket (not cumulative; the last is above every bound)..., sum, count].
        # One increment per observation; family() sums them up into Prometheus' cumulative buckets.
        self.series: dict[tuple, list] = {}

    def observe(self, value: float, **labels) -> None:
        key = tuple(sorted(labels.items()))
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [0] * (len(self.buckets) + 1) + [0.0, 0]
        s[bisect.bisect_left(self.buckets, value)] += 1
        s[-2] += value
        s[-1] += 1

    def family(self) -> Metric:
        return _family(HistogramMetricFamily, self.name, self.help,
                       [(dict(k), (cumulative_buckets(self.buckets, s[:-2]), s[-2]))
                        for k, s in sorted(self.series.items())])


def _family(kind, name: str, help_: str, samples: list[tuple[dict, object]]) -> Metric:
    """One family of `kind`; a label a sample lacks is exposed empty (Prometheus' "no such label")."""
    names = sorted({n for labels, _ in samples for n in labels})
    family = kind(name, help_, labels=names)
    for labels, value in samples:
        if kind is HistogramMetricFamily:
            family.add_metric([str(labels.get(n, "")) for n in names], *value)
        else:
            family.add_metric([str(labels.get(n, "")) for n in names], value)
    return family


class Metrics:
    def __init__(self):
        self.requests = Counter("agentgate_gateway_requests_total", "HTTP requests by route and status")
        self.latency = Histogram("agentgate_gateway_request_seconds", "HTTP request latency by route")
        self.workflows = Counter("agentgate_gateway_workflows_total", "Workflows by outcome")
        self.nodes = Counter("agentgate_gateway_nodes_total", "Workflow nodes by outcome")
        self.prompt_tokens = Counter("agentgate_gateway_prompt_tokens_total", "Prompt tokens of routed calls")
        self.cached_tokens = Counter("agentgate_gateway_cached_tokens_total",
                                     "Prompt tokens the workers served from their prefix cache")
        self.routed = Counter("agentgate_gateway_routed_total", "Calls routed, by worker")
        # Redis outages survived (gateway/state/journal.py).
        self.state_retries = Counter("agentgate_gateway_state_write_retries_total",
                                     "State writes to Redis retried after a failure")
        self.events_dropped = Counter("agentgate_gateway_events_dropped_total",
                                      "Token events dropped because the outage buffer was full")
        # Agent awareness (gateway/awareness/runs.py, prefetch.py, tagged.py).
        self.predictions = Counter("agentgate_gateway_predictions_total",
                                   "Predicted calls whose prefix was prefetched, by source (workflow|client) and "
                                   "outcome (used: the call came; wasted: it did not)")
        self.predictable_calls = Counter("agentgate_gateway_predictable_calls_total",
                                         "Calls that could have been predicted (a workflow node with inputs, an "
                                         "agent's call after its first), by source and whether they were")
        self.prefetches = Counter("agentgate_gateway_prefetches_total", "Prefetch/pin requests to workers, by outcome")
        self.prefetch_deferred = Counter("agentgate_gateway_prefetch_deferred_total",
                                         "Times a worker's queue was too long to send it a prefetch")
        self.prefetch_tokens = Counter("agentgate_gateway_prefetch_tokens_total",
                                       "Prefix tokens made resident by prefetches, by where they came from")
        self.prefetch_wasted_tokens = Counter("agentgate_gateway_prefetch_wasted_tokens_total",
                                              "Tokens computed by prefetches whose call never used them")
        self.prefetch_hits = Counter("agentgate_gateway_prefetch_hits_total",
                                     "Prefetched calls by whether the worker's cached_tokens covered the prefix")
        self.prefetch_saved_tokens = Counter("agentgate_gateway_prefetch_saved_tokens_total",
                                             "cached_tokens of calls whose prefix was prefetched")
        self.pin_seconds = Counter("agentgate_gateway_pin_seconds_total", "Seconds pins were held, summed")
        self.pin_token_seconds = Counter("agentgate_gateway_pin_token_seconds_total",
                                         "Pinned tokens times the seconds they were held")

    def observe_usage(self, usage: dict | None) -> None:
        if not usage:
            return
        self.prompt_tokens.inc(usage.get("prompt_tokens") or 0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        self.cached_tokens.inc(cached)

    def prediction_quality(self, source: str) -> tuple[float | None, float | None]:
        """(precision, recall) of the predictions from `source` so far; None before there is any."""
        def total(counter: Counter, **match) -> float:
            return sum(v for k, v in counter.values.items() if all((n, m) in k for n, m in match.items()))

        used = total(self.predictions, source=source, outcome="used")
        wasted = total(self.predictions, source=source, outcome="wasted")
        hit = total(self.predictable_calls, source=source, predicted="true")
        calls = total(self.predictable_calls, source=source)
        return (used / (used + wasted) if used + wasted else None, hit / calls if calls else None)

    def _prediction_quality(self) -> list[Metric]:
        families = []
        for i, name in enumerate(("precision", "recall")):
            samples = [({"source": source}, self.prediction_quality(source)[i]) for source in ("workflow", "client")]
            families.append(_family(GaugeMetricFamily, f"agentgate_gateway_prediction_{name}",
                                    f"Prediction {name} so far, by source",
                                    [(labels, value) for labels, value in samples if value is not None]))
        return families

    def render(self, pool, running_workflows: int) -> bytes:
        families = [metric.family() for metric in (
            self.requests, self.latency, self.workflows, self.nodes, self.prompt_tokens, self.cached_tokens,
            self.routed, self.state_retries, self.events_dropped, self.predictions, self.predictable_calls,
            self.prefetches, self.prefetch_deferred, self.prefetch_tokens, self.prefetch_wasted_tokens,
            self.prefetch_hits, self.prefetch_saved_tokens, self.pin_seconds, self.pin_token_seconds)]
        families += self._prediction_quality()
        families.append(_family(GaugeMetricFamily, "agentgate_gateway_workflows_running",
                                "Workflows this replica runs now", [({}, running_workflows)]))
        for name, help_, value in (
                ("worker_healthy", "1 when the worker takes calls", lambda w: int(w.healthy)),
                ("worker_in_flight", "Calls this gateway has open on the worker", lambda w: w.in_flight),
                ("worker_num_reqs", "Requests the worker reported in /get_load", lambda w: w.load.get("num_reqs", 0)),
                ("worker_num_tokens", "Tokens the worker reported in /get_load",
                 lambda w: w.load.get("num_tokens", 0))):
            families.append(_family(GaugeMetricFamily, f"agentgate_gateway_{name}", help_,
                                    [({"worker": w.url}, value(w)) for w in pool.workers.values()]))
        return exposition(families)
