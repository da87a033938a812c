"""Micro-batching: concurrent requests to one model run as one batch.

Each request is a list of items; the batcher gathers what is waiting, runs it
once on a worker thread (ONNX Runtime releases the GIL) and hands each request
its slice of the results. A batch holds at most ``max_items`` items and, when
the items have a cost (tokens), at most ``max_cost`` of it, counted as the batch
is padded: items x the costliest item.

Requests share batches round-robin, not first come first served: items are dealt
one per waiting request per round until the batch is full (so the room small
requests leave goes to the others), and a request that got no room leads the next
batch.
So a big request runs in many bounded batches, and a small one arriving while it
runs is in the very next batch instead of waiting for the whole big one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(slots=True, eq=False)
class _Pending(Generic[In, Out]):
    items: Sequence[In]
    future: asyncio.Future[list[Out]]
    results: list[Out] = field(default_factory=list)
    #: items handed to batches so far (results arrive in order: batches run one at a time)
    taken: int = 0


def _no_cost(item: object) -> int:
    return 0


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        run: Callable[[list[In]], list[Out]],
        *,
        max_items: int,
        name: str,
        cost: Callable[[In], int] = _no_cost,
        max_cost: int = 0,
    ) -> None:
        """``cost`` and ``max_cost`` (0: no bound) bound a batch's padded cost."""
        self._run = run
        self._max = max_items
        self._cost = cost
        self._max_cost = max_cost
        self._waiting: collections.deque[_Pending[In, Out]] = collections.deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: Sequence[In]) -> list[Out]:
        if not items:
            return []
        pending: _Pending[In, Out] = _Pending(items, asyncio.get_running_loop().create_future())
        self._waiting.append(pending)
        self._wake.set()
        return await pending.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._next_batch()
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            items = [item for p, lo, hi in batch for item in p.items[lo:hi]]
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, items)
            except Exception as exc:  # the model failed: every request in the batch fails
                for p, _, _ in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            offset = 0
            for p, lo, hi in batch:
                p.results.extend(outputs[offset : offset + hi - lo])
                offset += hi - lo
                if len(p.results) == len(p.items) and not p.future.done():
                    p.future.set_result(p.results)

    def _next_batch(self) -> list[tuple[_Pending[In, Out], int, int]]:
        """The next batch: (request, first item, end) in waiting order, each request's
        items contiguous. Items are dealt one per request per round, like cards, until
        the batch is full by count or cost; the line is then rotated so the next batch
        starts with the first request this one had no room for."""
        waiting = self._waiting
        for p in [p for p in waiting if p.future.done() or p.taken >= len(p.items)]:
            waiting.remove(p)  # cancelled by its caller, or every item handed out
        if not waiting:
            return []
        counts = [0] * len(waiting)
        size, widest, served = 0, 0, len(waiting)
        dealt = True
        while dealt and size < self._max:
            dealt = False
            for index, p in enumerate(waiting):
                at = p.taken + counts[index]
                if at >= len(p.items):
                    continue
                cost = max(widest, self._cost(p.items[at]))
                if size >= self._max or (size and self._max_cost and (size + 1) * cost > self._max_cost):
                    if served == len(waiting) and counts[index] == 0:
                        served = index  # the first round ended before this one's turn
                    dealt = False
                    break
                widest, size = cost, size + 1
                counts[index] += 1
                dealt = True
        batch = []
        for index, p in enumerate(waiting):
            if counts[index]:
                batch.append((p, p.taken, p.taken + counts[index]))
                p.taken += counts[index]
        waiting.rotate(-served)
        return batch
