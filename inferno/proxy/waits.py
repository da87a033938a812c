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


class _Measured:
    """One backend's numbers: one lookup per acquire and per release."""

    __slots__ = ("count", "dev", "mean", "starts")

    def __init__(self) -> None:
        self.starts: deque[float] = deque()
        self.count = 0
        self.mean = 0.0
        self.dev = 0.0


class ServiceTimes:
    """Per backend (keyed by address): an EWMA of how long a request holds a slot.

    ``started`` and ``finished`` pair up in FIFO order: requests that overtake each
    other swap their samples, which leaves the mean unbiased.
    """

    __slots__ = ("_alpha", "_backends", "_clock", "_deviations", "_min_samples")

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
        self._backends: dict[str, _Measured] = {}

    def started(self, key: str) -> None:
        backend = self._backends.get(key)
        if backend is None:
            backend = self._backends[key] = _Measured()
        backend.starts.append(self._clock())

    def finished(self, key: str, *, failed: bool = False) -> None:
        """A request gave its slot back. A failed one is no sample: a try cut short by
        its deadline or a refused connection says nothing of how long answers take,
        and counting it would make the backend look faster the more it is overloaded."""
        backend = self._backends.get(key)
        if backend is None or not backend.starts:
            return  # forgotten while in flight
        started = backend.starts.popleft()
        if failed:
            return
        held = self._clock() - started
        backend.count = count = backend.count + 1
        if count == 1:
            backend.mean = held
            return
        # A plain mean of the warm-up samples, so one odd request does not set it.
        weight = 1.0 / count if count <= self._min_samples else self._alpha
        mean = backend.mean
        backend.mean = mean + weight * (held - mean)
        backend.dev += weight * (abs(held - mean) - backend.dev)

    def forget(self, key: str) -> None:
        """A backend that left, or a new process at its address: measure it afresh."""
        self._backends.pop(key, None)

    def _warm(self, key: str) -> _Measured | None:
        backend = self._backends.get(key)
        if backend is None or backend.count < self._min_samples or backend.count == 0:
            return None
        return backend

    def service_s(self, key: str) -> float | None:
        """The backend's slot hold time to plan for (mean + deviations * mean deviation),
        or None while it is still warming up."""
        backend = self._warm(key)
        return None if backend is None else backend.mean + self._deviations * backend.dev

    def mean_s(self, key: str) -> float | None:
        """The backend's mean slot hold time, or None while it is still warming up."""
        backend = self._warm(key)
        return None if backend is None else backend.mean

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
