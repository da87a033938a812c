"""How often the worker asks: backoff while the proxy is away, and the fair order of
its queues. Both pure, with the random source injected."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter: the n-th delay in a row is uniform between
    ``min_s`` and ``min(max_s, min_s * 2**n)``; ``reset`` after a success."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        self._rng = rng or random.Random()
        self.failures = 0

    def ceiling(self) -> float:
        """The largest delay the next ``next()`` may give."""
        return min(self.max_s, self.min_s * 2.0 ** min(self.failures, 64))

    def next(self) -> float:
        delay = self._rng.uniform(self.min_s, self.ceiling())
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class QueueRotation:
    """The queues in a new rotation on each call, so every queue is first in turn."""

    def __init__(self, queues: tuple[str, ...]) -> None:
        if not queues:
            raise ValueError("at least one queue")
        self.queues = queues
        self._turn = 0

    def next(self) -> tuple[str, ...]:
        start = self._turn % len(self.queues)
        self._turn += 1
        return self.queues[start:] + self.queues[:start]
