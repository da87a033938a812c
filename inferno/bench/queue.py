"""The queue mode's load: slots that each submit a job, wait for its result, and repeat.

Each slot sends ``POST /v1/queues/NAME/jobs`` (docs/queues.md) and waits for the
result; a ``202`` (the proxy's wait ran out) is followed by polls of
``GET /v1/jobs/ID`` until the request's deadline. The client never dies on an error:
a ``429`` backs the slot off for ``Retry-After`` (bounded), connection errors, ``5xx``
and timeouts are counted by class and the slot retries after a short, growing
backoff. Slots can be added and removed while running (``parallelism``); a removed
slot finishes its request first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from inferno.bench.queue_stats import JobResult, QueueStats
from inferno.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from inferno.http.client import ResponseLimits, Timeouts, UpstreamPool, UpstreamResponse, build_request

logger = logging.getLogger(__name__)

#: a Retry-After is honoured up to this many seconds
MAX_RETRY_AFTER_S = 30.0
#: without (or with a bad) Retry-After a 429 waits this long
DEFAULT_RETRY_AFTER_S = 1.0
#: backoff after other failures: doubles from the first value to the last
BACKOFF_S = (0.05, 5.0)
#: a result body read at most (the proxy bounds results to 64 KiB by default)
MAX_RESULT_BYTES = 4 << 20
#: longest single poll of GET /v1/jobs/ID (the proxy caps it at --queue-max-poll-s)
MAX_POLL_S = 60
#: a 202 that came back faster than this (a proxy that does not hold the poll) is
#: followed by a pause of this long before the next poll: never a busy loop
FAST_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class QueueLoadConfig:
    target: str
    queue: str
    args: tuple[str, ...] = ()
    limit_s: float = 0.0
    api_key: str | None = None
    parallelism: int = 1
    max_parallelism: int = 1000
    #: pause of each slot between its requests
    delay_s: float = 0.0
    #: None: run until stopped
    duration_s: float | None = None
    #: stop after this many results (None: no bound)
    requests: int | None = None
    #: each request's deadline, submit and polls together
    timeout_s: float = 120.0
    connect_timeout_s: float = 5.0


class ParallelismError(ValueError):
    """A parallelism outside 1..max_parallelism."""


class QueueLoad:
    """Runs the slots; ``stats`` holds what they measured; ``stop()`` ends the run."""

    def __init__(
        self,
        cfg: QueueLoadConfig,
        stats: QueueStats | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= cfg.parallelism <= cfg.max_parallelism:
            raise ParallelismError(f"parallelism must be from 1 to {cfg.max_parallelism}")
        self.cfg = cfg
        self.stats = stats or QueueStats(clock)
        self._clock = clock
        self._rng = rng or random.Random(0)
        self._parallelism = cfg.parallelism
        self._pool = UpstreamPool(
            max_idle_per_host=min(cfg.max_parallelism, 4096),
            limits=ResponseLimits(max_body_bytes=MAX_RESULT_BYTES),
        )
        self._host = cfg.target.encode()
        quoted = urllib.parse.quote(cfg.queue, safe="")
        self._submit_path = f"/v1/queues/{quoted}/jobs?wait=true".encode()
        headers = b"Content-Type: application/json\r\n"
        if cfg.api_key:
            headers += b"Authorization: Bearer " + cfg.api_key.encode("latin-1") + b"\r\n"
        self._headers = headers
        self._body = orjson.dumps({"args": list(cfg.args), "limit_s": cfg.limit_s})
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()
        self._abandon = asyncio.Event()
        self._slots: dict[int, asyncio.Task[None]] = {}
        self.issued = 0
        #: requests in flight when the run was abandoned (a signal)
        self.abandoned = 0

    # -- steering -------------------------------------------------------------------------
    @property
    def parallelism(self) -> int:
        return self._parallelism

    def set_parallelism(self, value: int) -> None:
        if not 1 <= value <= self.cfg.max_parallelism:
            raise ParallelismError(
                f"parallelism must be from 1 to {self.cfg.max_parallelism} (--max-parallelism)"
            )
        self._parallelism = value
        self._changed.set()

    def stop(self, *, drain: bool = True) -> None:
        """Stop issuing; requests in flight finish (for at most ``timeout_s``), or with
        ``drain=False`` are abandoned at once (closing them cancels their jobs)."""
        self._stopping.set()
        if not drain:
            self._abandon.set()
        self._changed.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def slots(self) -> int:
        return len(self._slots)

    # -- the run --------------------------------------------------------------------------
    async def run(self) -> None:
        """Until ``stop()``, the duration or the request count; then drain the slots."""
        start = self._clock()
        try:
            while not self._stopping.is_set():
                for index in range(self._parallelism):
                    slot = self._slots.get(index)
                    if slot is None or slot.done():
                        self._slots[index] = asyncio.create_task(self._slot(index))
                        self._slots[index].add_done_callback(self._forget_slot(index))
                self._changed.clear()
                timeout = None
                if self.cfg.duration_s is not None:
                    timeout = self.cfg.duration_s - (self._clock() - start)
                    if timeout <= 0:
                        break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=timeout)
            self._stopping.set()
            tasks = [t for t in self._slots.values() if not t.done()]
            if tasks and not self._abandon.is_set():
                drained = asyncio.ensure_future(asyncio.wait(tasks, timeout=self.cfg.timeout_s))
                abandon = asyncio.ensure_future(self._abandon.wait())
                await asyncio.wait([drained, abandon], return_when=asyncio.FIRST_COMPLETED)
                for waiter in (drained, abandon):
                    waiter.cancel()
        finally:
            for task in list(self._slots.values()):
                task.cancel()
            if self._slots:
                await asyncio.wait(list(self._slots.values()), timeout=2.0)
            await self._pool.aclose()

    def _forget_slot(self, index: int) -> Callable[[asyncio.Task[None]], None]:
        def forget(task: asyncio.Task[None]) -> None:
            if self._slots.get(index) is task:
                del self._slots[index]

        return forget

    def _may_issue(self) -> bool:
        if self._stopping.is_set():
            return False
        if self.cfg.requests is not None and self.issued >= self.cfg.requests:
            self.stop()
            return False
        return True

    async def _slot(self, index: int) -> None:
        failures = 0
        while index < self._parallelism and self._may_issue():
            self.issued += 1
            try:
                pause = await self.one()
            except Exception as exc:  # the client never dies: a bug here is a counted failure
                logger.exception("queue bench request failed unexpectedly")
                self.stats.failure("client_error", repr(exc))
                pause = -1.0
            if pause is None:
                failures = 0
                pause = self.cfg.delay_s
            elif pause < 0:  # a failure that gives no Retry-After: back off, growing
                failures += 1
                low, high = BACKOFF_S
                pause = min(high, low * 2 ** min(failures - 1, 16)) * (0.5 + self._rng.random() / 2)
            if pause > 0:
                await self._sleep(pause)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    # -- one request ----------------------------------------------------------------------
    async def one(self) -> float | None:
        """Submit one job and record what came of it. Returns None after a result, else
        the pause before the next try (negative: back off by the slot's own schedule)."""
        stats = self.stats
        began = self._clock()
        deadline = began + self.cfg.timeout_s
        stats.request_started()
        job_id: str | None = None
        try:
            sent = began
            response = await self._call(b"POST", self._submit_path, self._body, deadline)
            while response.status == 202:
                job_id = _job_id(response.body)
                if job_id is None:
                    stats.failure("bad_body", "a 202 without a job_id", 202)
                    return -1.0
                if self._clock() - sent < FAST_POLL_S:
                    await asyncio.sleep(min(FAST_POLL_S, max(0.0, deadline - self._clock())))
                sent = self._clock()
                # the proxy's own wait ran out: poll, each poll within what is left
                left = deadline - self._clock()
                wait_s = max(1, min(MAX_POLL_S, int(left)))
                poll = f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}?wait_s={wait_s}"
                response = await self._call(b"GET", poll.encode(), b"", deadline)
            if response.status == 200:
                stats.result(_parse_result(response.body, self._clock() - began))
                return None
            return self._http_failure(response)
        except UpstreamTimeout as exc:
            stats.failure("timeout", str(exc))
            if job_id is not None:
                # a job we stopped polling for is not left to run (closing a submission
                # cancels its job at the proxy; closing a poll does not)
                await self._cancel(job_id)
        except UpstreamConnectError as exc:
            stats.failure("connect_error", str(exc))
        except UpstreamError as exc:
            stats.failure("connection_broken", str(exc))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            stats.failure("bad_body", str(exc), 200)
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        finally:
            stats.request_ended()
        return -1.0

    async def _call(self, method: bytes, path: bytes, body: bytes, deadline: float) -> UpstreamResponse:
        left = deadline - self._clock()
        if left <= 0:
            raise UpstreamTimeout("request deadline passed")
        data = build_request(method, path, self._host, self._headers, body)
        timeouts = Timeouts(connect_s=min(self.cfg.connect_timeout_s, left), first_byte_s=left, read_s=left)
        # never resent by the pool: a submission the peer took before closing would run twice
        return await self._pool.request(
            self.cfg.target, data, timeouts=timeouts, retry_idle=method != b"POST"
        )

    async def _cancel(self, job_id: str) -> None:
        """Best effort: a job we stopped waiting for is not left to run."""
        path = f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}".encode()
        with contextlib.suppress(UpstreamError):
            await self._call(b"DELETE", path, b"", self._clock() + 2.0)

    def _http_failure(self, response: UpstreamResponse) -> float:
        status = response.status
        detail = _error_message(response.body)
        if status == 429:
            self.stats.failure("http_429", detail, status)
            return retry_after(response.header(b"retry-after"))
        self.stats.failure(f"http_{status}", detail, status)
        return -1.0


def retry_after(value: bytes | None) -> float:
    """Seconds to wait for a ``Retry-After`` header (seconds form), bounded."""
    if value is None:
        return DEFAULT_RETRY_AFTER_S
    try:
        seconds = float(value.decode("latin-1").strip())
    except ValueError:
        return DEFAULT_RETRY_AFTER_S
    if not seconds >= 0:  # NaN
        return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(0.01, seconds))


def _job_id(body: bytes) -> str | None:
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(body)
        if isinstance(data, dict) and isinstance(data.get("job_id"), str):
            return str(data["job_id"])[:200]
    return None


def _error_message(body: bytes) -> str:
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return str(data["error"].get("message", ""))[:200]
    return body[:200].decode("utf-8", "replace")


def _num(data: dict[str, object], key: str) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _text(data: dict[str, object], key: str) -> str:
    value = data.get(key)
    return value[:200] if isinstance(value, str) else ""


def _parse_result(body: bytes, client_s: float) -> JobResult:
    """The result object of docs/queues.md; missing or odd fields read as 0 / ''."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise ValueError("result is not a JSON object")
    return JobResult(
        outcome=_text(data, "outcome") or "unknown",
        client_s=client_s,
        wait_s=_num(data, "wait_s"),
        run_s=_num(data, "run_s"),
        total_s=_num(data, "total_s"),
        attempts=int(_num(data, "attempts")),
        node=_text(data, "node"),
        pod=_text(data, "pod"),
        device=_text(data, "device"),
    )
