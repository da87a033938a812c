"""The dashboard's numbers: sampled once per interval, off the request path.

The request path only bumps the plain counters of ``ProxyStats``. Once per
``interval_s`` a sampler reads those counters (and the registry and the queue)
and turns their differences into one chart point: request rate, error rate and
latency percentiles over a short window. The last ``history_points`` points are
kept so that a dashboard opened after an incident shows what happened.

The full snapshot (backend table, routing shares, usage, new events) is built
only while a dashboard is open, once per tick, and shared by every open one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inferno.config import DashboardConfig
from inferno.http.responses import dumps
from inferno.observability.metrics import LATENCY_BUCKETS_S, ProxyStats
from inferno.proxy.admission import AdmissionController
from inferno.proxy.clients import ClientGate
from inferno.registry.registry import WorkerRegistry

if TYPE_CHECKING:
    from inferno.queues.service import QueueService

logger = logging.getLogger(__name__)

#: ticks over which latency percentiles and error rates are computed
SHORT_WINDOW = 5
#: ticks over which the routing shares are computed
LONG_WINDOW = 60


@dataclass(slots=True)
class Sample:
    """Cumulative counters at one tick."""

    t: float
    total: int
    errors: int
    #: 429 answers (overload, API-key budgets), drawn beside the 5xx
    rejected: int
    latency: list[int]
    #: address -> (responses, failed tries)
    backends: dict[str, tuple[int, int]]
    models: dict[str, int]
    #: model -> its latency histogram's bucket counts (each model has its own chart line)
    model_latency: dict[str, list[int]]


def percentile(counts: list[int], q: float, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> float | None:
    """The ``q`` quantile (0-1) of a bucketed distribution, interpolated within its
    bucket like Prometheus's ``histogram_quantile``; None without observations."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0
    for i, count in enumerate(counts):
        if count and running + count >= rank:
            if i >= len(bounds):
                return bounds[-1]  # the +Inf bucket: the largest finite bound
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * ((rank - running) / count)
        running += count
    return bounds[-1]


class DashboardFeed:
    def __init__(
        self,
        config: DashboardConfig,
        stats: ProxyStats,
        registry: WorkerRegistry,
        admission: AdmissionController,
        gate: ClientGate | None = None,
        *,
        policy: str = "",
        insecure: bool = False,
        wall: Callable[[], float] = time.time,
        queues: QueueService | None = None,
    ) -> None:
        #: the pull queues (their panel), else None
        self._queues = queues
        self._cfg = config
        self._stats = stats
        self._registry = registry
        self._admission = admission
        self._gate = gate
        self._policy = policy
        self._insecure = insecure
        self._wall = wall
        self._started = wall()
        self._samples: deque[Sample] = deque(maxlen=LONG_WINDOW + 1)
        #: chart points, oldest first
        self.history: deque[dict[str, object]] = deque(maxlen=config.history_points)
        self._event_seq = 0
        #: address -> node id, also for backends that have left but still have counters
        self._names: dict[str, str] = {}
        #: the message of the latest tick, shared by all open dashboards
        self.message = b""
        self.clients = 0
        self._tick_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dashboard-feed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.interval_s)
            try:
                self.tick()
            except Exception:
                logger.exception("Dashboard sampler failed; the next tick tries again")

    def tick(self) -> None:
        """Take a sample; with a dashboard open, build and publish the message."""
        point = self.sample()
        if self.clients:
            self.message = dumps({"type": "tick", "point": point, **self.snapshot(self._new_events())})
        else:
            self._event_seq = self._registry.events.last_seq
        event, self._tick_event = self._tick_event, asyncio.Event()
        event.set()

    async def next_message(self) -> bytes:
        """Wait for the next tick's message."""
        await self._tick_event.wait()
        return self.message

    # -- sampling ------------------------------------------------------------------------
    def sample(self) -> dict[str, object]:
        """Read the counters once and append a chart point to the history."""
        stats = self._stats
        latency = [0] * (len(LATENCY_BUCKETS_S) + 1)
        backends: dict[str, tuple[int, int]] = {}
        total = errors = rejected = 0
        for address, backend in stats.backends.items():
            served = 0
            for (_, _, status), count in backend.requests.items():
                served += count
                if status >= 500:
                    errors += count
                elif status == 429:
                    rejected += count
            total += served
            backends[address] = (served, sum(backend.errors.values()))
            for i, count in enumerate(backend.latency.counts):
                latency[i] += count
        for (_, status), count in stats.local_responses.items():
            total += count
            if status >= 500:
                errors += count
            elif status == 429:
                rejected += count
        # A backend that left keeps its node id while the proxy still has its counters.
        names = {a: self._names[a] for a in backends if a in self._names}
        names.update((w.address, w.node_id) for w in self._registry.all())
        self._names = names
        models = {model: sum(m.requests.values()) for model, m in stats.models.items()}
        model_latency = {model: list(m.latency.counts) for model, m in stats.models.items()}
        now = Sample(self._wall(), total, errors, rejected, latency, backends, models, model_latency)
        previous = self._samples[-1] if self._samples else None
        self._samples.append(now)
        short = self._samples[max(0, len(self._samples) - 1 - SHORT_WINDOW)]
        window = [a - b for a, b in zip(now.latency, short.latency, strict=True)]
        elapsed = max(1e-9, now.t - previous.t) if previous is not None else 0.0
        rate = (now.total - previous.total) / elapsed if previous is not None else 0.0
        error_rate = (now.errors - previous.errors) / elapsed if previous is not None else 0.0
        rejected_rate = (now.rejected - previous.rejected) / elapsed if previous is not None else 0.0
        queued = sum(self._admission.queue_sizes().values())
        point: dict[str, object] = {
            "t": round(now.t, 3),
            "rps": round(rate, 3),
            "errors_per_s": round(error_rate, 3),
            "rejected_per_s": round(rejected_rate, 3),
            "p50_ms": _ms(percentile(window, 0.50)),
            "p95_ms": _ms(percentile(window, 0.95)),
            "p99_ms": _ms(percentile(window, 0.99)),
            "in_flight": stats.in_flight,
            "queued": queued,
            "models": _model_percentiles(now, short),
        }
        self.history.append(point)
        return point

    def _new_events(self) -> list[dict[str, object]]:
        events = self._registry.events.since(self._event_seq)
        self._event_seq = self._registry.events.last_seq
        return [e.to_json() for e in events]

    # -- what a dashboard shows ----------------------------------------------------------
    def hello(self) -> bytes:
        """The first message of a newly opened dashboard: history, every kept event and
        the current state."""
        events = [e.to_json() for e in self._registry.events.since(0)]
        return dumps({"type": "hello", "history": list(self.history), **self.snapshot(events)})

    def snapshot(self, events: list[dict[str, object]]) -> dict[str, object]:
        counts = self._registry.counts()
        healthy, total = counts["healthy"], counts["total"]
        status = "unhealthy" if healthy == 0 else "healthy" if healthy == total else "degraded"
        return {
            "health": {
                "status": status,
                "backends": counts,
                "policy": self._policy,
                "insecure": self._insecure,
                "uptime_s": round(self._wall() - self._started, 1),
                "in_flight": self._stats.in_flight,
                "retries": self._stats.retries,
                "fallbacks": self._stats.fallbacks,
                "ejections": self._registry.ejections_total,
            },
            "backends": self._backend_rows(),
            "routing": self._routing(),
            "queue": {
                "depth": self._admission.queue_sizes(),
                "served": {p.name.lower(): n for p, n in self._admission.served_from_queue.items()},
            },
            "usage": {"enabled": self._gate is not None, "rows": self._gate.usage() if self._gate else []},
            "jobqueues": self._jobqueues(),
            "events": events,
        }

    def _jobqueues(self) -> list[dict[str, object]]:
        """One row per pull queue: what waits, runs, finished and died."""
        if self._queues is None:
            return []
        from inferno.queues.report import snapshot  # with queues only: not on start-up's path

        rows = snapshot(self._queues.queues, self._wall())
        keys = ("waiting", "running", "dead", "workers_polling", "oldest_wait_s", "completed", "redeliveries")
        return [{"name": name, **{k: row[k] for k in keys}} for name, row in rows.items()]

    def _backend_rows(self) -> list[dict[str, object]]:
        now = self._wall()
        latest = self._samples[-1] if self._samples else None
        short = self._samples[max(0, len(self._samples) - 1 - SHORT_WINDOW)] if self._samples else None
        rows: list[dict[str, object]] = []
        for worker in self._registry.all():
            backend = self._stats.backends.get(worker.address)
            served = backend.served() if backend is not None else 0
            failed = sum(backend.errors.values()) if backend is not None else 0
            recent_rate = None
            if latest is not None and short is not None:
                s1, f1 = latest.backends.get(worker.address, (0, 0))
                s0, f0 = short.backends.get(worker.address, (0, 0))
                tries = (s1 - s0) + (f1 - f0)
                recent_rate = round((f1 - f0) / tries, 4) if tries else None
            heartbeat = worker.last_heartbeat_wall
            rows.append(
                {
                    "node_id": worker.node_id,
                    "address": worker.address,
                    "models": list(worker.models),
                    "status": worker.status.value,
                    "status_reason": worker.status_reason,
                    "circuit": worker.breaker.state.value,
                    "suspect": worker.suspect,
                    "in_flight": worker.in_flight,
                    "slots": self._admission.limit(worker),
                    "served": served,
                    "failed_tries": failed,
                    "error_rate": round(failed / (served + failed), 4) if served + failed else None,
                    "recent_error_rate": recent_rate,
                    "ttft_ms": _mean_ms(backend.ttft_sum, backend.ttft_count) if backend else None,
                    "tpot_ms": _mean_ms(backend.tpot_sum, backend.tpot_count) if backend else None,
                    "heartbeat_age_s": round(now - heartbeat, 1) if heartbeat is not None else None,
                    "weight": worker.weight,
                    "source": worker.source,
                    "tokens_per_s": worker.vitals.tokens_per_s,
                }
            )
        return rows

    def _routing(self) -> dict[str, object]:
        """Responses per backend and per model over the last minute (or since start)."""
        if not self._samples:
            return {"window_s": 0, "backends": {}, "models": {}}
        latest, first = self._samples[-1], self._samples[0]
        backends = {
            address: served - first.backends.get(address, (0, 0))[0]
            for address, (served, _) in latest.backends.items()
        }
        models = {model: n - first.models.get(model, 0) for model, n in latest.models.items()}
        shown = {a: n for a, n in backends.items() if n > 0}
        return {
            "window_s": round(latest.t - first.t, 1),
            "backends": shown,
            # Named by node id, as everywhere on the page (the address on hover).
            "names": {a: self._names.get(a, a) for a in shown},
            "models": {m: n for m, n in models.items() if n > 0},
        }


def _model_percentiles(now: Sample, short: Sample) -> dict[str, dict[str, float | None]]:
    """p50/p95/p99 per model over the short window, for models that answered in it."""
    out: dict[str, dict[str, float | None]] = {}
    for model, counts in now.model_latency.items():
        before = short.model_latency.get(model)
        window = [a - b for a, b in zip(counts, before, strict=True)] if before is not None else counts
        if sum(window) > 0:
            out[model] = {
                "p50_ms": _ms(percentile(window, 0.50)),
                "p95_ms": _ms(percentile(window, 0.95)),
                "p99_ms": _ms(percentile(window, 0.99)),
            }
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def _mean_ms(total_s: float, count: int) -> float | None:
    return round(total_s / count * 1000.0, 2) if count else None
