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
