"""Per-backend circuit breaker: closed -> open (ejected) -> half-open -> closed.

Passive outlier detection feeds it: connection errors, timeouts and 5xx answers
count as failures, anything else (including a client's 4xx) as success. N
failures in a row open the breaker, which ejects the backend for a backoff that
doubles on each ejection in a row (capped). When the backoff ends the breaker is
half-open: one trial request at a time; its success closes the breaker, its
failure opens it again for longer.
"""

from __future__ import annotations

import enum

from inferno.config import OutlierConfig


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    __slots__ = ("_cfg", "ejections", "failures", "open_until", "state")

    def __init__(self, config: OutlierConfig) -> None:
        self._cfg = config
        self.state = BreakerState.CLOSED
        self.failures = 0
        #: ejections in a row (reset when a half-open trial succeeds)
        self.ejections = 0
        self.open_until = 0.0

    def on_success(self) -> bool:
        """Returns True if this closed a half-open breaker."""
        self.failures = 0
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.CLOSED
            self.ejections = 0
            return True
        return False

    def on_failure(self, now: float) -> bool:
        """Returns True if this opened the breaker (the backend is to be ejected)."""
        if self.state is BreakerState.OPEN:
            return False
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self._cfg.consecutive_failures:
            self.ejections += 1
            self.state = BreakerState.OPEN
            self.open_until = now + self.ejection_s()
            self.failures = 0
            return True
        return False

    def ejection_s(self) -> float:
        """Backoff of the current ejection: base * 2^(n-1), capped."""
        exponent = max(0, self.ejections - 1)
        return float(min(self._cfg.max_ejection_s, self._cfg.base_ejection_s * 2.0**exponent))

    def poll(self, now: float) -> bool:
        """Returns True if the ejection just ended (open -> half-open)."""
        if self.state is BreakerState.OPEN and now >= self.open_until:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def allows(self, in_flight: int) -> bool:
        """Half-open admits one trial request at a time."""
        if self.state is BreakerState.CLOSED:
            return True
        return self.state is BreakerState.HALF_OPEN and in_flight == 0
