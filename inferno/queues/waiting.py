"""The waiting jobs of one queue: high/normal/low classes, oldest first, with ageing.

Each class is a heap ordered by arrival (a redelivered job keeps its arrival, so it
is next in its class). The next job is the head whose class, raised by one per
``aging_s`` it has waited, is highest; ties go to the older. A cancelled job is left
in its heap and skipped when it surfaces (lazy deletion); the heaps are rebuilt
when such entries outnumber the live ones, so they stay bounded.
"""

from __future__ import annotations

import heapq
import itertools

from inferno.queues.jobs import Job, State
from inferno.schemas import Priority

_CLASSES = len(Priority)


class Waiting:
    def __init__(self, aging_s: float) -> None:
        self._aging_s = aging_s
        self._heaps: list[list[tuple[float, int, Job]]] = [[] for _ in range(_CLASSES)]
        self._seq = itertools.count(1)
        self._stale = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def push(self, job: Job) -> None:
        job.state = State.WAITING
        job.seq = next(self._seq)
        heapq.heappush(self._heaps[job.priority], (job.arrival, job.seq, job))
        self.count += 1

    def discard(self, job: Job) -> None:
        """Take a waiting job out (it was cancelled or requeued elsewhere)."""
        if job.state is State.WAITING and job.seq > 0:
            job.seq = -1
            self.count -= 1
            self._stale += 1
            if self._stale > self.count + 64:
                self._rebuild()

    def pop(self, now: float) -> Job | None:
        best: tuple[int, float, int] | None = None
        for cls, heap in enumerate(self._heaps):
            self._clean(heap)
            if not heap:
                continue
            arrival, _, _ = heap[0]
            raised = int(max(0.0, now - arrival) / self._aging_s)
            key = (max(0, cls - raised), arrival, cls)
            if best is None or key < best:
                best = key
        if best is None:
            return None
        _, _, job = heapq.heappop(self._heaps[best[2]])
        job.seq = 0
        self.count -= 1
        return job

    def oldest(self) -> float | None:
        """Arrival of the oldest waiting job."""
        heads = []
        for heap in self._heaps:
            self._clean(heap)
            if heap:
                heads.append(heap[0][0])
        return min(heads) if heads else None

    def jobs(self) -> list[Job]:
        return [job for heap in self._heaps for _, seq, job in heap if job.seq == seq]

    def _clean(self, heap: list[tuple[float, int, Job]]) -> None:
        while heap and heap[0][2].seq != heap[0][1]:
            heapq.heappop(heap)
            self._stale -= 1

    def _rebuild(self) -> None:
        for i, heap in enumerate(self._heaps):
            live = [entry for entry in heap if entry[2].seq == entry[1]]
            heapq.heapify(live)
            self._heaps[i] = live
        self._stale = 0
