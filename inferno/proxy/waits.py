"""Expected wait in the admission queue, from how long backends hold their slots.

Each backend's *service time* is an exponentially weighted mean of how long a
request held one of its slots (acquire to release) plus ``deviations`` times the
weighted mean deviation from it, as TCP's retransmission timeout is srtt + 4 *
rttvar: a backend whose answers vary a lot is planned for its slow ones, so that
what is admitted still finishes within its deadline. A pool of backends with
``slots_i`` slots each, all busy, then completes about
``sum(slots_i / service_i)`` requests per second, and a new arrival with
``ahead`` waiters before it starts after about ``(ahead + 1) / rate`` seconds and
is done one (slot-weighted mean) service time later.
Until every backend of the pool has ``min_samples`` measurements there is no
estimate, and the caller admits. Pure bookkeeping: no I/O, time from an
injected clock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable


class ServiceTimes:
    """Per backend (keyed by address): an EWMA of how long a request holds a slot.

    ``started`` and ``finished`` pair up in FIFO order: requests that overtake each
    other swap their samples, which leaves the mean unbiased.
    """

    __slots__ = ("_alpha", "_clock", "_count", "_dev", "_deviations", "_mean", "_min_samples", "_starts")

    def __init__(
        self,
        alpha: float,
        min_samples: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        deviations: float = 0.0,
    ) -> None:
        self._alpha = alpha
        self._min_samples = min_samples
        self._deviations = deviations
        self._clock = clock
        self._starts: dict[str, deque[float]] = {}
        self._mean: dict[str, float] = {}
        self._dev: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def started(self, key: str) -> None:
        starts = self._starts.get(key)
        if starts is None:
            starts = self._starts[key] = deque()
        starts.append(self._clock())

    def finished(self, key: str, *, failed: bool = False) -> None:
        """A request gave its slot back. A failed one is no sample: a try cut short by
        its deadline or a refused connection says nothing of how long answers take,
        and counting it would make the backend look faster the more it is overloaded."""
        starts = self._starts.get(key)
        if not starts:
            return  # forgotten while in flight
        started = starts.popleft()
        if failed:
            return
        held = self._clock() - started
        count = self._count.get(key, 0) + 1
        self._count[key] = count
        mean = self._mean.get(key)
        if mean is None:
            self._mean[key] = held
            self._dev[key] = 0.0
        else:
            # A plain mean of the warm-up samples, so one odd request does not set it.
            weight = 1.0 / count if count <= self._min_samples else self._alpha
            self._mean[key] = mean + weight * (held - mean)
            dev = self._dev[key]
            self._dev[key] = dev + weight * (abs(held - mean) - dev)

    def forget(self, key: str) -> None:
        """A backend that left, or a new process at its address: measure it afresh."""
        self._starts.pop(key, None)
        self._mean.pop(key, None)
        self._dev.pop(key, None)
        self._count.pop(key, None)

    def service_s(self, key: str) -> float | None:
        """The backend's slot hold time to plan for (mean + deviations * mean deviation),
        or None while it is still warming up."""
        if self._count.get(key, 0) < self._min_samples:
            return None
        return self._mean[key] + self._deviations * self._dev[key]

    def mean_s(self, key: str) -> float | None:
        """The backend's mean slot hold time, or None while it is still warming up."""
        if self._count.get(key, 0) < self._min_samples:
            return None
        return self._mean[key]

    def rate(self, pool: Iterable[tuple[str, int]]) -> tuple[float, float] | None:
        """(requests per second, mean seconds each) a pool of (backend, slots) completes
        with every slot busy; None when some backend of it has no estimate yet."""
        total = 0.0
        slots_total = 0
        for key, slots in pool:
            service = self.service_s(key)
            if service is None:
                return None
            total += slots / max(service, 1e-6)
            slots_total += slots
        return (total, slots_total / total) if total > 0 else None


def expected_wait_s(ahead: int, rate: float) -> float:
    """When a new arrival starts: once the ``ahead`` waiters before it, and then itself,
    have found a slot, at ``rate`` slots freed per second. It finishes one service
    time later."""
    return (ahead + 1) / rate


def retry_after_s(wait_s: float, budget_s: float, cap_s: float) -> int:
    """Whole seconds until the backlog ahead has shrunk enough for the same request to
    fit in its budget (at least 1, at most ``cap_s``)."""
    return max(1, min(math.ceil(cap_s), math.ceil(wait_s - budget_s)))
