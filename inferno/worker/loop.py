"""The worker loop: lease, run, heartbeat, complete (leasing the next job in the same
call), for ``--concurrency`` jobs at once (docs/queues.md#worker).

- Fair: each lease names the queues in a new rotation (``QueueRotation``).
- Long polls: an empty queue costs one request per ``poll_wait_s``, never a busy loop.
- Heartbeats every ``lease_s / 3``; a 409 (lease lost: expired, or the job was
  cancelled) stops the workload and drops its result.
- The proxy away or refusing: retried after ``Backoff``, reset by the next answer.
- ``stop`` (the first SIGTERM): no new lease; the running jobs finish and are
  reported, ``run`` returns 0. ``abort`` (a second one): the running leases are
  released at once, the workloads killed, ``run`` returns 1.
- ``exit_when_empty``: the first empty lease stops the worker as ``stop`` does; a
  proxy that stays away ends it too (``GAVE_UP``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from inferno.errors import ProxyRefused, UpstreamError, WorkerLeaseLost
from inferno.observability.throttle import ThrottledLog
from inferno.worker.client import Lease, WorkerClient, WorkerIdentity
from inferno.worker.pacing import Backoff, QueueRotation
from inferno.worker.runner import DevicePool, JobResult, JobSpec, Runner, cut_output

logger = logging.getLogger(__name__)

#: exit codes of ``Worker.run``
DONE, ABORTED, GAVE_UP = 0, 1, 3
#: with exit_when_empty, failed calls in a row after which the worker gives up
MAX_FAILURES_WHEN_EMPTY = 5
#: heartbeats per lease length, and the shortest gap between two
HEARTBEATS_PER_LEASE = 3
MIN_HEARTBEAT_S = 0.05
#: an empty lease answered faster than this (a proxy that caps the wait at 0, say) is
#: followed by a pause of this long, so an empty queue never makes a busy loop
FAST_EMPTY_S = 0.5
#: the longest a completion is retried (bounded by the lease too)
MAX_REPORT_S = 600.0
#: the deadline of the releases sent on abort
RELEASE_TIMEOUT_S = 5.0
#: a completion refused as too large is sent again with its output cut, this many times
MAX_TRIMS = 3
#: the longest wait of the ``next`` lease a completion asks for: the job's log line
#: waits for that call (and a stop cuts it short, sending the completion again); an
#: idle worker then long-polls with a plain lease
NEXT_WAIT_S = 1.0

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class _Running:
    lease: Lease
    task: asyncio.Task[JobResult]
    lost: bool = False


class Worker:
    """Owns the slots (one task per concurrent job); ``run`` returns the exit code."""

    def __init__(
        self,
        client: WorkerClient,
        runner: Runner,
        *,
        queues: tuple[str, ...],
        identity: WorkerIdentity,
        devices: DevicePool | None = None,
        device_name: str | None = None,
        poll_wait_s: float = 20.0,
        concurrency: int = 1,
        exit_when_empty: bool = False,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._runner = runner
        self._rotation = QueueRotation(queues)
        self.identity = identity
        self._devices = devices or DevicePool(None)
        self._device_name = device_name
        self._wait_s = poll_wait_s
        self._concurrency = concurrency
        self._exit_when_empty = exit_when_empty
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._sleep = sleep
        self._clock = clock
        self._stopping = asyncio.Event()
        self._aborting = asyncio.Event()
        self._aborted = False
        self._running: dict[str, _Running] = {}
        self._abort_task: asyncio.Task[None] | None = None
        self._warn = ThrottledLog(logger, 30.0, clock)
        #: calls that failed in a row (exit_when_empty gives up after a few)
        self._failures = 0
        #: finished jobs by outcome, and leases lost (for tests and the final log line)
        self.outcomes: dict[str, int] = {}
        self.leases = 0
        #: the proxy has answered at least once (``/health`` on ``--health-addr``)
        self.reached = False

    # -- control ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Lease no more; let the running jobs finish and be reported."""
        if not self._stopping.is_set():
            logger.info("Stopping: no new leases; %d running job(s) finish first", len(self._running))
        self._stopping.set()

    def abort(self) -> None:
        """Release every running lease at once and kill the workloads."""
        self._stopping.set()
        if self._aborted:
            return
        self._aborted = True
        self._aborting.set()
        logger.warning("Stopping now: releasing %d lease(s) and killing the workloads", len(self._running))
        self._abort_task = asyncio.create_task(self._release_all(), name="worker-abort")

    def signal(self) -> None:
        """SIGTERM/SIGINT: the first stops, the second aborts."""
        if self._stopping.is_set():
            self.abort()
        else:
            self.stop()

    async def _release_all(self) -> None:
        running = list(self._running.values())
        for item in running:
            item.task.cancel()
        await asyncio.gather(*(self._release(item.lease) for item in running))

    async def _release(self, lease: Lease) -> None:
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await self._client.release(lease.lease_id)
            logger.info("Released job %r of queue %r", lease.job_id, lease.queue)
        except (UpstreamError, ProxyRefused, TimeoutError) as exc:
            logger.warning("Release of job %r failed (its lease will expire): %s", lease.job_id, exc)

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> int:
        slots = [asyncio.create_task(self._slot(), name=f"worker-slot-{i}") for i in range(self._concurrency)]
        code = DONE
        try:
            await asyncio.wait(slots)
        finally:
            for task in slots:
                task.cancel()
            await asyncio.wait(slots)
            if self._abort_task is not None:
                await asyncio.wait({self._abort_task})
            self._warn.flush()
        for task in slots:
            if task.cancelled():
                continue
            exc = task.exception()
            if isinstance(exc, _GiveUp):
                code = GAVE_UP
            elif exc is not None:
                logger.error("A worker slot failed", exc_info=exc)
                code = ABORTED
        if self._aborted:
            code = ABORTED
        logger.info(
            "Worker stopped: %s", ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "no jobs"
        )
        return code

    async def _slot(self) -> None:
        lease: Lease | None = None
        device: str | None = None
        try:
            while True:
                try:
                    if lease is None:
                        if self._stopping.is_set():
                            return
                        self._devices.release(device)
                        device = await self._device()
                        if device is _NO_DEVICE:
                            device = None
                            continue
                        lease = await self._lease(device)
                        if lease is None:
                            continue
                    lease, device = await self._work(lease, device)
                except (asyncio.CancelledError, _GiveUp):
                    raise
                except Exception:
                    # A bug, not the proxy: the lease (if any) is left to expire.
                    logger.exception("worker slot step failed")
                    lease = None
                    await self._pause(self._backoff.next())
        finally:
            self._devices.release(device)

    async def _device(self) -> str | None:
        """The device for the next job; ``_NO_DEVICE`` (after a pause) when the glob matches nothing."""
        try:
            return self._devices.acquire()
        except LookupError as exc:
            self._warn.warning("No job leased: %s", exc)
            await self._pause(self._backoff.next())
            return _NO_DEVICE

    def _who(self, device: str | None) -> WorkerIdentity:
        return replace(self.identity, device=self._device_name or device or "")

    async def _lease(self, device: str | None) -> Lease | None:
        """One long poll, given up on ``stop``; None when it brought nothing (or failed)."""
        started = self._clock()
        call = asyncio.create_task(self._client.lease(self._rotation.next(), self._wait_s, self._who(device)))
        stopped = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({call, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not call.done():
                call.cancel()  # closes the connection: the proxy leases nothing on it
            await asyncio.wait({call, stopped})
        if call.cancelled():
            return None
        try:
            lease = call.result()
        except (UpstreamError, ProxyRefused) as exc:
            await self._failed(f"Lease from {self._client.address} failed: {exc}")
            return None
        self._succeeded()
        if lease is None:
            self._empty()
            if self._clock() - started < FAST_EMPTY_S:
                await self._pause(FAST_EMPTY_S)
        return lease

    def _empty(self) -> None:
        """A lease found the queues empty (204, or a completion's ``next`` of null)."""
        if self._exit_when_empty:
            logger.info("The queues are empty: exiting")
            self.stop()

    async def _failed(self, message: str, *, until: asyncio.Event | None = None) -> None:
        """Count a failed call and back off (cut short by ``until``: stop, by default)."""
        self._failures += 1
        if self._exit_when_empty and self._failures >= MAX_FAILURES_WHEN_EMPTY:
            logger.error("%s; giving up after %d failures in a row", message, self._failures)
            raise _GiveUp(message)
        delay = self._backoff.next()
        self._warn.warning("%s; retrying in %.2fs", message, delay)
        await self._pause(delay, until)

    def _succeeded(self) -> None:
        self.reached = True
        self._failures = 0
        self._backoff.reset()

    async def _pause(self, delay_s: float, until: asyncio.Event | None = None) -> None:
        """The injected sleep, cut short by ``until`` (by default: ``stop``)."""
        nap = asyncio.ensure_future(self._sleep(delay_s))
        stopped = asyncio.create_task((until or self._stopping).wait())
        try:
            await asyncio.wait({nap, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (nap, stopped):
                task.cancel()
            await asyncio.wait({nap, stopped})

    # -- one job -----------------------------------------------------------------------------
    async def _work(self, lease: Lease, device: str | None) -> tuple[Lease | None, str | None]:
        """Run the leased job and report it; the next lease (and its device), if one came."""
        self.leases += 1
        logger.debug("Job %r: args %r, limit %ss", lease.job_id, lease.args, lease.limit_s)
        result = await self._execute(lease, device)
        if result is None:
            return None, device
        next_device = device
        next_body = None
        if not self._stopping.is_set():
            self._devices.release(device)
            try:
                next_device = self._devices.acquire()
                who = self._who(next_device)
                # With exit_when_empty a next of null ends the worker: it waits as a lease does.
                wait_s = self._wait_s if self._exit_when_empty else min(self._wait_s, NEXT_WAIT_S)
                next_body = self._client.lease_body(self._rotation.next(), wait_s, who)
            except LookupError:
                next_device = None
        following = await self._complete(lease, result, next_body)
        if following is not None and self._stopping.is_set():
            await self._release(following)  # stopping came during the long poll: hand it back
            return None, next_device
        return following, next_device

    async def _execute(self, lease: Lease, device: str | None) -> JobResult | None:
        """The job's result; None when it must not be reported (lease lost, abort)."""
        if self._aborted:
            # Leased as the abort came (after it had released the running ones): hand it back.
            await self._release(lease)
            return None
        if lease.problem is not None:
            return JobResult(None, f"bad job: {lease.problem}", device=self._device_name or device or "")
        job = JobSpec(lease.job_id, lease.args, lease.limit_s, lease.input, device)
        task = asyncio.create_task(self._runner.run(job), name=f"job-{lease.job_id[:32]}")
        running = self._running[lease.lease_id] = _Running(lease, task)
        beat = asyncio.create_task(self._heartbeat(running), name="worker-heartbeat")
        try:
            await asyncio.wait({task})
        finally:
            beat.cancel()
            if not task.done():
                task.cancel()  # the slot itself is cancelled: stop the workload
            await asyncio.wait({task, beat})
            del self._running[lease.lease_id]
        if running.lost or task.cancelled():
            what = "lease lost" if running.lost else "released"
            self._count(what.replace(" ", "_"))
            logger.info("Job %r of queue %r: %s, result dropped", lease.job_id, lease.queue, what)
            return None
        exc = task.exception()
        if exc is not None:
            logger.error("Job %r: the runner failed", lease.job_id, exc_info=exc)
            return JobResult(None, "worker error: the runner failed", device=device or "")
        result = task.result()
        if self._device_name:
            result.device = self._device_name
        return result

    async def _heartbeat(self, running: _Running) -> None:
        interval = max(MIN_HEARTBEAT_S, running.lease.lease_s / HEARTBEATS_PER_LEASE)
        while True:
            await asyncio.sleep(interval)
            try:
                lease_s = await self._client.heartbeat(running.lease.lease_id)
            except WorkerLeaseLost:
                logger.warning("Job %r: the lease is lost; stopping the workload", running.lease.job_id)
                running.lost = True
                running.task.cancel()
                return
            except (UpstreamError, ProxyRefused) as exc:
                self._warn.warning("Heartbeat of job %r failed: %s", running.lease.job_id, exc)
                continue
            if lease_s is not None:
                interval = max(MIN_HEARTBEAT_S, lease_s / HEARTBEATS_PER_LEASE)

    async def _complete(
        self, lease: Lease, result: JobResult, next_body: dict[str, object] | None
    ) -> Lease | None:
        """Report the result (retried while the lease may still hold); the next lease."""
        body = result.to_json()
        give_up_at = self._clock() + min(lease.lease_s, MAX_REPORT_S)
        trims = 0
        while True:
            try:
                following = await self._report(lease.lease_id, body, next_body)
            except WorkerLeaseLost:
                self._count("lease_lost")
                logger.info(
                    "Job %r of queue %r: the lease was lost; result dropped", lease.job_id, lease.queue
                )
                return None
            except ProxyRefused as exc:
                if exc.upstream_status == 413 and trims < MAX_TRIMS:
                    trims += 1
                    body["output"] = cut_output(str(body["output"]), trims)
                    continue
                failure = str(exc)
            except UpstreamError as exc:
                failure = str(exc)
            else:
                self._succeeded()
                if next_body is not None and following is None:
                    self._empty()
                self._count(result.outcome)
                logger.info(
                    "Job %r of queue %r: %s in %d ms (attempt %d)",
                    lease.job_id,
                    lease.queue,
                    result.outcome,
                    round(result.run_s * 1000),
                    lease.attempt,
                )
                return following
            if self._clock() >= give_up_at or self._aborted:
                self._count("unreported")
                logger.warning("Job %r: the result could not be reported: %s", lease.job_id, failure)
                return None
            # A retry leases nothing more: the first try may have leased a job already.
            next_body = None
            # Stopping waits for this report; only an abort cuts its backoff short.
            await self._failed(f"Completion of job {lease.job_id!r} failed: {failure}", until=self._aborting)

    async def _report(
        self, lease_id: str, body: dict[str, object], next_body: dict[str, object] | None
    ) -> Lease | None:
        """The completion; with ``next_body`` also a long poll for the next job, which a
        stop cuts short: the completion is then sent again without it (a 409 to that
        means the first one counted already), so a stopped worker exits at once."""
        if next_body is None:
            return await self._client.complete(lease_id, body, None)
        call = asyncio.ensure_future(self._client.complete(lease_id, body, next_body))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({call, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if call.done():
            return call.result()
        call.cancel()  # closes the connection: a job handed over as it closes goes back
        await asyncio.wait({call})
        with contextlib.suppress(WorkerLeaseLost):  # the first one counted before its poll was cut
            await self._client.complete(lease_id, body, None)
        return None

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


class _GiveUp(Exception):
    """Ends a slot: the proxy stayed away (exit_when_empty); never caught outside this module."""


#: "the glob matched nothing" (distinct from None: no glob)
_NO_DEVICE: str | None = "\0no device"
