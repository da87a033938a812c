"""Token buckets for per-key budgets, on an injected clock.

Requests per minute: one token per request, refilled at ``rpm / 60`` per second,
``rpm`` at most. Tokens per minute: a request needs a positive balance to start,
and its real usage (prompt + completion tokens) is taken when it ends, so the
balance may go negative and the next requests wait until it refills.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    __slots__ = ("_clock", "_last", "capacity", "level", "rate")

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self._clock = clock
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._last) * self.rate)
        self._last = now

    def remaining(self) -> int:
        self._refill()
        return max(0, math.floor(self.level))

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is there (0 if it is now), taking nothing."""
        self._refill()
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def try_take(self, amount: float = 1.0) -> float:
        """Take ``amount`` if there is that much; else the seconds until there is."""
        self._refill()
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate

    def refund(self, amount: float) -> None:
        """Give back ``amount`` taken ahead (never past the capacity)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def debit(self, amount: float) -> None:
        """Take ``amount`` after the fact (may go negative)."""
        self._refill()
        self.level -= amount
