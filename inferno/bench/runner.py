"""The load loop: closed-loop, open-loop (constant or Poisson), burst and ramp.

Every run is bounded by a request count and/or a duration; in-flight requests
are then given ``timeout_s`` to finish. Requests go over Inferno's own pooled
keep-alive client (httptools), so the client is rarely the bottleneck; beyond
a few thousand requests per second use ``--processes``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import orjson

from inferno.bench.stats import Sample, parse_server_timing
from inferno.bench.workload import Workload
from inferno.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from inferno.http.client import Timeouts, UpstreamPool, UpstreamResponse, build_request

Mode = Literal["closed", "open", "burst", "ramp"]


@dataclass(frozen=True, slots=True)
class LoadShape:
    mode: Mode = "closed"
    concurrency: int = 8
    rate: float = 10.0
    arrival: Literal["constant", "poisson"] = "constant"
    burst_size: int = 10
    burst_interval_s: float = 1.0
    ramp_to: int = 32
    ramp_by: int = 1
    ramp_step_s: float = 1.0
    requests: int | None = None
    duration_s: float | None = None
    timeout_s: float = 120.0
    #: open-loop safety valve: never more than this many requests in flight
    max_in_flight: int = 10_000


class Runner:
    def __init__(
        self,
        target: str,
        workload: Workload,
        shape: LoadShape,
        sink: Callable[[Sample], None],
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if shape.requests is None and shape.duration_s is None:
            raise ValueError("bound the run with requests and/or duration")
        self.target = target
        self.workload = workload
        self.shape = shape
        self._sink = sink
        self._rng = random.Random(seed)
        self._clock = clock
        self._pool = UpstreamPool(max_idle_per_host=max(64, shape.concurrency * 2))
        self._timeouts = Timeouts(connect_s=5.0, first_byte_s=shape.timeout_s, read_s=shape.timeout_s)
        self._host = target.encode()
        self.parallelism = shape.concurrency
        self.issued = 0
        self.in_flight = 0
        self.started = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- bounds --------------------------------------------------------------------------
    def _may_issue(self) -> bool:
        if self.shape.requests is not None and self.issued >= self.shape.requests:
            return False
        return self.shape.duration_s is None or self._clock() - self.started < self.shape.duration_s

    # -- one request ---------------------------------------------------------------------
    async def one(self, scheduled: float | None = None) -> None:
        """Send one request. Latency counts from ``scheduled`` (open loop), so a slow
        server cannot hide its queueing from us (no coordinated omission)."""
        self.issued += 1
        self.in_flight += 1
        begin = self._clock() if scheduled is None else scheduled
        data = build_request(
            b"POST",
            self.workload.path,
            self._host,
            b"Content-Type: application/json\r\n",
            self.workload.next_body(),
        )
        sample = Sample(start=begin - self.started, latency=0.0, status=0, items=self.workload.items)
        try:
            response = await self._pool.request(
                self.target, data, stream=self.workload.streaming, timeouts=self._timeouts
            )
            sample.status = response.status
            sample.backend = (response.header(b"x-inferno-backend") or b"").decode("latin-1")
            sample.model = (response.header(b"x-inferno-model") or b"").decode("latin-1")
            timing = response.header(b"server-timing")
            if timing:
                parsed = parse_server_timing(timing.decode("latin-1"))
                sample.queue_ms = parsed.get("queue")
                sample.backend_ms = parsed.get("backend")
                sample.proxy_total_ms = parsed.get("total")
            if self.workload.streaming:
                sample.headers_ms = (self._clock() - begin) * 1000.0
                await self._read_stream(response, sample, begin)
            elif self.workload.kind == "batch" and response.status == 200:
                body = orjson.loads(response.body)
                if body.get("failed"):
                    sample.error = "batch_item_failed"
        except UpstreamConnectError:
            sample.error = "connect_error"
        except UpstreamTimeout:
            sample.error = "timeout"
        except UpstreamError:
            sample.error = "connection_broken"
        except orjson.JSONDecodeError:
            sample.error = "bad_body"
        finally:
            sample.latency = self._clock() - begin
            self.in_flight -= 1
            self._sink(sample)

    async def _read_stream(self, response: UpstreamResponse, sample: Sample, begin: float) -> None:
        if response.status != 200:
            response.close()
            return
        last: float | None = None
        buffer = b""
        while True:
            chunk = await response.next_chunk(self.shape.timeout_s)
            if chunk is None:
                break
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: ") or event == b"data: [DONE]":
                    continue
                payload = orjson.loads(event[6:])
                if "error" in payload:
                    sample.error = "stream_error"
                    continue
                choices = payload.get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    now = self._clock()
                    if last is None:
                        sample.ttft = now - begin
                    else:
                        sample.itl.append(now - last)
                    last = now
                    sample.tokens += 1

    # -- shapes --------------------------------------------------------------------------
    async def run(self) -> None:
        self.started = self._clock()
        shape = self.shape
        if shape.mode in ("closed", "ramp"):
            await self._closed()
        elif shape.mode == "open":
            await self._open()
        else:
            await self._burst()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=shape.timeout_s)
        await self._pool.aclose()

    async def _closed(self) -> None:
        workers: list[asyncio.Task[None]] = []

        async def worker(index: int) -> None:
            while index < self.parallelism and self._may_issue():
                await self.one()

        next_ramp = self._clock() + self.shape.ramp_step_s
        while self._may_issue():
            alive = [w for w in workers if not w.done()]
            for index in range(len(alive), self.parallelism):
                alive.append(asyncio.create_task(worker(index)))
            workers = alive
            if self.shape.mode == "ramp" and self._clock() >= next_ramp:
                self.parallelism = min(self.shape.ramp_to, self.parallelism + self.shape.ramp_by)
                next_ramp += self.shape.ramp_step_s
            if not workers:
                break
            await asyncio.wait(workers, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
        if workers:
            await asyncio.wait(workers, timeout=self.shape.timeout_s)

    def _spawn(self, scheduled: float | None) -> None:
        task = asyncio.create_task(self.one(scheduled))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self) -> None:
        rate = self.shape.rate
        next_at = self._clock()
        while self._may_issue():
            now = self._clock()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            if self.in_flight < self.shape.max_in_flight:
                self._spawn(next_at)
            gap = self._rng.expovariate(rate) if self.shape.arrival == "poisson" else 1.0 / rate
            next_at += gap

    async def _burst(self) -> None:
        while self._may_issue():
            started = self._clock()
            for _ in range(self.shape.burst_size):
                if not self._may_issue():
                    break
                self._spawn(None)
            await asyncio.sleep(max(0.0, self.shape.burst_interval_s - (self._clock() - started)))
