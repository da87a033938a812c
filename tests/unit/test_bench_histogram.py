"""The queue bench's log histogram: constant memory, percentiles within a bucket's error."""

from __future__ import annotations

import math
import random

import pytest

from inferno.bench.histogram import LogHistogram
from inferno.bench.stats import percentile


def test_memory_is_fixed_however_many_samples_it_holds() -> None:
    hist = LogHistogram()
    size, buffer = hist.size, hist._buckets.buffer_info()
    rng = random.Random(1)
    for _ in range(1000):
        hist.record(rng.lognormvariate(-3, 2))
    assert hist.size == size and hist._buckets.buffer_info() == buffer
    for _ in range(100_000):
        hist.record(rng.lognormvariate(-3, 2))
    # the same array, never grown or replaced: 100k samples cost what 1k did
    assert hist.size == size and hist._buckets.buffer_info() == buffer
    assert hist.count == 101_000 and sum(hist._buckets) == 101_000
    assert size < 1400  # 1 us .. 1e5 s at 2 % buckets


@pytest.mark.parametrize("precision", [0.01, 0.05])
def test_percentiles_are_within_the_bucket_error_of_the_exact_ones(precision: float) -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-2, 1.5) for _ in range(20_000)]
    hist = LogHistogram(precision=precision)
    for v in values:
        hist.record(v)
    ordered = sorted(values)
    for pct in (1, 10, 50, 90, 99, 99.9):
        exact = percentile(ordered, pct)
        assert hist.percentile(pct) == pytest.approx(exact, rel=precision), pct
    assert hist.percentile(100) == max(values) and hist.min == min(values)
    assert hist.mean == pytest.approx(sum(values) / len(values))
    summary = hist.summary()
    assert summary["count"] == 20_000 and summary["max"] == max(values)
    assert summary["p99"] == pytest.approx(percentile(ordered, 99), rel=precision)


def test_one_value_reads_back_exactly_and_empty_reads_nan() -> None:
    hist = LogHistogram()
    assert math.isnan(hist.percentile(50)) and hist.summary()["p50"] is None
    hist.record(0.25)
    assert hist.percentile(50) == 0.25 and hist.percentile(99.9) == 0.25  # clamped to min/max


def test_out_of_range_values_land_in_the_edge_buckets() -> None:
    hist = LogHistogram(lowest=1e-3, highest=10.0)
    for v in (-0.5, 0.0, 1e-9, 5e6, float("nan")):
        hist.record(v)
    assert hist.count == 4  # NaN is not a sample
    assert hist.percentile(25) == -0.5 and hist.min == -0.5  # the low bucket reads its minimum
    assert hist.percentile(100) == 5e6 and hist._buckets[-1] == 1


def test_merge_and_reset() -> None:
    a, b = LogHistogram(), LogHistogram()
    for v in (0.1, 0.2):
        a.record(v)
    b.record(3.0)
    a.merge(b)
    assert a.count == 3 and a.max == 3.0 and a.percentile(50) == pytest.approx(0.2, rel=0.01)
    a.reset()
    assert a.count == 0 and sum(a._buckets) == 0 and math.isnan(a.percentile(50))
    with pytest.raises(ValueError, match="shapes"):
        a.merge(LogHistogram(lowest=1e-3))
    with pytest.raises(ValueError):
        LogHistogram(lowest=2.0, highest=1.0)
