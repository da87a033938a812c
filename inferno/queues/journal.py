"""The queue journal: every accepted job and its result, in SQLite, with group commit.

Changes are collected per job (a job submitted, leased and finished within one
batch is written once) and written in one transaction every ``commit_interval_s``
or when ``MAX_BATCH`` jobs changed. ``flushed()`` resolves after the transaction
that holds every change made so far has committed: a submission is acknowledged
only then, so nothing acknowledged is lost to a ``kill -9``. A waiter does not sit
out the interval: its commit runs at the end of the current loop iteration (so the
submissions that arrived together share it), unless the last commit ended less
than its own duration (at most the interval) ago; then it runs that much later, so
that commits take at most about half the loop however busy it is, and under load
batches grow by themselves. ``MemoryJournal`` (``--queue-memory-only``) keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from typing import Any

import orjson

from inferno.queues.jobs import Job, State
from inferno.schemas import Priority

logger = logging.getLogger(__name__)

#: changed jobs that make the journal commit at once rather than at the next tick
MAX_BATCH = 512

_COLUMNS = (
    "id, queue, owner, idem, args, limit_s, priority, arrival, input, state, attempts, "
    "lease_id, lease_expiry, leased_at, worker, result, finished_at"
)


class MemoryJournal:
    """No journal: jobs live as long as the process."""

    durable = False

    def write(self, job: Job) -> None:
        pass

    def delete(self, job_id: str) -> None:
        pass

    async def flushed(self) -> None:
        pass

    def load(self) -> list[Job]:
        return []

    def close(self) -> None:
        pass


class SqliteJournal(MemoryJournal):
    durable = True

    def __init__(self, db: sqlite3.Connection, commit_interval_s: float = 0.002) -> None:
        self._db = db
        self._interval_s = commit_interval_s
        self._dirty: dict[str, Job | None] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        #: when the current timer fires (loop time); when (time.monotonic) a waiter's
        #: commit may follow the last one
        self._due = 0.0
        self._next_ok = 0.0
        #: commits and the rows they wrote, for the benchmark and tests
        self.commits = 0
        self.rows = 0

    def write(self, job: Job) -> None:
        self._dirty[job.id] = job
        self._schedule()

    def delete(self, job_id: str) -> None:
        self._dirty[job_id] = None
        self._schedule()

    async def flushed(self) -> None:
        if not self._dirty and self._timer is None:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append(future)
        self._schedule()
        if future.done():  # a full batch committed at once
            return
        # Someone waits: commit soon, not at the end of the interval (see the docstring).
        due = loop.time() + max(0.0, self._next_ok - time.monotonic())
        if self._timer is not None and self._due > due:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._arm(loop, due)
        # a waiter's own future: being cancelled, it is skipped, and the commit stands
        await future

    def _schedule(self) -> None:
        if self._timer is not None:
            if len(self._dirty) >= MAX_BATCH:
                self._timer.cancel()
                self._timer = None
                self.flush()
            return
        loop = asyncio.get_running_loop()
        self._arm(loop, loop.time() + self._interval_s)

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self._due = due
        if due > loop.time():
            self._timer = loop.call_at(due, self.flush)
        else:
            self._timer = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every change so far in one transaction and wake who waits for it."""
        self._timer = None
        dirty, self._dirty = self._dirty, {}
        waiters, self._waiters = self._waiters, []
        error: BaseException | None = None
        if dirty:
            started = time.monotonic()
            try:
                upserts = [_row(job) for job in dirty.values() if job is not None]
                deletes = [(job_id,) for job_id, job in dirty.items() if job is None]
                self._db.execute("BEGIN")
                if upserts:
                    self._db.executemany(
                        f"INSERT OR REPLACE INTO queue_jobs ({_COLUMNS}) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        upserts,
                    )
                if deletes:
                    self._db.executemany("DELETE FROM queue_jobs WHERE id = ?", deletes)
                self._db.execute("COMMIT")
                self.commits += 1
                self.rows += len(dirty)
                ended = time.monotonic()
                # at most the interval: a slow commit (a checkpoint) must not hold the next back
                self._next_ok = ended + min(ended - started, self._interval_s)
            except Exception as exc:  # whatever it is, no waiter may hang on it
                logger.error("Queue journal: could not commit %d change(s): %s", len(dirty), exc)
                error = exc
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(OSError(f"the queue journal could not commit: {error}"))

    def load(self) -> list[Job]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM queue_jobs ORDER BY arrival").fetchall()
        return [_job(row) for row in rows]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()


def _row(job: Job) -> tuple[Any, ...]:
    return (
        job.id,
        job.queue,
        job.owner,
        job.idem_key,
        orjson.dumps(job.args).decode(),
        job.limit_s,
        int(job.priority),
        job.arrival,
        orjson.dumps(job.input).decode(),
        job.state.value,
        job.attempts,
        job.lease_id,
        job.lease_expiry,
        job.leased_at,
        orjson.dumps(job.worker).decode(),
        orjson.dumps(job.result).decode() if job.result is not None else None,
        job.finished_at,
    )


def _job(row: tuple[Any, ...]) -> Job:
    (id_, queue, owner, idem, args, limit_s, priority, arrival, input_, state, attempts) = row[:11]
    (lease_id, lease_expiry, leased_at, worker, result, finished_at) = row[11:]
    return Job(
        id=id_,
        queue=queue,
        owner=owner,
        args=tuple(orjson.loads(args)),
        limit_s=limit_s,
        priority=Priority(priority),
        arrival=arrival,
        input=orjson.loads(input_),
        idem_key=idem,
        state=State(state),
        attempts=attempts,
        lease_id=lease_id,
        lease_expiry=lease_expiry,
        leased_at=leased_at,
        worker=orjson.loads(worker),
        result=orjson.loads(result) if result is not None else None,
        finished_at=finished_at,
    )
