"""Metrics kept in plain fields on the hot path and exposed by collectors at scrape time.

Incrementing a Python int costs nanoseconds; a prometheus_client labelled child
costs a lock and a dict lookup. So the request path only bumps fields here, and
``ProxyCollector`` / ``BackendCollector`` turn them into Prometheus families when
``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from inferno.registry.breaker import BreakerState

if TYPE_CHECKING:
    from inferno.registry.registry import WorkerRegistry

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Histogram:
    """Fixed-bucket histogram with cumulative export."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", self.count))
        return out


class BackendStats:
    """Per-backend counters at the proxy."""

    __slots__ = ("errors", "latency", "requests")

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.latency = Histogram()


class ProxyStats:
    """Everything the proxy counts. Mutated only from the event loop."""

    def __init__(self) -> None:
        self.backends: dict[str, BackendStats] = {}
        #: requests answered without reaching a backend, by status
        self.local_responses: dict[int, int] = {}
        self.in_flight = 0
        self.retries = 0

    def backend(self, address: str) -> BackendStats:
        stats = self.backends.get(address)
        if stats is None:
            stats = self.backends[address] = BackendStats()
        return stats

    def record(self, address: str, status: int, duration_s: float) -> None:
        stats = self.backend(address)
        stats.requests[status] = stats.requests.get(status, 0) + 1
        stats.latency.observe(duration_s)

    def record_error(self, address: str, reason: str) -> None:
        stats = self.backend(address)
        stats.errors[reason] = stats.errors.get(reason, 0) + 1

    def record_local(self, status: int) -> None:
        self.local_responses[status] = self.local_responses.get(status, 0) + 1


class ProxyCollector(Collector):
    def __init__(self, stats: ProxyStats, registry: WorkerRegistry) -> None:
        self._stats = stats
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        requests = CounterMetricFamily(
            "inferno_requests",
            "Requests answered, by backend and HTTP status",
            labels=["backend", "code"],
        )
        errors = CounterMetricFamily(
            "inferno_request_errors",
            "Failed upstream attempts, by backend and reason",
            labels=["backend", "reason"],
        )
        latency = HistogramMetricFamily(
            "inferno_request_duration_seconds",
            "Time from request arrival to the end of the response, by backend",
            labels=["backend"],
        )
        for address, backend in stats.backends.items():
            for code, count in backend.requests.items():
                requests.add_metric([address, str(code)], count)
            for reason, count in backend.errors.items():
                errors.add_metric([address, reason], count)
            latency.add_metric([address], backend.latency.buckets(), backend.latency.sum)
        for code, count in stats.local_responses.items():
            requests.add_metric(["none", str(code)], count)
        yield requests
        yield errors
        yield latency
        yield CounterMetricFamily(
            "inferno_retries", "Requests re-sent to another backend", value=stats.retries
        )
        yield GaugeMetricFamily(
            "inferno_in_flight_requests",
            "Requests being served by the proxy",
            value=stats.in_flight,
        )
        per_backend = GaugeMetricFamily(
            "inferno_backend_in_flight_requests",
            "In-flight requests per backend at this proxy",
            labels=["backend"],
        )
        healthy = GaugeMetricFamily(
            "inferno_backend_healthy",
            "1 if the backend is routable, else 0",
            labels=["backend", "node_id", "status"],
        )
        circuit = GaugeMetricFamily(
            "inferno_backend_circuit_state",
            "Circuit breaker state per backend (1 for the current state)",
            labels=["backend", "state"],
        )
        suspect = GaugeMetricFamily(
            "inferno_backend_suspect", "1 if the backend is slow but alive", labels=["backend"]
        )
        for worker in self._registry.all():
            per_backend.add_metric([worker.address], worker.in_flight)
            healthy.add_metric(
                [worker.address, worker.node_id, worker.status.value], 1 if worker.routable else 0
            )
            for state in BreakerState:
                circuit.add_metric([worker.address, state.value], 1 if worker.breaker.state is state else 0)
            suspect.add_metric([worker.address], 1 if worker.suspect else 0)
        yield per_backend
        yield healthy
        yield circuit
        yield suspect
        by_status = GaugeMetricFamily("inferno_backends", "Known backends by status", labels=["status"])
        for status, count in self._registry.counts().items():
            if status != "total":
                by_status.add_metric([status], count)
        yield by_status


class CallbackCollector(Collector):
    """Wraps a function that yields metric families (used by the backend)."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self._fn = fn

    def collect(self) -> Iterator[Metric]:
        yield from self._fn()


def new_registry(*collectors: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry
