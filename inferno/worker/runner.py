"""Running one job: the workload as a process of its own, bounded in time and output.

The workload is argv, never a shell: ``[workload, *worker_args, *job_args]`` (the
job's args dropped with ``--ignore-args``), with the word ``FILENAME`` in any of
them replaced by the device the job was given (``DevicePool``). The process runs in
its own session (so its own process group) in ``--workdir``, with the worker's
environment less its tokens (``SECRET_ENV``); stdout and stderr go
to one pipe, of which the first ``--max-output-bytes`` are kept and the rest read
and dropped (the output then ends with a truncation marker), or to /dev/null with
``--discard-output``. When the time limit (the smaller of the job's and the
worker's, each only when > 0) runs out, the whole group gets SIGTERM, then SIGKILL
after ``--kill-grace-s``; whatever is left of the group when the workload ends is
killed too, so nothing it started outlives its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import logging
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: the word in the workload's args replaced by the job's device
FILENAME = "FILENAME"
#: the most glob matches considered (a pattern matching a whole file system is a mistake)
MAX_MATCHES = 4096
#: after the workload exits, how long what is left in its output pipe may take to read
DRAIN_S = 1.0
#: after SIGKILL, how long the process may take to be reaped
REAP_S = 5.0
READ_CHUNK = 64 << 10
#: the worker's secrets, never passed on to a workload's environment
SECRET_ENV = frozenset({"INFERNO_WORKER_TOKEN", "INFERNO_CLUSTER_TOKEN", "INFERNO_ADMIN_TOKEN"})
#: prctl(2): the signal a child gets when its parent dies
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What one run needs: the job's args, input and limit, and its device."""

    job_id: str
    args: tuple[str, ...] = ()
    limit_s: float = 0.0
    input: Any = None
    #: the glob match the job runs on (None: no --glob)
    device: str | None = None


@dataclass(slots=True)
class JobResult:
    """A run's outcome, as reported (docs/queues.md, ``POST /v1/leases/ID/complete``)."""

    exit_code: int | None
    error: str | None
    timed_out: bool = False
    output: str = ""
    run_s: float = 0.0
    device: str = ""
    device_metrics: dict[str, Any] = field(default_factory=dict)
    answer: Any = None

    @property
    def outcome(self) -> str:
        if self.timed_out:
            return "timeout"
        return "success" if self.exit_code == 0 and self.error is None else "failure"

    def to_json(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "error": self.error,
            "timed_out": self.timed_out,
            "output": self.output,
            "answer": self.answer,
            "run_s": round(self.run_s, 6),
            "device": self.device,
            "device_metrics": self.device_metrics,
        }


def effective_limit(job_limit_s: float, worker_limit_s: float) -> float | None:
    """The smaller of the two limits that are set (> 0); None when neither is."""
    limits = [limit for limit in (job_limit_s, worker_limit_s) if limit > 0]
    return min(limits) if limits else None


def substitute(args: tuple[str, ...], device: str | None) -> tuple[str, ...]:
    """``FILENAME`` in each arg replaced by the device (left as it is without one)."""
    if device is None:
        return args
    return tuple(arg.replace(FILENAME, device) for arg in args)


class DevicePool:
    """The files a ``--glob`` matches, handed to jobs round-robin.

    The pattern is matched anew for each job (a device may come or go); the matches
    are taken in sorted order, one per job in turn, skipping those that a running
    job holds while a free one exists (so ``--concurrency N`` over N devices runs one
    job per device). No pattern: every job gets None.
    """

    def __init__(self, pattern: str | None) -> None:
        self.pattern = pattern
        self._next = 0
        self._held: dict[str, int] = {}

    def matches(self) -> list[str]:
        if self.pattern is None:
            return []
        found = []
        for path in glob.iglob(self.pattern):
            found.append(path)
            if len(found) >= MAX_MATCHES:
                break
        return sorted(found)

    def acquire(self) -> str | None:
        """The next device; None if there is no pattern. ``LookupError`` if it matches nothing."""
        if self.pattern is None:
            return None
        found = self.matches()
        if not found:
            raise LookupError(f"not found: {self.pattern}")
        order = [found[(self._next + i) % len(found)] for i in range(len(found))]
        pick = next((path for path in order if path not in self._held), order[0])
        self._next = (found.index(pick) + 1) % len(found)
        self._held[pick] = self._held.get(pick, 0) + 1
        return pick

    def release(self, device: str | None) -> None:
        if device is None or device not in self._held:
            return
        self._held[device] -= 1
        if not self._held[device]:
            del self._held[device]


class Runner(ABC):
    """Runs one job to a result; cancelling ``run`` stops the job (lease lost, forced stop)."""

    @abstractmethod
    async def run(self, job: JobSpec) -> JobResult: ...

    async def start(self) -> None:  # noqa: B027  (most runners load nothing)
        """Load what the runner needs (an engine's model)."""

    async def aclose(self) -> None:  # noqa: B027
        """Free it."""


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """The worker flags that shape how a workload runs."""

    #: ``[workload, *worker_args]``
    workload: tuple[str, ...]
    ignore_args: bool = False
    workdir: str | None = None
    max_output_bytes: int = 65536
    discard_output: bool = False
    limit_s: float = 0.0
    kill_grace_s: float = 2.0

    def argv(self, job: JobSpec) -> tuple[str, ...]:
        """``[workload, *worker_args, *job_args]``, FILENAME replaced."""
        extra = () if self.ignore_args else job.args
        return (self.workload[0], *substitute(self.workload[1:] + extra, job.device))

    def limit(self, job: JobSpec) -> float | None:
        return effective_limit(job.limit_s, self.limit_s)


class OutputCapture:
    """Keeps the first ``limit`` bytes of a stream and counts the rest, which it drops."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._kept = 0
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self._limit - self._kept
        if room > 0:
            self._parts.append(data[:room])
            self._kept += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        text = b"".join(self._parts).decode("utf-8", "replace")
        if self.dropped:
            text += f"\n[output truncated: {self.dropped} more bytes dropped]"
        return text


def cut_output(output: str, trims: int) -> str:
    """The output cut to a quarter per trim, for a proxy that refused the result as too large."""
    keep = len(output) >> (2 * trims)
    return output[:keep] + "\n[output cut to fit the proxy's result limit]" if keep else ""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # ProcessLookupError: the group is gone already; PermissionError: the pid was reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def describe_status(returncode: int) -> str | None:
    """``exit status 3`` / ``killed by signal 9``; None for a clean exit."""
    if returncode == 0:
        return None
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class ProcessRunner(Runner):
    """The workload as a real process (argv, its own session, bounded output and time)."""

    def __init__(self, settings: RunnerSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._die_with_us = _parent_death_hook()
        self._env = {name: value for name, value in os.environ.items() if name not in SECRET_ENV}

    async def run(self, job: JobSpec) -> JobResult:
        settings = self.settings
        argv = settings.argv(job)
        device = job.device or ""
        started = self._clock()
        read_fd, write_fd = (-1, -1) if settings.discard_output else os.pipe()
        out: int = asyncio.subprocess.DEVNULL if settings.discard_output else write_fd
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=settings.workdir,
                env=self._env,
                start_new_session=True,
                preexec_fn=self._die_with_us,
            )
        except (OSError, ValueError) as exc:
            _close(read_fd, write_fd)
            return JobResult(None, _start_error(exc, argv[0], settings.workdir), device=device)
        except BaseException:
            _close(read_fd, write_fd)
            raise
        capture = OutputCapture(settings.max_output_bytes)
        reader: asyncio.Task[None] | None = None
        if write_fd >= 0:
            # Our own pipe, not the transport's: wait() must not wait on a grandchild
            # that keeps the pipe open, only on the workload itself.
            os.close(write_fd)
            reader = asyncio.create_task(_read_pipe(read_fd, capture), name="worker-output")
        timed_out = False
        try:
            try:
                async with asyncio.timeout(settings.limit(job)):
                    await proc.wait()
            except TimeoutError:
                timed_out = True
                await self._terminate(proc)
        except asyncio.CancelledError:
            await self._terminate(proc)
            raise
        finally:
            # Whatever the workload left running in its group ends with it.
            _signal_group(proc.pid, signal.SIGKILL)
            if reader is not None:
                await _finish_reader(reader)
        returncode = proc.returncode
        error = describe_status(returncode) if returncode is not None else "not reaped"
        if timed_out:
            error = f"timed out after {settings.limit(job):g}s ({error})"
        return JobResult(
            exit_code=returncode,
            error=error,
            timed_out=timed_out,
            output=capture.text(),
            run_s=self._clock() - started,
            device=device,
        )

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the group; SIGKILL after the grace if the workload is still there."""
        if proc.returncode is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.settings.kill_grace_s)
            return
        except TimeoutError:
            pass
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), REAP_S)


def _close(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _parent_death_hook() -> Callable[[], None] | None:
    """A hook run in the forked child before exec: SIGKILL to the workload if the
    worker dies (kill -9, OOM), so a workload never outlives its worker unseen.
    Linux only; elsewhere None. libc is loaded here, in the parent, not after fork."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return hook


def _start_error(exc: BaseException, program: str, workdir: str | None) -> str:
    if isinstance(exc, FileNotFoundError):
        missing = exc.filename if exc.filename else program
        if workdir and not os.path.isdir(workdir):
            missing = workdir
        return f"not found: {missing}"
    if isinstance(exc, PermissionError):
        return f"not executable: {program}"
    return f"cannot start {program}: {exc}"


async def _read_pipe(fd: int, capture: OutputCapture) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    except BaseException:
        # uvloop closes the pipe itself when the connect is cancelled: EBADF here must
        # not replace the cancellation (a task error nobody retrieves, logged at exit)
        with contextlib.suppress(OSError):
            pipe.close()
        raise
    try:
        while chunk := await reader.read(READ_CHUNK):
            capture.feed(chunk)
    finally:
        transport.close()


async def _finish_reader(reader: asyncio.Task[None]) -> None:
    """Read what is left in the pipe, for a bounded time: a process outside the group
    (one that left it with setsid) may hold the pipe open; the job does not wait on it."""
    try:
        await asyncio.wait({reader}, timeout=DRAIN_S)
    finally:
        if not reader.done():
            reader.cancel()
            await asyncio.wait({reader})
    if not reader.cancelled() and (exc := reader.exception()) is not None:
        logger.debug("reading the workload's output failed: %r", exc)
