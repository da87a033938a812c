"""The queue service with an injected wall clock: expiry, ageing, retention, restarts."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from inferno.config import QueueConfig, QueueSpec
from inferno.errors import LeaseLost, Overloaded
from inferno.queues.jobs import Completion, Submission, WorkerInfo
from inferno.queues.journal import SqliteJournal
from inferno.queues.metrics import QueueCollector
from inferno.queues.report import census
from inferno.queues.service import QueueService
from inferno.schemas import Priority
from inferno.state import connect

W = WorkerInfo(id="w-1", node="n", pod="p", device="d")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def service(clock: Clock, db: sqlite3.Connection | None = None, **cfg: object) -> QueueService:
    journal = SqliteJournal(db, 0.0) if db is not None else None
    return QueueService(
        (QueueSpec(name="q", max_size=4),), QueueConfig(**cfg), aging_s=2.0, journal=journal, wall=clock
    )


async def submit(s: QueueService, *args: str, priority: Priority = Priority.NORMAL) -> str:
    job = await s.submit(s.queue("q"), Submission(args=list(args)), "", priority, None)
    return job.id


async def test_expiry_redelivers_with_the_original_arrival_then_dead_letters() -> None:
    clock = Clock()
    s = service(clock, lease_s=10, max_attempts=2)
    first = await submit(s, "a")
    clock.now += 1
    await submit(s, "b")
    job = await s.lease(["q"], W, 0)
    assert job is not None and job.id == first
    lease = job.lease_id
    assert lease is not None
    clock.now += 9.5
    s.heartbeat(lease)  # extends to now + 10
    clock.now += 9.9
    assert s.expire_due() == 0
    clock.now += 0.2
    assert s.expire_due() == 1
    with pytest.raises(LeaseLost):
        s.complete(lease, Completion(exit_code=0))
    again = await s.lease(["q"], W, 0)
    assert again is not None and again.id == first and again.attempts == 2  # still before "b"
    clock.now += 11
    s.expire_due()
    assert again.result is not None and again.result["outcome"] == "dead_lettered"
    assert [j.id for j in s.dead("q")] == [first]
    stats = s.queue("q").stats
    assert stats.redeliveries["expired"] == 1 and stats.stale_completions == 1


async def test_ageing_lifts_a_low_job_over_new_high_ones() -> None:
    clock = Clock()
    s = service(clock)
    low = await submit(s, priority=Priority.LOW)
    clock.now += 4.5  # two classes up: level with high, and older
    await submit(s, priority=Priority.HIGH)
    job = await s.lease(["q"], W, 0)
    assert job is not None and job.id == low


async def test_full_queue_counts_running_jobs_and_frees_on_completion() -> None:
    s = service(Clock())
    for _ in range(4):
        await submit(s)
    with pytest.raises(Overloaded):
        await submit(s)
    job = await s.lease(["q"], W, 0)
    assert job is not None and job.lease_id is not None
    with pytest.raises(Overloaded):
        await submit(s)  # running still counts
    s.complete(job.lease_id, Completion(exit_code=0))
    await submit(s)


async def test_results_are_kept_for_the_retention_then_forgotten() -> None:
    clock = Clock()
    s = service(clock, result_retention_s=60, max_results=2)
    ids = []
    for _ in range(3):
        ids.append(await submit(s))
        job = await s.lease(["q"], W, 0)
        assert job is not None and job.lease_id is not None
        s.complete(job.lease_id, Completion(exit_code=0))
    with pytest.raises(Exception, match="no job"):
        s.find(ids[0], "")  # over max_results: the oldest went
    s.find(ids[2], "")
    clock.now += 61
    assert s.trim() == 2
    with pytest.raises(Exception, match="no job"):
        s.find(ids[2], "")


async def test_a_restart_keeps_waiting_leased_and_finished_jobs(tmp_path: Path) -> None:
    clock = Clock()
    db = connect(tmp_path)
    s = service(clock, db, lease_s=30)
    waiting = await submit(s, "w")
    leased = await submit(s, "l")
    done = await submit(s, "d")
    j1 = await s.lease(["q"], W, 0)
    j2 = await s.lease(["q"], W, 0)
    assert j1 is not None and j2 is not None and j1.id == waiting and j2.id == leased
    # put j1 back as waiting is not possible by API; complete the third instead
    j3 = await s.lease(["q"], W, 0)
    assert j3 is not None and j3.id == done and j3.lease_id is not None
    s.complete(j3.lease_id, Completion(exit_code=0, output="out"))
    assert j1.lease_id is not None
    s.release(j1.lease_id, "stopping")
    await s.journal.flushed()
    # "kill -9": no close, a new service on the same file
    clock.now += 10
    s2 = service(clock, connect(tmp_path), lease_s=30)
    assert s2.load() == 3
    # the proxy's start-up line: not 3 jobs to run, but one of each
    assert census(s2.queues) == "1 waiting, 1 running, 0 dead, 1 finished"
    assert s2.find(done, "").result is not None and s2.find(done, "").result["output"] == "out"  # type: ignore[index]
    assert j2.lease_id is not None
    s2.heartbeat(j2.lease_id)  # wall-clock expiry: the live worker's lease still counts
    nxt = await s2.lease(["q"], W, 0)
    assert nxt is not None and nxt.id == waiting and nxt.attempts == 2
    clock.now += 31
    assert s2.expire_due() == 2  # both leases, not heartbeated since
    assert s2.queue("q").stats.redeliveries["expired"] == 2


async def test_a_scrape_never_resets_the_window_maxima() -> None:
    s = service(Clock())
    await submit(s)
    job = await s.lease(["q"], W, 0)
    assert job is not None and job.lease_id is not None
    s.complete(job.lease_id, Completion(exit_code=0, run_s=2.5))
    collector = QueueCollector(s)

    def max_run() -> float:
        for family in collector.collect():
            if family.name == "inferno_jobqueue_max_run_seconds":
                return float(family.samples[0].value)
        raise AssertionError("no max_run family")

    assert max_run() == 2.5 and max_run() == 2.5
    window = s.queue("q").stats.close_window()
    assert window.max_run_s == 2.5 and window.longest_worker == "p (w-1)"
    assert max_run() == 0.0


async def test_a_job_handed_to_a_poller_that_went_away_goes_back_unspent() -> None:
    s = service(Clock())
    poll = asyncio.create_task(s.lease(["q"], W, 30))
    await asyncio.sleep(0)
    assert s.queue("q").polling() == 1
    job_id = await submit(s)
    poll.cancel()  # the worker's connection dropped just as the job was handed over
    try:
        handed = await poll
    except asyncio.CancelledError:
        pass  # the service put it back itself
    else:
        assert handed is not None and handed.id == job_id
        s.unlease(handed)  # what the route does when it finds the connection gone
    job = await s.lease(["q"], W, 0)
    assert job is not None and job.id == job_id and job.attempts == 1


async def test_a_submission_commits_without_sitting_out_the_interval(tmp_path: Path) -> None:
    # A 10 s group-commit interval: leases and results wait for it, a submission does not.
    journal = SqliteJournal(connect(tmp_path), 10.0)
    s = QueueService((QueueSpec(name="q", max_size=4),), QueueConfig(), journal=journal, wall=Clock())
    await asyncio.wait_for(submit(s, "a"), 5)
    assert journal.commits == 1
    job = await s.lease(["q"], W, 0)
    assert job is not None and journal.commits == 1  # the lease waits for the timer
    journal.close()
    assert journal.commits == 2


async def test_a_client_gone_while_its_job_commits_cancels_the_job(tmp_path: Path) -> None:
    s = QueueService(
        (QueueSpec(name="q", max_size=4),),
        QueueConfig(),
        journal=SqliteJournal(connect(tmp_path), 10.0),
        wall=Clock(),
    )
    queue = s.queue("q")
    task = asyncio.create_task(s.submit(queue, Submission(args=["x"]), "", Priority.NORMAL, None))
    await asyncio.sleep(0)  # in flushed(), its commit not yet run
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.pending == 0 and len(queue.waiting) == 0
    assert queue.stats.disconnects["waiting"] == 1
    assert await s.lease(["q"], W, 0) is None


async def test_a_submission_the_journal_cannot_commit_is_refused_and_undone(tmp_path: Path) -> None:
    from inferno.errors import JournalUnavailable
    from inferno.state.db import MIGRATIONS

    db = connect(tmp_path)
    s = service(Clock(), db)
    await submit(s, "kept")
    db.execute("DROP TABLE queue_jobs")  # the disk is gone, say
    queue = s.queue("q")
    with pytest.raises(JournalUnavailable):
        await s.submit(queue, Submission(args=["lost"]), "", Priority.NORMAL, "idem-1")
    assert queue.pending == 1 and queue.stats.submitted == 1 and queue.stats.rejected["journal"] == 1
    assert await s.lease(["q"], W, 0) is not None and await s.lease(["q"], W, 0) is None  # never queued
    for statement in filter(str.strip, MIGRATIONS[2].split(";")):
        db.execute(statement)  # it is back
    again = await s.submit(queue, Submission(args=["retried"]), "", Priority.NORMAL, "idem-1")
    assert again.args == ("retried",)  # the key was not taken by the refused one
