"""The pull queues: accept, lease, heartbeat, complete, expire, dead-letter, retain.

One ``QueueService`` holds every queue of the proxy. It does no HTTP: the routes in
``inferno.proxy.queue_api`` translate requests into these calls. Everything is on
the event loop (no locks); ``wall`` is injected so that lease expiry, ageing and
retention are tested without sleeping.

Bounds: a queue holds at most ``max_size`` jobs not finished; finished results are
kept ``result_retention_s`` and at most ``max_results`` per queue; dead letters at
most ``max_dead``; long-polling workers at most ``max_pollers``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from inferno.config import QueueConfig, QueueSpec
from inferno.errors import Conflict, JournalUnavailable, LeaseLost, NotFound, Overloaded
from inferno.queues.jobs import Completion, Job, Outcome, State, Submission, WorkerInfo, result_of, token
from inferno.queues.journal import MemoryJournal
from inferno.queues.queue import JobQueue, Poller
from inferno.queues.report import log_stats
from inferno.schemas import Priority

logger = logging.getLogger(__name__)
#: completed leases remembered, so that a worker's repeated completion is not stale
COMPLETED_KEPT = 4096
T = TypeVar("T")


class QueueService:
    def __init__(
        self,
        specs: tuple[QueueSpec, ...],
        config: QueueConfig,
        *,
        aging_s: float = 2.0,
        journal: MemoryJournal | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.journal = journal or MemoryJournal()
        self.wall = wall
        self.queues: dict[str, JobQueue] = {s.name: JobQueue(s, aging_s) for s in specs}
        self._jobs: dict[str, Job] = {}
        self._idem: dict[tuple[str, str], str] = {}
        self._leases: dict[str, Job] = {}
        #: the leases that completed their job lately (a repeat is answered, not counted)
        self._completed: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: (expiry, lease id): lease expiries, stale entries skipped
        self._expiries: list[tuple[float, str]] = []
        self._result_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._pollers = 0
        self._tasks: list[asyncio.Task[None]] = []
        #: the proxy is shutting down: clients cut off by it do not cancel their jobs
        self.closing = False
        #: called with the queue's name when a job is accepted (deployments scale on it)
        self.on_submit: Callable[[str], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def load(self) -> int:
        """Take the journal's jobs back (after a restart); returns how many."""
        loaded = 0
        for job in self.journal.load():
            queue = self.queues.get(job.queue)
            if queue is None:
                continue
            loaded += 1
            self._jobs[job.id] = job
            if job.idem_key is not None:
                self._idem[job.owner, job.idem_key] = job.id
            if job.state is State.WAITING:
                queue.pending += 1
                queue.waiting.push(job)
            elif job.state is State.RUNNING and job.lease_id is not None:
                queue.pending += 1
                queue.running[job.lease_id] = job
                self._leases[job.lease_id] = job
                heapq.heappush(self._expiries, (job.lease_expiry, job.lease_id))
            elif job.result is not None and job.result.get("outcome") == Outcome.DEAD_LETTERED.value:
                queue.dead[job.id] = job
            else:
                queue.finished[job.id] = job
        return loaded

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="queue-sweeper"))
        self._tasks.append(asyncio.create_task(self._stats_loop(), name="queue-stats"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.journal.close()

    # -- clients -------------------------------------------------------------------------
    def queue(self, name: str) -> JobQueue:
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound("no queue of that name (the proxy declares its queues with --queue)")
        return queue

    def find(self, job_id: str, owner: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise NotFound("no job with that id")
        return job

    async def submit(
        self, queue: JobQueue, body: Submission, owner: str, priority: Priority, idem_key: str | None
    ) -> Job:
        """Accept a job, committed to the journal before this returns."""
        if idem_key is not None:
            known = self._jobs.get(self._idem.get((owner, idem_key), ""))
            if known is not None:
                if known.queue != queue.name:
                    raise Conflict("that Idempotency-Key was used for a job of another queue")
                return known
        if queue.pending >= queue.spec.max_size:
            queue.stats.rejected["full"] += 1
            raise Overloaded(
                f"queue {queue.name} is full ({queue.spec.max_size} jobs not finished): retry later",
                reason="queue_full",
                retry_after_s=1,
            )
        now = self.wall()
        job = Job(
            id="j-" + token(),
            queue=queue.name,
            owner=owner,
            args=tuple(body.args),
            limit_s=body.limit_s,
            priority=priority,
            arrival=now,
            input=body.input,
            idem_key=idem_key,
        )
        self._jobs[job.id] = job
        if idem_key is not None:
            self._idem[owner, idem_key] = job.id
        queue.pending += 1
        queue.stats.submitted += 1
        self.journal.write(job)
        try:
            await self.journal.flushed()
        except asyncio.CancelledError:
            # The client went away while its job was being committed: as a disconnect
            # while it waits (below), unless it carries an Idempotency-Key.
            if job.state is State.WAITING and job.seq == 0:
                if idem_key is None and not self.closing:
                    queue.stats.disconnects["waiting"] += 1
                    self.cancel(job, "the client disconnected")
                else:
                    self._dispatch(queue, job)
            raise
        except OSError as exc:  # the journal could not commit it: it was never accepted
            self._jobs.pop(job.id, None)
            if idem_key is not None and self._idem.get((owner, idem_key)) == job.id:
                del self._idem[owner, idem_key]
            queue.pending -= 1
            queue.stats.submitted -= 1
            queue.stats.rejected["journal"] += 1
            self.journal.delete(job.id)
            raise JournalUnavailable(f"the job was not accepted: {exc}; retry") from None
        if job.state is State.WAITING and job.seq == 0:  # not cancelled while committing
            self._dispatch(queue, job)
        if self.on_submit is not None:
            self.on_submit(queue.name)
        return job

    async def wait(self, job: Job, timeout_s: float, *, attached: bool = False) -> bool:
        """Wait at most ``timeout_s`` for ``job`` to finish; True if it has. An
        ``attached`` waiter is the client's own connection: if it goes away (this task
        is cancelled) the job is cancelled too, unless it carries an Idempotency-Key."""
        if job.state is State.FINISHED:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiters = self._result_waiters.setdefault(job.id, [])
        waiters.append(future)
        if attached:
            job.attached += 1
        # One timer handle that resolves the waiter's own future (cheaper than
        # wait_for + shield, which cost a task wrapper and two callbacks per wait).
        timer = loop.call_later(timeout_s, _resolve, future, None)
        try:
            await future
        except asyncio.CancelledError:
            if attached and not job.done and not self.closing:
                job.attached -= 1
                attached = False
                if job.attached == 0 and job.idem_key is None:
                    stats = self.queues[job.queue].stats
                    stats.disconnects["running" if job.state is State.RUNNING else "waiting"] += 1
                    self.cancel(job, "the client disconnected")
            raise
        finally:
            timer.cancel()
            if attached:
                job.attached -= 1
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._result_waiters.pop(job.id, None)
        return job.done

    def cancel(self, job: Job, why: str = "cancelled by the client") -> Job:
        if job.state is State.FINISHED:
            raise Conflict("the job has already finished")
        queue = self.queues[job.queue]
        if job.state is State.WAITING:
            queue.waiting.discard(job)
            job.seq = -1
        elif job.lease_id is not None:
            queue.running.pop(job.lease_id, None)
            self._leases.pop(job.lease_id, None)
        logger.info("Job %s of queue %s cancelled: %s", job.id, job.queue, why)
        self._finish(queue, job, Outcome.CANCELLED, None, error=why)
        return job

    # -- workers -------------------------------------------------------------------------
    async def lease(self, names: list[str], worker: WorkerInfo, wait_s: float) -> Job | None:
        """The next job of the first of ``names`` that has one, waiting at most ``wait_s``
        for one to arrive; None if none did."""
        queues = [self.queue(name) for name in dict.fromkeys(names)]
        if not queues:
            raise NotFound("name at least one queue")
        now = self.wall()
        for queue in queues:
            job = queue.waiting.pop(now)
            if job is not None:
                self._lease(queue, job, worker, now)
                return job
        if wait_s <= 0:
            return None
        if self._pollers >= self.config.max_pollers:
            raise Overloaded(
                f"{self.config.max_pollers} workers are polling already", reason="pollers", retry_after_s=1
            )
        poller = Poller(queues, worker)
        for queue in queues:
            queue.pollers.append(poller)
        self._pollers += 1
        # The poll's end is one timer handle resolving the future with None; a job
        # handed over first is the worker's (the dispatcher skips a resolved poller).
        timer = asyncio.get_running_loop().call_later(
            min(wait_s, self.config.max_poll_s), _resolve, poller.future, None
        )
        try:
            return await poller.future
        except asyncio.CancelledError:
            # The worker went away: a job handed to it at the same moment goes back, its
            # attempt not counted.
            if poller.future.done() and not poller.future.cancelled():
                job = poller.future.result()
                if job is not None:
                    self.unlease(job)
            raise
        finally:
            timer.cancel()
            if not poller.future.done():
                poller.future.cancel()
            self._pollers -= 1
            for queue in queues:
                with contextlib.suppress(ValueError):
                    queue.pollers.remove(poller)

    def heartbeat(self, lease_id: str) -> Job:
        job = self._valid_lease(lease_id)
        # The expiry heap keeps one entry per lease: the sweeper moves it on when it
        # finds the lease was extended, so a flood of heartbeats grows nothing.
        job.lease_expiry = self.wall() + self.config.lease_s
        self.journal.write(job)
        return job

    def complete(self, lease_id: str, done: Completion) -> Job | None:
        """Finish the lease's job; None when this lease has completed it already (a worker
        that sent its completion again, not knowing whether the first counted)."""
        if lease_id in self._completed:
            return None
        job = self._valid_lease(lease_id)
        queue = self.queues[job.queue]
        queue.running.pop(lease_id, None)
        self._leases.pop(lease_id, None)
        self._finish(queue, job, done.outcome(), done)
        self._completed[lease_id] = None
        if len(self._completed) > COMPLETED_KEPT:
            self._completed.popitem(last=False)
        return job

    def release(self, lease_id: str, reason: str) -> Job:
        job = self._valid_lease(lease_id)
        queue = self.queues[job.queue]
        queue.running.pop(lease_id, None)
        self._leases.pop(lease_id, None)
        logger.info("Job %s of queue %s released by its worker: %r", job.id, job.queue, reason[:80])
        self._redeliver(queue, job, "released")
        return job

    def dead(self, name: str) -> list[Job]:
        return list(self.queue(name).dead.values())

    def requeue(self, name: str, job_id: str) -> Job:
        queue = self.queue(name)
        job = queue.dead.get(job_id)
        if job is None:
            raise NotFound("no dead-lettered job with that id in this queue")
        if queue.pending >= queue.spec.max_size:
            raise Overloaded(f"queue {queue.name} is full: retry later", reason="queue_full")
        del queue.dead[job_id]
        job.attempts = 0
        job.result = None
        job.finished_at = 0.0
        job.lease_id = None
        queue.pending += 1
        self.journal.write(job)
        self._dispatch(queue, job)
        return job

    # -- internals -----------------------------------------------------------------------
    def _valid_lease(self, lease_id: str) -> Job:
        job = self._leases.get(lease_id)
        if job is not None and job.lease_expiry <= self.wall():
            self._expire(job)
            job = None
        if job is None:
            raise self._lost(lease_id)
        return job

    def _lost(self, lease_id: str) -> LeaseLost:
        # Counted under the queue named in the lease id (``l-<token>.<queue>``), if it is one.
        queue = self.queues.get(lease_id.partition(".")[2])
        if queue is not None:
            queue.stats.stale_completions += 1
        return LeaseLost(
            "this lease is no longer valid (it expired, was released, or its job was cancelled "
            "or finished): stop the workload and drop its result"
        )

    def _dispatch(self, queue: JobQueue, job: Job) -> None:
        """Hand ``job`` to the longest-waiting worker polling its queue, else queue it."""
        while queue.pollers:
            poller = queue.pollers.popleft()
            if poller.future.done():
                continue
            self._lease(queue, job, poller.worker, self.wall())
            poller.future.set_result(job)
            return
        queue.waiting.push(job)

    def _lease(self, queue: JobQueue, job: Job, worker: WorkerInfo, now: float) -> None:
        job.state = State.RUNNING
        job.attempts += 1
        job.lease_id = "l-" + token() + "." + queue.name
        job.lease_expiry = now + self.config.lease_s
        job.leased_at = now
        job.worker = {"id": worker.id, "node": worker.node, "pod": worker.pod, "device": worker.device}
        queue.running[job.lease_id] = job
        self._leases[job.lease_id] = job
        heapq.heappush(self._expiries, (job.lease_expiry, job.lease_id))
        self.journal.write(job)

    def unlease(self, job: Job) -> None:
        """A lease that never reached its worker: the job goes back as if never leased."""
        if job.state is not State.RUNNING or job.lease_id is None:
            return
        queue = self.queues[job.queue]
        queue.running.pop(job.lease_id, None)
        self._leases.pop(job.lease_id, None)
        job.attempts -= 1
        job.lease_id = None
        self.journal.write(job)
        self._dispatch(queue, job)

    def _redeliver(self, queue: JobQueue, job: Job, reason: str) -> None:
        job.lease_id = None
        if job.attempts >= self.config.max_attempts:
            logger.warning(
                "Job %s of queue %s dead-lettered after %d attempts (last: %s)",
                job.id,
                job.queue,
                job.attempts,
                reason,
            )
            self._finish(queue, job, Outcome.DEAD_LETTERED, None, error=f"{job.attempts} attempts: {reason}")
            return
        queue.stats.redeliveries[reason] += 1
        self.journal.write(job)
        self._dispatch(queue, job)

    def _expire(self, job: Job) -> None:
        if job.state is not State.RUNNING or job.lease_id is None:
            return
        queue = self.queues[job.queue]
        queue.running.pop(job.lease_id, None)
        self._leases.pop(job.lease_id, None)
        logger.info(
            "Lease of job %s (queue %s, attempt %d, worker %s) expired",
            job.id,
            job.queue,
            job.attempts,
            job.worker.get("id", "?"),
        )
        self._redeliver(queue, job, "expired")

    def expire_due(self) -> int:
        """Expire every lease past its time; returns how many."""
        now = self.wall()
        expired = 0
        while self._expiries and self._expiries[0][0] <= now:
            _, lease_id = heapq.heappop(self._expiries)
            job = self._leases.get(lease_id)
            if job is None:
                continue
            if job.lease_expiry > now:  # heartbeated since: its entry moves on
                heapq.heappush(self._expiries, (job.lease_expiry, lease_id))
                continue
            self._expire(job)
            expired += 1
        return expired

    def _finish(
        self, queue: JobQueue, job: Job, outcome: Outcome, done: Completion | None, error: str | None = None
    ) -> None:
        now = self.wall()
        job.state = State.FINISHED
        job.finished_at = now
        job.result = result_of(job, outcome, done, now)
        if error is not None and done is None:
            job.result["error"] = error
        queue.pending -= 1
        r = job.result
        who = f"{r['pod']} ({r['worker']})" if r["pod"] else r["worker"]
        queue.stats.finished(outcome.value, r["wait_s"], r["run_s"], r["total_s"], who)
        if outcome is Outcome.DEAD_LETTERED:
            queue.dead[job.id] = job
            while len(queue.dead) > self.config.max_dead:
                _, dropped = queue.dead.popitem(last=False)
                logger.warning(
                    "Dead letter %s of queue %s dropped (over --queue-max-dead)", dropped.id, queue.name
                )
                self._forget(dropped)
        else:
            queue.finished[job.id] = job
            while len(queue.finished) > self.config.max_results:
                self._forget(queue.finished.popitem(last=False)[1])
        self.journal.write(job)
        for waiter in self._result_waiters.get(job.id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _forget(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        if job.idem_key is not None and self._idem.get((job.owner, job.idem_key)) == job.id:
            del self._idem[job.owner, job.idem_key]
        self.journal.delete(job.id)

    def trim(self) -> int:
        """Forget results older than the retention; returns how many."""
        cutoff = self.wall() - self.config.result_retention_s
        forgotten = 0
        for queue in self.queues.values():
            for table in (queue.finished, queue.dead):
                while table:
                    job = next(iter(table.values()))
                    if job.finished_at > cutoff:
                        break
                    table.popitem(last=False)
                    self._forget(job)
                    forgotten += 1
        return forgotten

    async def _sweep_loop(self) -> None:
        while True:
            expired = self.expire_due()
            self.trim()
            delay = 0.5
            if self._expiries:
                delay = min(delay, max(0.005, self._expiries[0][0] - self.wall()))
            await asyncio.sleep(0 if expired else delay)

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            log_stats(self.queues, self.config)


def _resolve(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)
