"""Metrics kept in plain fields on the hot path and exposed by collectors at scrape time.

Incrementing a Python int costs nanoseconds; a prometheus_client labelled child
costs a lock and a dict lookup. So the request path only bumps fields here, and
collectors (``inferno.proxy.metrics.ProxyCollector``,
``inferno.backend.service.BackendCollector``) turn them into Prometheus families
when ``/metrics`` is scraped. Nothing here knows the registry or the proxy.
"""

from __future__ import annotations

import bisect

from prometheus_client.registry import Collector, CollectorRegistry

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

    __slots__ = ("errors", "latency", "requests", "tpot_count", "tpot_sum", "ttft_count", "ttft_sum")

    def __init__(self) -> None:
        #: (route path, served model, HTTP status) -> responses
        self.requests: dict[tuple[bytes, str, int], int] = {}
        self.errors: dict[str, int] = {}
        self.latency = Histogram()
        #: streams served: sums for the mean time to first token and per output token
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.tpot_sum = 0.0
        self.tpot_count = 0

    def served(self) -> int:
        return sum(self.requests.values())


class ModelStats:
    """Per-model counters at the proxy."""

    __slots__ = ("latency", "requests")

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}
        self.latency = Histogram()


class ProxyStats:
    """Everything the proxy counts. Mutated only from the event loop."""

    def __init__(self) -> None:
        self.backends: dict[str, BackendStats] = {}
        #: requests answered without reaching a backend, by (route, status)
        self.local_responses: dict[tuple[str, int], int] = {}
        self.in_flight = 0
        self.retries = 0
        #: requests that went to a fallback model
        self.fallbacks = 0
        #: requests refused with 508 because their ``Via`` already named this proxy
        self.loops = 0
        #: streams continued on another backend after theirs failed mid-stream
        self.stream_migrations = 0
        #: streams that failed mid-stream and could not be migrated, by reason
        self.stream_migration_failures: dict[str, int] = {}
        #: per served model: requests by status and latency
        self.models: dict[str, ModelStats] = {}
        #: streams, per model: time to the first token and between tokens
        self.ttft: dict[str, Histogram] = {}
        self.tpot: dict[str, Histogram] = {}
        #: requests refused with 429 by admission, by (requested model label, reason)
        self.rejections: dict[tuple[str, str], int] = {}

    def backend(self, address: str) -> BackendStats:
        stats = self.backends.get(address)
        if stats is None:
            stats = self.backends[address] = BackendStats()
        return stats

    def record(
        self, address: str, status: int, duration_s: float, model: str = "", route: bytes = b""
    ) -> None:
        stats = self.backend(address)
        key = (route, model, status)
        stats.requests[key] = stats.requests.get(key, 0) + 1
        stats.latency.observe(duration_s)
        if model:
            per_model = self.models.get(model)
            if per_model is None:
                per_model = self.models[model] = ModelStats()
            per_model.requests[status] = per_model.requests.get(status, 0) + 1
            per_model.latency.observe(duration_s)

    def record_stream(self, address: str, model: str, ttft_s: float, tpot_s: float | None) -> None:
        backend = self.backend(address)
        backend.ttft_sum += ttft_s
        backend.ttft_count += 1
        ttft = self.ttft.get(model)
        if ttft is None:
            ttft = self.ttft[model] = Histogram()
            self.tpot[model] = Histogram()
        ttft.observe(ttft_s)
        if tpot_s is not None:
            backend.tpot_sum += tpot_s
            backend.tpot_count += 1
            self.tpot[model].observe(tpot_s)

    def record_error(self, address: str, reason: str) -> None:
        stats = self.backend(address)
        stats.errors[reason] = stats.errors.get(reason, 0) + 1

    def record_rejection(self, model: str, reason: str) -> None:
        key = (model, reason)
        self.rejections[key] = self.rejections.get(key, 0) + 1

    def record_local(self, status: int, route: str = "other") -> None:
        key = (route, status)
        self.local_responses[key] = self.local_responses.get(key, 0) + 1


def new_registry(*collectors: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry
