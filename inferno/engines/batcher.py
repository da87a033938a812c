"""Micro-batching: concurrent requests to one model run as one batch.

Each request is a list of items; the batcher gathers what is waiting (up to
``max_items``), runs it once on a worker thread (ONNX Runtime releases the GIL)
and hands each request its slice of the results. A request larger than
``max_items`` runs in pieces of that size.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    items: Sequence[In]
    future: asyncio.Future[list[Out]]
    results: list[Out] = field(default_factory=list)


class MicroBatcher(Generic[In, Out]):
    def __init__(self, run: Callable[[list[In]], list[Out]], *, max_items: int, name: str) -> None:
        self._run = run
        self._max = max_items
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue()
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
        self._queue.put_nowait(pending)
        return await pending.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Pending[In, Out] | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            batch: list[tuple[_Pending[In, Out], int, int]] = []
            size = 0
            current: _Pending[In, Out] | None = first
            while current is not None:
                if current.future.done():  # cancelled by its caller
                    current = self._next()
                    continue
                start = len(current.results)
                take = min(len(current.items) - start, self._max - size)
                batch.append((current, start, start + take))
                size += take
                if start + take < len(current.items):
                    carry = current  # the rest goes into the next batch
                    break
                if size >= self._max:
                    break
                current = self._next()
            if not batch:
                continue
            items = [item for p, lo, hi in batch for item in p.items[lo:hi]]
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, items)
            except Exception as exc:  # the model failed: every request in the batch fails
                for p, _, _ in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                if carry is not None and carry.future.done():
                    carry = None
                continue
            offset = 0
            for p, lo, hi in batch:
                p.results.extend(outputs[offset : offset + hi - lo])
                offset += hi - lo
                if len(p.results) == len(p.items) and not p.future.done():
                    p.future.set_result(p.results)
            if carry is not None and carry.future.done():
                carry = None

    def _next(self) -> _Pending[In, Out] | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
