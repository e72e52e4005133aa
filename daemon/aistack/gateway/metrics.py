"""The gateway's Prometheus metrics. Every label value comes from a fixed set: never a
collection name, a path or an address a client chose, so a client cannot grow the series."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

QUERY_SIZE_BUCKETS = (100, 500, 1000, 5000, 10000)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.validation_failures = Counter(
            "aidb_query_validation_failures",
            "Requests rejected (or, with deny_action=log, flagged) by validation, by rule",
            ["reason"],
            registry=registry,
        )
        self.query_size = Histogram(
            "aidb_query_size_bytes",
            "Size in bytes (UTF-8) of the query of each valid search",
            buckets=QUERY_SIZE_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "aistack_http_requests",
            "HTTP requests answered, by endpoint (route template) and status",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "aistack_http_request_duration_seconds",
            "Time to answer, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rate_limited = Counter(
            "aistack_rate_limited_requests",
            "Requests answered 429, by the window that was exhausted",
            ["window"],
            registry=registry,
        )
        self.rate_limit_clients = Gauge(
            "aistack_rate_limit_tracked_clients",
            "Clients the in-process rate limiter holds state for",
            registry=registry,
        )
        # labels() takes a lock and builds a key on every call (about 9 us); every label
        # set here is small and fixed, so each child is looked up once and kept.
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._counter_children: dict[tuple[Counter, str], Any] = {}
        self.dependency_errors = Counter(
            "aistack_dependency_unavailable",
            "Requests answered 503 because a dependency did not answer",
            ["dependency"],
            registry=registry,
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        children = self._request_children.get((endpoint, status))
        if children is None:
            children = (
                self.requests.labels(endpoint, str(status)),
                self.latency.labels(endpoint),
            )
            self._request_children[(endpoint, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def _count(self, counter: Counter, label: str) -> None:
        child = self._counter_children.get((counter, label))
        if child is None:
            child = self._counter_children[(counter, label)] = counter.labels(label)
        child.inc()

    def rejected(self, reason: str) -> None:
        self._count(self.validation_failures, reason)

    def limited(self, window: str) -> None:
        self._count(self.rate_limited, window)

    def dependency_down(self, dependency: str) -> None:
        self._count(self.dependency_errors, dependency)
