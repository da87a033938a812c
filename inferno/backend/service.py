"""InferenceService: admission to engine slots, and the backend's vitals."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from inferno.engines.base import TextGenerationEngine
from inferno.observability.metrics import Histogram
from inferno.schemas.registration import NodeVitals


class RateMeter:
    """Tokens per second over a sliding window, with an injected clock."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window_s
        self._clock = clock
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0

    def add(self, amount: int) -> None:
        now = self._clock()
        self._events.append((now, amount))
        self._total += amount
        self._trim(now)

    def rate(self) -> float:
        now = self._clock()
        self._trim(now)
        return self._total / self._window

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self._window:
            self._total -= self._events.popleft()[1]


class InferenceService:
    """Bounds concurrent generations to the engine's slots and counts everything."""

    def __init__(self, engine: TextGenerationEngine, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self._slots = asyncio.Semaphore(engine.slots)
        self.in_flight = 0
        self.queued = 0
        self.requests_served = 0
        self.requests_failed = 0
        self.tokens_generated = 0
        self.draining = False
        #: False until the engine has loaded its model
        self.ready = False
        self.decode_tokens_per_s = 0.0
        self.tokens = RateMeter(clock=clock)
        self.latency = Histogram()
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # prime: the next call reports usage since now

    def status(self) -> str:
        """``loading``, ``draining`` or ``ok``: what /health reports."""
        if not self.ready:
            return "loading"
        return "draining" if self.draining else "ok"

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Wait for a free slot; yields the seconds spent waiting."""
        waited = time.perf_counter()
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.in_flight += 1
        try:
            yield time.perf_counter() - waited
        finally:
            self.in_flight -= 1
            self._slots.release()

    def completed(self, tokens: int, duration_s: float, generation_s: float) -> None:
        self.requests_served += 1
        if tokens >= 4 and generation_s > 0:
            # EWMA of one generation's speed: the proxy sizes per-try timeouts from it.
            speed = tokens / generation_s
            self.decode_tokens_per_s = (
                speed if not self.decode_tokens_per_s else 0.8 * self.decode_tokens_per_s + 0.2 * speed
            )
        self.tokens_generated += tokens
        self.tokens.add(tokens)
        self.latency.observe(duration_s)

    def vitals(self) -> NodeVitals:
        with self._process.oneshot():
            cpu = self._process.cpu_percent(None)
            rss = self._process.memory_info().rss
        return NodeVitals(
            in_flight=self.in_flight,
            queued=self.queued,
            requests_served=self.requests_served,
            tokens_per_s=round(self.tokens.rate(), 2),
            cpu_percent=cpu,
            rss_bytes=rss,
            slots=self.engine.slots,
            decode_tokens_per_s=round(self.decode_tokens_per_s, 2),
        )


class BackendCollector(Collector):
    def __init__(self, service: InferenceService, node_id: str) -> None:
        self._service = service
        self._node = node_id

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s = self._service
        v = s.vitals()
        labels = ["node_id"]
        node = [self._node]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(node, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(node, value)
            return family

        yield counter("inferno_backend_requests", "Generations completed", s.requests_served)
        yield counter("inferno_backend_request_errors", "Generations failed", s.requests_failed)
        yield counter("inferno_backend_tokens_generated", "Completion tokens generated", s.tokens_generated)
        yield gauge("inferno_backend_in_flight_requests", "Generations running", v.in_flight)
        yield gauge("inferno_backend_queued_requests", "Requests waiting for a slot", v.queued)
        yield gauge("inferno_backend_slots", "Concurrent generation slots", v.slots)
        yield gauge("inferno_backend_tokens_per_second", "Tokens/s over the last 10 s", v.tokens_per_s)
        yield gauge("inferno_backend_cpu_percent", "Process CPU use since last scrape", v.cpu_percent)
        yield gauge("inferno_backend_memory_rss_bytes", "Resident memory", v.rss_bytes)
        yield gauge("inferno_backend_draining", "1 while draining", 1 if s.draining else 0)
        hist = HistogramMetricFamily(
            "inferno_backend_inference_duration_seconds",
            "Time from slot acquired to generation done",
            labels=labels,
        )
        hist.add_metric(node, s.latency.buckets(), s.latency.sum)
        yield hist
