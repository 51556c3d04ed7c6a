"""Prometheus metrics of the gateway, rendered by hand (text format 0.0.4).

Counters and histograms live on one `Metrics` object hung off the app; gauges
(workers, load, running workflows) are read from the live objects at scrape time.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Counter:
    def __init__(self, name: str, help_: str):
        self.name, self.help = name, help_
        self.values: dict[tuple, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(dict(k))} {v}" for k, v in sorted(self.values.items())]
        return lines


class Histogram:
    def __init__(self, name: str, help_: str, buckets=LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help_, tuple(buckets)
        self.series: dict[tuple, list] = {}  # labels → [bucket counts..., sum, count]

    def observe(self, value: float, **labels) -> None:
        key = tuple(sorted(labels.items()))
        s = self.series.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
        for i in range(bisect.bisect_left(self.buckets, value), len(self.buckets)):
            s[i] += 1
        s[-2] += value
        s[-1] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, s in sorted(self.series.items()):
            labels = dict(key)
            for bound, count in zip(self.buckets, s):
                lines.append(f"{self.name}_bucket{_labels({**labels, 'le': bound})} {count}")
            lines.append(f"{self.name}_bucket{_labels({**labels, 'le': '+Inf'})} {s[-1]}")
            lines.append(f"{self.name}_sum{_labels(labels)} {s[-2]}")
            lines.append(f"{self.name}_count{_labels(labels)} {s[-1]}")
        return lines


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

    def observe_usage(self, usage: dict | None) -> None:
        if not usage:
            return
        self.prompt_tokens.inc(usage.get("prompt_tokens") or 0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        self.cached_tokens.inc(cached)

    def render(self, pool, running_workflows: int) -> str:
        lines = []
        for metric in (self.requests, self.latency, self.workflows, self.nodes, self.prompt_tokens,
                       self.cached_tokens, self.routed):
            lines += metric.render()
        lines += ["# HELP agentgate_gateway_workflows_running Workflows this replica runs now",
                  "# TYPE agentgate_gateway_workflows_running gauge",
                  f"agentgate_gateway_workflows_running {running_workflows}"]
        for name, help_, value in (
                ("worker_healthy", "1 when the worker takes calls", lambda w: int(w.healthy)),
                ("worker_in_flight", "Calls this gateway has open on the worker", lambda w: w.in_flight),
                ("worker_num_reqs", "Requests the worker reported in /get_load", lambda w: w.load.get("num_reqs", 0)),
                ("worker_num_tokens", "Tokens the worker reported in /get_load",
                 lambda w: w.load.get("num_tokens", 0))):
            lines += [f"# HELP agentgate_gateway_{name} {help_}", f"# TYPE agentgate_gateway_{name} gauge"]
            lines += [f"agentgate_gateway_{name}{_labels({'worker': w.url})} {value(w)}"
                      for w in pool.workers.values()]
        return "\n".join(lines) + "\n"
