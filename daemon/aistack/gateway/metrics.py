"""The gateway's Prometheus metrics. Every label value comes from a fixed set: never a
collection name, a path or an address a client chose, so a client cannot grow the series.

The series touched on every request (answers by endpoint and status, their latency, and
the refusals by reason, window and dependency) are plain dicts of numbers that a custom
collector turns into metric families at scrape time. prometheus_client's own Counter and
Histogram take a lock and check observability on every call: four of those per request
cost about as much as the rest of a refused request's own work (measured under wrk).
The counts are only ever changed on the event loop's thread, so no lock is needed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

QUERY_SIZE_BUCKETS = (100, 500, 1000, 5000, 10000)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LabelledCounter:
    """A counter family with one label, kept as {label value: count}."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.counts: dict[str, int] = {}

    def inc(self, value: str) -> None:
        self.counts[value] = self.counts.get(value, 0) + 1

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in sorted(self.counts.items()):
            family.add_metric([value], count)
        return family


class RequestTimings:
    """Answers by (endpoint, status) and their latency by endpoint: one bucket list per
    endpoint, made cumulative only when scraped."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, int], int] = {}
        # endpoint -> [count per bucket (the last one is +Inf)..., sum of seconds]
        self.latency: dict[str, list[float]] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        self.answers[key] = self.answers.get(key, 0) + 1
        buckets = self.latency.get(endpoint)
        if buckets is None:
            buckets = self.latency[endpoint] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        buckets[-1] += seconds

    def families(self) -> Iterator[Metric]:
        answers = CounterMetricFamily(
            "aistack_http_requests",
            "HTTP requests answered, by endpoint (route template) and status",
            labels=["endpoint", "status"],
        )
        for (endpoint, status), count in sorted(self.answers.items()):
            answers.add_metric([endpoint, str(status)], count)
        yield answers
        latency = HistogramMetricFamily(
            "aistack_http_request_duration_seconds",
            "Time to answer, by endpoint",
            labels=["endpoint"],
        )
        bounds = [floatToGoString(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
        for endpoint, buckets in sorted(self.latency.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0.0
            for bound, in_bucket in zip(bounds, buckets[:-1], strict=True):
                running += in_bucket
                cumulative.append((bound, running))
            latency.add_metric([endpoint], cumulative, sum_value=buckets[-1])
        yield latency


class GatewayMetrics(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.validation_failures = LabelledCounter(
            "aidb_query_validation_failures",
            "Requests rejected (or, with deny_action=log, flagged) by validation, by rule",
            "reason",
        )
        self.rate_limited = LabelledCounter(
            "aistack_rate_limited_requests",
            "Requests answered 429, by the window that was exhausted",
            "window",
        )
        self.rate_limit_dry_run = LabelledCounter(
            "aistack_rate_limit_dry_run_refusals",
            'Requests rate_limit_action = "log" answered that the limit would have refused',
            "window",
        )
        self.rate_limit_failed_open = 0
        self.dependency_errors = LabelledCounter(
            "aistack_dependency_unavailable",
            "Requests answered 503 because a dependency did not answer",
            "dependency",
        )
        self.timings = RequestTimings()
        self.connections_refused = 0
        registry.register(self)
        # Touched only by valid requests (which cost far more) and by scrapes.
        self.query_size = Histogram(
            "aidb_query_size_bytes",
            "Size in bytes (UTF-8) of the query of each valid search",
            buckets=QUERY_SIZE_BUCKETS,
            registry=registry,
        )
        self.rate_limit_clients = Gauge(
            "aistack_rate_limit_tracked_clients",
            "Clients the in-process rate limiter holds state for",
            registry=registry,
        )

    def collect(self) -> Iterator[Metric]:
        yield self.validation_failures.family()
        yield from self.timings.families()
        yield self.rate_limited.family()
        yield self.rate_limit_dry_run.family()
        failed_open = CounterMetricFamily(
            "aistack_rate_limit_failed_open",
            "Requests admitted unlimited while the rate-limit storage was down (failure open)",
        )
        failed_open.add_metric([], self.rate_limit_failed_open)
        yield failed_open
        yield self.dependency_errors.family()
        refused = CounterMetricFamily(
            "aistack_connections_refused",
            "Connections answered 503 because their address held max_connections_per_client",
        )
        refused.add_metric([], self.connections_refused)
        yield refused

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.timings.observe(endpoint, status, seconds)

    def rejected(self, reason: str) -> None:
        self.validation_failures.inc(reason)

    def limited(self, window: str) -> None:
        self.rate_limited.inc(window)

    def dependency_down(self, dependency: str) -> None:
        self.dependency_errors.inc(dependency)

    def connection_refused(self) -> None:
        self.connections_refused += 1
