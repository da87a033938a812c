"""InferenceService: the backend's engines, admission to their slots, and vitals.

A backend may run several engines (one model each). Each has its own slots; the
counters are kept per model for the metrics and summed for the vitals.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from inferno.engines.base import Engine
from inferno.errors import ConfigError, ModelNotFound
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


@dataclass(slots=True)
class ModelCounters:
    requests_served: int = 0
    requests_failed: int = 0
    tokens_generated: int = 0
    #: texts embedded or images classified
    items: int = 0
    latency: Histogram = field(default_factory=Histogram)


class InferenceService:
    """Bounds concurrent work to each engine's slots and counts everything."""

    def __init__(self, engines: Sequence[Engine], *, clock: Callable[[], float] = time.monotonic) -> None:
        if not engines:
            raise ConfigError("a backend needs at least one engine")
        self.engines: dict[str, Engine] = {}
        for engine in engines:
            if engine.model_id in self.engines:
                raise ConfigError(f"two engines serve the model {engine.model_id!r}")
            self.engines[engine.model_id] = engine
        #: the first engine: what /health names
        self.engine = engines[0]
        self._slots = {model: asyncio.Semaphore(e.slots) for model, e in self.engines.items()}
        self.per_model = {model: ModelCounters() for model in self.engines}
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

    def rename(self, engine: Engine, model_id: str) -> None:
        """Serve ``engine``'s model as ``model_id`` (``--model-id``), before it is ready."""
        old = engine.model_id
        engine.model_id = model_id
        self.engines = {model_id if k == old else k: e for k, e in self.engines.items()}
        self._slots = {model_id if k == old else k: v for k, v in self._slots.items()}
        self.per_model = {model_id if k == old else k: v for k, v in self.per_model.items()}

    def engine_for(self, model: str | None, task: str) -> Engine:
        """The engine serving ``model`` (or, with no model, the first one doing ``task``)."""
        engine = self.engines.get(model) if model is not None else None
        if engine is None and model is None:
            engine = next((e for e in self.engines.values() if e.task == task), None)
        if engine is None or engine.task != task:
            served = [f"{m} ({e.task})" for m, e in self.engines.items()]
            raise ModelNotFound(
                f"the requested {task} model is not served here; this backend serves {served}",
                param="model",
            )
        return engine

    def status(self) -> str:
        """``loading``, ``draining`` or ``ok``: what /health reports."""
        if not self.ready:
            return "loading"
        return "draining" if self.draining else "ok"

    @contextlib.asynccontextmanager
    async def slot(self, model: str) -> AsyncIterator[float]:
        """Wait for a free slot of ``model``'s engine; yields the seconds spent waiting."""
        slots = self._slots[model]
        waited = time.perf_counter()
        self.queued += 1
        try:
            await slots.acquire()
        finally:
            self.queued -= 1
        self.in_flight += 1
        try:
            yield time.perf_counter() - waited
        finally:
            self.in_flight -= 1
            slots.release()

    def failed(self, model: str) -> None:
        self.requests_failed += 1
        self.per_model[model].requests_failed += 1

    def completed(
        self, tokens: int, duration_s: float, generation_s: float, *, model: str = "", items: int = 0
    ) -> None:
        self.requests_served += 1
        counters = self.per_model.get(model)
        if counters is not None:
            counters.requests_served += 1
            counters.tokens_generated += tokens
            counters.items += items
            counters.latency.observe(duration_s)
        if tokens >= 4 and generation_s > 0:
            # EWMA of one generation's speed: the proxy sizes per-try timeouts from it.
            speed = tokens / generation_s
            self.decode_tokens_per_s = (
                speed if not self.decode_tokens_per_s else 0.8 * self.decode_tokens_per_s + 0.2 * speed
            )
        self.tokens_generated += tokens
        self.tokens.add(tokens)
        self.latency.observe(duration_s)

    @property
    def slots(self) -> int:
        """Requests run at once, over every engine: what heartbeats and /health advertise."""
        return sum(e.slots for e in self.engines.values())

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
            slots=self.slots,
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
        by_model = ["node_id", "model", "task"]
        served = CounterMetricFamily("inferno_backend_model_requests", "Requests completed", labels=by_model)
        failed = CounterMetricFamily(
            "inferno_backend_model_request_errors", "Requests failed", labels=by_model
        )
        items = CounterMetricFamily(
            "inferno_backend_model_items", "Texts embedded or images classified", labels=by_model
        )
        durations = HistogramMetricFamily(
            "inferno_backend_model_duration_seconds", "Time per request, per model", labels=by_model
        )
        for model, counters in s.per_model.items():
            key = [self._node, model, s.engines[model].task]
            served.add_metric(key, counters.requests_served)
            failed.add_metric(key, counters.requests_failed)
            items.add_metric(key, counters.items)
            durations.add_metric(key, counters.latency.buckets(), counters.latency.sum)
        yield from (served, failed, items, durations)
