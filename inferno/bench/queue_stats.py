"""What the queue mode of ``inferno bench`` measures, in memory that does not grow.

Every number is a counter or a ``LogHistogram``; names (nodes, pods, devices, outcomes,
failure classes) are capped at ``MAX_NAMES`` each, later ones count as ``(other)``; the
requests-per-second window is a ring of one-second slots. So a run of hours costs the
same memory as a run of seconds.

``reset()`` starts a new period: counters and histograms go to zero, the requests in
flight do not (they are still running), and when they finish they count in the new
period.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inferno.bench.histogram import LogHistogram

#: distinct names kept per kind (nodes, pods, devices, outcomes, failure classes)
MAX_NAMES = 1024
OTHER = "(other)"
#: the recent window of /reqs-per-sec, in one-second slots
RATE_WINDOW_S = 60
#: recent failures kept for /fails
RECENT_FAILURES = 50


@dataclass(frozen=True, slots=True)
class JobResult:
    """One finished job as the client saw it: the proxy's result plus our own clock."""

    outcome: str
    client_s: float
    wait_s: float
    run_s: float
    total_s: float
    attempts: int
    node: str
    pod: str
    device: str


class _Names:
    """name -> value, at most ``MAX_NAMES`` names; the rest share ``OTHER``."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self.items: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        item = self.items.get(name)
        if item is None:
            if len(self.items) >= MAX_NAMES:
                name = OTHER
                item = self.items.get(name)
            if item is None:
                item = self.items[name] = self._factory()
        return item


class _Count:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class _Node:
    __slots__ = ("run", "served")

    def __init__(self) -> None:
        self.served = 0
        self.run = LogHistogram()


class RateWindow:
    """Completions per second over the last ``window_s`` seconds (ring of slots)."""

    def __init__(self, clock: Callable[[], float], window_s: int = RATE_WINDOW_S) -> None:
        self._clock = clock
        self._window = window_s
        self._slots = [0] * window_s
        self._stamps = [-1] * window_s
        self.started = clock()

    def add(self, n: int = 1) -> None:
        second = int(self._clock())
        slot = second % self._window
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            self._slots[slot] = 0
        self._slots[slot] += n

    def per_second(self) -> list[tuple[int, int]]:
        """(seconds ago, completions) of each full second in the window, oldest first."""
        now = int(self._clock())
        out = []
        for ago in range(self._window, 0, -1):
            second = now - ago
            if second < math.ceil(self.started):  # a second the period had only part of
                continue
            slot = second % self._window
            out.append((ago, self._slots[slot] if self._stamps[slot] == second else 0))
        return out

    def rate(self, span_s: int = 10) -> float:
        """Mean completions per second over the last ``span_s`` full seconds."""
        recent = self.per_second()[-span_s:]
        return sum(n for _, n in recent) / len(recent) if recent else 0.0

    def reset(self) -> None:
        self._slots = [0] * self._window
        self._stamps = [-1] * self._window
        self.started = self._clock()


class QueueStats:
    """Counters and histograms of one period of a queue run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: requests sent and not answered yet: survives ``reset()``
        self.in_flight = 0
        self.rate = RateWindow(clock)
        self.recent_failures: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)
        self.resets = 0
        self._zero()

    def _zero(self) -> None:
        self.started = self._clock()
        self.sent = 0
        self.results = 0
        self.outcomes = _Names(_Count)
        self.fails = _Names(_Count)
        self.client = LogHistogram()
        self.wait = LogHistogram()
        self.run = LogHistogram()
        self.overhead = LogHistogram()
        self.attempts = LogHistogram(lowest=0.5, highest=1e4, precision=0.01)
        self.nodes = _Names(_Node)
        self.pods = _Names(_Count)
        self.devices = _Names(_Count)

    def reset(self) -> None:
        """A new period; ``in_flight`` is kept."""
        self._zero()
        self.rate.reset()
        self.recent_failures.clear()
        self.resets += 1

    def elapsed(self) -> float:
        return self._clock() - self.started

    # -- recording ------------------------------------------------------------------------
    def request_started(self) -> None:
        self.sent += 1
        self.in_flight += 1

    def request_ended(self) -> None:
        self.in_flight -= 1

    def result(self, job: JobResult) -> None:
        self.results += 1
        self.rate.add()
        self.outcomes.get(job.outcome or "unknown").n += 1
        self.client.record(job.client_s)
        self.wait.record(job.wait_s)
        self.run.record(job.run_s)
        self.overhead.record(job.client_s - job.wait_s - job.run_s)
        self.attempts.record(float(job.attempts))
        node = self.nodes.get(job.node or "-")
        node.served += 1
        node.run.record(job.run_s)
        self.pods.get(job.pod or "-").n += 1
        self.devices.get(job.device or "-").n += 1

    def failure(self, kind: str, detail: str = "", status: int = 0) -> None:
        self.fails.get(kind).n += 1
        self.recent_failures.append(
            {"at_s": round(self.elapsed(), 3), "class": kind, "status": status, "detail": detail[:200]}
        )

    # -- views ----------------------------------------------------------------------------
    def outcome_counts(self) -> dict[str, int]:
        return {k: v.n for k, v in sorted(self.outcomes.items.items())}

    def fail_counts(self) -> dict[str, int]:
        return {k: v.n for k, v in sorted(self.fails.items.items())}

    def succeeded(self) -> int:
        item = self.outcomes.items.get("success")
        return item.n if item else 0

    def snapshot(self) -> dict[str, Any]:
        """The /stats view as plain data."""
        elapsed = self.elapsed()
        return {
            "elapsed_s": elapsed,
            "sent": self.sent,
            "results": self.results,
            "in_flight": self.in_flight,
            "succeeded": self.succeeded(),
            "failed_requests": sum(self.fail_counts().values()),
            "outcomes": self.outcome_counts(),
            "fails": self.fail_counts(),
            "throughput_rps": self.results / elapsed if elapsed > 0 else 0.0,
            "recent_rps": self.rate.rate(),
            "resets": self.resets,
            "times_s": {
                "client_total": self.client.summary(),
                "queue_wait": self.wait.summary(),
                "run": self.run.summary(),
                "overhead": self.overhead.summary(),
            },
            "attempts": self.attempts.summary(),
        }

    def node_view(self) -> dict[str, Any]:
        total = sum(n.served for n in self.nodes.items.values())
        return {
            name: {"served": n.served, "share": n.served / total if total else 0.0, "run_s": n.run.summary()}
            for name, n in sorted(self.nodes.items.items())
        }

    def pod_view(self) -> dict[str, Any]:
        return {
            "pods": {k: v.n for k, v in sorted(self.pods.items.items())},
            "devices": {k: v.n for k, v in sorted(self.devices.items.items())},
        }

    def fail_view(self) -> dict[str, Any]:
        return {"fails": self.fail_counts(), "recent": list(self.recent_failures)}

    def rate_view(self) -> dict[str, Any]:
        return {
            "recent_rps": self.rate.rate(),
            "window_s": RATE_WINDOW_S,
            "per_second": [{"seconds_ago": ago, "results": n} for ago, n in self.rate.per_second()],
        }
