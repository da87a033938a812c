"""MicroBatcher: concurrent requests share one run; large ones are split; a failure
fails only its own batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from inferno.engines.batcher import MicroBatcher


async def test_concurrent_requests_run_together_and_each_gets_its_slice() -> None:
    runs: list[list[int]] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        gate.wait(5)  # hold the first run so the others queue up behind it
        runs.append(items)
        return [i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=4, name="t")
    batcher.start()
    first = asyncio.ensure_future(batcher.submit([1]))
    await asyncio.sleep(0.05)
    rest = [asyncio.ensure_future(batcher.submit(items)) for items in ([2, 3], [4], [5, 6, 7, 8, 9])]
    await asyncio.sleep(0.05)
    gate.set()
    assert await first == [10]
    assert [await r for r in rest] == [[20, 30], [40], [50, 60, 70, 80, 90]]
    assert runs[0] == [1]
    assert all(len(r) <= 4 for r in runs)
    assert runs[1] == [2, 3, 4, 5]  # three requests in one run, the big one split across runs
    await batcher.aclose()


async def test_a_failing_run_fails_its_requests_and_the_next_succeeds() -> None:
    def run(items: list[int]) -> list[int]:
        if 0 in items:
            raise ValueError("boom")
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=8, name="t")
    batcher.start()
    with pytest.raises(ValueError, match="boom"):
        await batcher.submit([0])
    assert await batcher.submit([1, 2]) == [1, 2]
    assert await batcher.submit([]) == []
    await batcher.aclose()


async def test_a_small_request_is_in_the_next_batch_while_a_big_one_runs() -> None:
    runs: list[list[int]] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        gate.wait(5)
        runs.append(items)
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=4, name="t")
    batcher.start()
    big = asyncio.ensure_future(batcher.submit(list(range(100, 140))))
    await asyncio.sleep(0.05)  # the big request's first batch is running
    small = [asyncio.ensure_future(batcher.submit([n])) for n in (1, 2, 3)]
    await asyncio.sleep(0.05)
    gate.set()
    assert [await s for s in small] == [[1], [2], [3]]
    assert await big == list(range(100, 140))
    # round-robin: the second batch already carries every small request
    assert runs[0] == [100, 101, 102, 103]
    assert sorted(runs[1]) == [1, 2, 3, 104]
    assert all(len(r) <= 4 for r in runs) and len(runs) == 11
    await batcher.aclose()


async def test_many_requests_take_turns_leading_the_batches() -> None:
    runs: list[list[int]] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        gate.wait(5)
        runs.append(items)
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=2, name="t")
    batcher.start()
    first = asyncio.ensure_future(batcher.submit([0]))
    await asyncio.sleep(0.05)
    others = [asyncio.ensure_future(batcher.submit([n, n])) for n in (1, 2, 3)]
    await asyncio.sleep(0.05)
    gate.set()
    await first
    assert [await o for o in others] == [[1, 1], [2, 2], [3, 3]]
    # one item each in turn, not request 1 whole, then 2, then 3
    assert runs[1:] == [[1, 2], [3, 1], [2, 3]]
    await batcher.aclose()


async def test_a_batch_is_bounded_by_its_padded_cost() -> None:
    runs: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        runs.append(items)
        return items

    # cost = the item itself; a batch's cost = items x the costliest, at most 100
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=8, name="t", cost=lambda n: n, max_cost=100)
    batcher.start()
    assert await batcher.submit([50, 50, 10, 10, 10, 10, 200, 1]) == [50, 50, 10, 10, 10, 10, 200, 1]
    assert runs == [[50, 50], [10, 10, 10, 10], [200], [1]]  # one item over the bound runs alone
    await batcher.aclose()


async def test_a_small_request_gets_its_share_of_a_batch_bounded_by_cost() -> None:
    runs: list[list[int]] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        gate.wait(5)
        runs.append(items)
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(
        run, max_items=8, name="t", cost=lambda n: 100, max_cost=200
    )
    batcher.start()
    big = asyncio.ensure_future(batcher.submit(list(range(10, 16))))
    await asyncio.sleep(0.05)
    small = asyncio.ensure_future(batcher.submit([1]))
    await asyncio.sleep(0.05)
    gate.set()
    assert await small == [1] and await big == list(range(10, 16))
    assert runs[:2] == [[10, 11], [12, 1]]  # the big one does not take the whole budget
    await batcher.aclose()
