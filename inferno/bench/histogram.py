"""A fixed-size, log-bucketed histogram: constant memory however many samples it holds.

Buckets grow geometrically by ``1 + precision`` from ``lowest`` to ``highest`` (as HDR
histograms do), so any percentile read back is within ``precision`` (relative) of the
true sample at that rank. Values at or below ``lowest`` (including zero and negative
ones, e.g. an overhead that clock granularity made slightly negative) share the first
bucket; values above ``highest`` the last. The exact count, sum, minimum and maximum
are kept beside the buckets.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


class LogHistogram:
    """Seconds (or any positive quantity) in log buckets; ``record`` is O(1)."""

    __slots__ = ("_buckets", "_log_growth", "count", "highest", "lowest", "max", "min", "precision", "total")

    def __init__(self, *, lowest: float = 1e-6, highest: float = 1e5, precision: float = 0.01) -> None:
        if not 0 < lowest < highest or not 0 < precision < 1:
            raise ValueError("need 0 < lowest < highest and 0 < precision < 1")
        self.lowest = lowest
        self.highest = highest
        self.precision = precision
        # Bucket i (i >= 1) holds (lowest * g**(i-1), lowest * g**i]; a bucket's
        # geometric middle is within sqrt(g) - 1 < precision of every value in it.
        self._log_growth = math.log1p(2 * precision)
        size = math.ceil(math.log(highest / lowest) / self._log_growth) + 2
        self._buckets = array("q", bytes(8 * size))
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    @property
    def size(self) -> int:
        """Number of buckets: fixed at construction."""
        return len(self._buckets)

    def _index(self, value: float) -> int:
        if not value > self.lowest:  # also catches NaN
            return 0
        if value >= self.highest:
            return len(self._buckets) - 1
        return min(len(self._buckets) - 2, 1 + int(math.log(value / self.lowest) / self._log_growth))

    def _value_of(self, index: int) -> float:
        if index == 0:
            return self.min if self.min < self.lowest else self.lowest
        if index == len(self._buckets) - 1:
            return self.max
        # the geometric middle of the bucket, never outside what was seen
        middle = self.lowest * math.exp((index - 0.5) * self._log_growth)
        return min(max(middle, self.min), self.max)

    def record(self, value: float) -> None:
        if math.isnan(value):
            return
        self._buckets[self._index(value)] += 1
        self.count += 1
        self.total += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def percentile(self, pct: float) -> float:
        """The value at nearest rank ``pct`` (NaN when empty)."""
        return self.percentiles((pct,))[0]

    def percentiles(self, pcts: tuple[float, ...]) -> list[float]:
        """The values at nearest ranks ``pcts`` (ascending), in one pass over the buckets."""
        if not self.count:
            return [math.nan for _ in pcts]
        ranks = [max(1, math.ceil(p / 100.0 * self.count)) for p in pcts]
        out: list[float] = []
        seen = 0
        for index, n in enumerate(self._buckets):
            if not n:
                continue
            seen += n
            while len(out) < len(ranks) and seen >= ranks[len(out)]:
                # the first and the last sample are known exactly
                rank = ranks[len(out)]
                exact = self.max if rank >= self.count else self.min if rank == 1 else None
                out.append(self._value_of(index) if exact is None else exact)
            if len(out) == len(ranks):
                break
        out.extend(self.max for _ in range(len(ranks) - len(out)))
        return out

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def merge(self, other: LogHistogram) -> None:
        if other.size != self.size or other.lowest != self.lowest:
            raise ValueError("histograms of different shapes")
        for index, n in enumerate(other._buckets):
            if n:
                self._buckets[index] += n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def reset(self) -> None:
        for index in range(len(self._buckets)):
            self._buckets[index] = 0
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def summary(self) -> dict[str, Any]:
        """count, mean, min, the percentiles and max (NaN-free: None when empty)."""
        if not self.count:
            empty: dict[str, Any] = {"count": 0, "mean": None, "min": None}
            return {**empty, **{f"p{p:g}": None for p in PERCENTILES}, "max": None}
        out: dict[str, Any] = {"count": self.count, "mean": self.mean, "min": self.min}
        out.update({f"p{p:g}": v for p, v in zip(PERCENTILES, self.percentiles(PERCENTILES), strict=True)})
        out["max"] = self.max
        return out
