"""The worker's pacing: exponential backoff with full jitter (bounds, growth, cap,
reset) and the rotation that keeps every queue first in turn."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from inferno.worker.pacing import Backoff, QueueRotation


def test_the_delays_stay_within_min_and_the_doubling_ceiling() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(1))
    for n in range(12):
        ceiling = min(30.0, 0.5 * 2**n)
        assert backoff.ceiling() == ceiling
        delay = backoff.next()
        assert 0.5 <= delay <= ceiling, (n, delay)
    # Capped: however many failures, never more than max_s.
    assert all(0.5 <= backoff.next() <= 30.0 for _ in range(200))
    assert backoff.ceiling() == 30.0


def test_the_jitter_is_full_spread_over_the_whole_range() -> None:
    """Full jitter: at the cap the delays cover [min, max] evenly, not a narrow band."""
    delays = []
    for seed in range(400):
        backoff = Backoff(1.0, 16.0, random.Random(seed))
        for _ in range(6):
            delay = backoff.next()
        delays.append(delay)
    assert min(delays) < 2.5 and max(delays) > 14.5
    low = sum(1 for d in delays if d < 8.5)
    assert 150 < low < 250  # about half below the midpoint


def test_it_grows_really_exponentially() -> None:
    """The mean delay roughly doubles per failure until the cap."""
    means = []
    for n in range(5):
        total = 0.0
        for seed in range(300):
            backoff = Backoff(1.0, 1000.0, random.Random(seed))
            backoff.failures = n
            total += backoff.next()
        means.append(total / 300)
    # uniform(1, 2**n) has mean (1 + 2**n) / 2: 1, 1.5, 2.5, 4.5, 8.5
    for n, mean in enumerate(means):
        assert mean == pytest.approx((1 + 2**n) / 2, rel=0.12), (n, mean)


def test_reset_starts_again_from_the_minimum() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(3))
    for _ in range(10):
        backoff.next()
    assert backoff.ceiling() == 30.0
    backoff.reset()
    assert backoff.ceiling() == 0.5
    assert backoff.next() == 0.5  # uniform(0.5, 0.5)


def test_the_same_seed_gives_the_same_delays() -> None:
    a, b = Backoff(0.5, 30.0, random.Random(9)), Backoff(0.5, 30.0, random.Random(9))
    assert [a.next() for _ in range(8)] == [b.next() for _ in range(8)]


def test_every_queue_is_first_in_turn() -> None:
    rotation = QueueRotation(("a", "b", "c"))
    orders = [rotation.next() for _ in range(6)]
    assert orders[:3] == [("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b")]
    assert orders[3:] == orders[:3]
    firsts = Counter(order[0] for order in (rotation.next() for _ in range(300)))
    assert firsts == {"a": 100, "b": 100, "c": 100}
    # Every order still names every queue once.
    assert all(sorted(order) == ["a", "b", "c"] for order in orders)
    assert QueueRotation(("only",)).next() == ("only",)
    with pytest.raises(ValueError):
        QueueRotation(())
