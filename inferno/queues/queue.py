"""One queue's jobs: waiting, running, finished and dead, and the workers polling it."""

from __future__ import annotations

import asyncio
import collections

from inferno.config import QueueSpec
from inferno.queues.jobs import Job, WorkerInfo
from inferno.queues.stats import QueueStats
from inferno.queues.waiting import Waiting


class Poller:
    """A worker's long poll: the first job of any of its queues is handed to it."""

    __slots__ = ("future", "queues", "worker")

    def __init__(self, queues: list[JobQueue], worker: WorkerInfo) -> None:
        self.future: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        self.queues = queues
        self.worker = worker


class JobQueue:
    def __init__(self, spec: QueueSpec, aging_s: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.waiting = Waiting(aging_s)
        #: lease id -> job
        self.running: dict[str, Job] = {}
        self.pollers: collections.deque[Poller] = collections.deque()
        #: job id -> finished job, oldest first (retention)
        self.finished: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self.dead: collections.OrderedDict[str, Job] = collections.OrderedDict()
        #: accepted and not finished (waiting, running, or being committed)
        self.pending = 0
        self.stats = QueueStats()

    def polling(self) -> int:
        return sum(1 for p in self.pollers if not p.future.done())
