"""Relaying a stream, and moving it to another backend when its backend fails.

The first chunk is in hand when the stream starts (the forwarder retried
elsewhere until one came). From then on a failure of the backend (connection
lost, a stalled stream, an error event, which is never relayed) migrates the
stream: the request is re-sent, made to continue from the text relayed so far
(``inferno.proxy.migration``), to another backend serving the model, or to the
same one once it is back, within the request's deadline. The client sees one
stream. Past ``--migration-max-per-stream`` migrations, or when the stream
cannot be continued, it ends with an SSE error event as before.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from inferno.config import MigrationConfig, UpstreamConfig
from inferno.errors import (
    DeadlineExceeded,
    InfernoError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from inferno.http.client import UpstreamResponse
from inferno.http.responses import sse_error_event
from inferno.http.server import Responder
from inferno.observability.metrics import ProxyStats
from inferno.proxy.admission import AdmissionController
from inferno.proxy.bodies import response_headers, usage_of
from inferno.proxy.job import Job
from inferno.proxy.migration import (
    DONE,
    ERROR_EVENT,
    Restamper,
    StreamTape,
    TapeBudget,
    continuation_body,
    read_tape,
)
from inferno.registry.registry import WorkerRegistry
from inferno.registry.worker import WorkerInfo

logger = logging.getLogger(__name__)

PAST_DEADLINE = "the request deadline passed during the stream"


class Tries(Protocol):
    def __call__(
        self, job: Job, *, stream: bool, last: bool, avoid: frozenset[str], urgent: bool
    ) -> Awaitable[tuple[WorkerInfo, UpstreamResponse, float]]: ...


class StreamRelay:
    """The streamed half of the forwarder."""

    def __init__(
        self,
        registry: WorkerRegistry,
        admission: AdmissionController,
        stats: ProxyStats,
        upstream: UpstreamConfig,
        migration: MigrationConfig,
        *,
        tries: Tries,
        on_failure: Callable[[WorkerInfo, UpstreamError], None],
        clock: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._admission = admission
        self._stats = stats
        self._up = upstream
        self._cfg = migration
        self._tries = tries
        self._on_failure = on_failure
        self._clock = clock
        #: the raw stream bytes kept across every stream of this proxy
        self.budget = TapeBudget(migration.port_bytes)

    def _tape(self, job: Job) -> StreamTape | None:
        if job.api is None or self._cfg.max_per_stream == 0:
            return None
        return StreamTape(self.budget, self._cfg.stream_bytes)

    async def relay(
        self,
        responder: Responder,
        upstream: UpstreamResponse,
        worker: WorkerInfo,
        job: Job,
        t_send: float,
        model: str,
    ) -> WorkerInfo:
        """Relay the stream to its end; returns the backend that finished it, whose
        slot the caller releases (any earlier one is released here)."""
        now = self._clock()
        # For streams the timings are known when the headers go out: ``backend`` is the
        # time to the backend's response headers, ``total`` the time to ours.
        timing = b'queue;dur=%.3f, backend;dur=%.3f;desc="time to first chunk", total;dur=%.3f' % (
            (t_send - job.t0) * 1000.0,
            (now - t_send) * 1000.0,
            (now - job.t0) * 1000.0,
        )
        content_type = upstream.header(b"content-type") or b"text/event-stream"
        # Held: the head goes out with the first chunk, in one send.
        responder.start_stream(
            200,
            response_headers(worker, job.ctx, model, content_type, timing)
            + b"Cache-Control: no-cache\r\n"
            + job.extra_headers,
            hold=True,
        )
        idle = self._up.stream_idle_timeout_s
        used: tuple[int, int] | None = None
        # The first chunk was in hand when the headers went out: that is the first token.
        first_token = now
        chunks = 0
        #: chunks that carried generated text (not [DONE], not the usage chunk)
        relayed = 0
        slow = self._up.slow_chunk_s
        last = now
        was_slow = False
        tape = self._tape(job)
        restamp: Restamper | None = None
        migrations = 0
        #: what went out last ended an SSE event
        at_boundary = True
        #: the stream's ``[DONE]`` went out: the client's answer is complete
        done = False
        try:
            while True:
                try:
                    while True:
                        remaining = job.deadline - self._clock()
                        if remaining <= 0:
                            raise DeadlineExceeded(PAST_DEADLINE)
                        try:
                            # What one read brought goes out in one send: the events
                            # stay whole, only the HTTP chunks around them are fewer.
                            batch = await upstream.next_chunks(min(idle, remaining))
                        except UpstreamTimeout as exc:
                            if self._clock() >= job.deadline:
                                raise DeadlineExceeded(PAST_DEADLINE) from exc
                            raise
                        if batch is None:
                            break
                        arrived = self._clock()
                        if arrived - last > slow:
                            # Slow but alive: reported, never ejected for it.
                            self._registry.mark_suspect(
                                worker, f"{arrived - last:.1f}s between stream chunks"
                            )
                            was_slow = True
                        last = arrived
                        out: list[bytes] = []
                        broken: UpstreamError | None = None
                        for raw in batch:
                            if ERROR_EVENT in raw:
                                # Never relayed: the stream goes on elsewhere, or ends with our own.
                                broken = UpstreamProtocolError(
                                    f"{worker.address} sent an error event mid-stream"
                                )
                                break
                            chunk = restamp(raw) if restamp is not None else raw
                            if not chunk:
                                continue
                            chunks += 1
                            if tape is not None:
                                tape.keep(chunk)
                            if b'"usage"' in chunk and job.on_usage is not None:
                                used = usage_of(chunk) or used
                                if job.strip_usage and (
                                    b'"choices":[]' in chunk or b'"choices": []' in chunk
                                ):
                                    continue  # the usage chunk the client did not ask for
                            elif chunk != DONE:
                                relayed += 1
                            out.append(chunk)
                            if chunk.endswith(DONE):
                                done = True  # the last event: nothing after it is relayed
                                break
                        # The answer's last bytes carry the terminator in the same send.
                        end = broken is None and (done or upstream.ended)
                        if out or end:
                            data = out[0] if len(out) == 1 else b"".join(out)
                            await responder.write(data, end=end)
                            if data:
                                at_boundary = data.endswith(b"\n\n")
                        if broken is not None:
                            raise broken
                        if end:
                            await self._settle(upstream, done, idle)
                            break
                    break
                except UpstreamError as exc:
                    self._on_failure(worker, exc)
                    upstream.close()
                    moved = await self._migrate(responder, job, worker, exc, tape, migrations)
                    if moved is None:
                        raise
                    if isinstance(moved, bytes):
                        # The answer had ended; only its last events were lost.
                        if moved:
                            await responder.write(moved)
                        break
                    self._admission.release(worker, failed=True)
                    worker, upstream, restamp = moved
                    migrations += 1
                    last = self._clock()
            self._registry.record_success(worker, slow=was_slow)
            # Token events are the chunks but the closing ones (finish, usage, [DONE]).
            tokens = max(0, chunks - 2)
            tpot = (last - first_token) / (tokens - 1) if tokens > 1 else None
            self._stats.record_stream(worker.address, model, first_token - job.t0, tpot)
        except (UpstreamError, DeadlineExceeded) as exc:
            logger.warning(
                "Stream %s from %s ended early: %s", job.ctx.request_id, worker.address, exc.message
            )
            upstream.close()
            if responder.client_connected:
                # Ended mid-event: close that event first, so the error is an event of its own.
                head = b"" if at_boundary else b"\n\n"
                await responder.write(head + sse_error_event(exc.message, exc.code))
        except BaseException:
            upstream.close()
            raise
        finally:
            if tape is not None:
                tape.drop()
            if job.on_usage is not None:
                # What was generated is charged even when the stream ended early: the
                # backend's count when its usage came, else one token per text chunk.
                if used is None:
                    used = (job.prompt_chars // 4, relayed)
                job.charge(model, used)
        responder.end_stream()
        return worker

    @staticmethod
    async def _settle(upstream: UpstreamResponse, done: bool, idle_s: float) -> None:
        """After the client's answer ended: the connection goes back to the pool if the
        backend's answer ended too. After ``[DONE]`` its end may still be on the way; a
        backend that sends more, or nothing, within a second is cut off instead."""
        if not upstream.ended and done:
            try:
                if await upstream.next_chunks(min(1.0, idle_s)) is None:
                    return  # it ended: pooled again
            except UpstreamError:
                pass
            upstream.close()
            return
        upstream.finish()

    async def _migrate(
        self,
        responder: Responder,
        job: Job,
        worker: WorkerInfo,
        exc: UpstreamError,
        tape: StreamTape | None,
        migrations: int,
    ) -> tuple[WorkerInfo, UpstreamResponse, Restamper] | bytes | None:
        """Continue the stream elsewhere: the new backend, its response and the restamper
        for its chunks; or the closing bytes when the answer had ended anyway; or None."""
        if not responder.client_connected:
            return None
        if tape is None or job.api is None:
            self._refused("disabled")
            return None
        if tape.chunks is None:
            self._refused("tape_overflow" if tape.overflowed else "disabled")
            return None
        if migrations >= self._cfg.max_per_stream:
            self._refused("limit")
            return None
        data = tape.data()
        resume = read_tape(data, job.api)
        if isinstance(resume, str):
            self._refused(resume)
            return None
        body = None if resume.finished else continuation_body(job.body, job.api, resume)
        if body is None:
            return b"" if data.endswith(DONE) else DONE
        ctx = job.ctx
        others = any(w.address != worker.address for w in self._registry.routable_for(ctx.model, ctx.task))
        # Another backend if there is one; else the same one, once it is back.
        avoid = frozenset({worker.address}) if others else frozenset()
        try:
            new_worker, upstream, _ = await self._tries(
                dataclasses.replace(job, body=body), stream=True, last=True, avoid=avoid, urgent=True
            )
        except InfernoError as failure:
            logger.warning("Stream %s could not be continued: %s", ctx.request_id, failure.message)
            self._refused("no_backend")
            return None
        if upstream.status != 200:
            upstream.close()
            self._admission.release(new_worker, failed=True)
            self._refused(f"status_{upstream.status // 100}xx")
            return None
        self._stats.stream_migrations += 1
        chunk_count = len(tape.chunks or ())
        logger.warning(
            "Stream %s migrated from %s to %s after %d chunks (%s)",
            ctx.request_id,
            worker.address,
            new_worker.address,
            chunk_count,
            exc.message,
        )
        return new_worker, upstream, Restamper(job.api, resume)

    def _refused(self, reason: str) -> None:
        failures = self._stats.stream_migration_failures
        failures[reason] = failures.get(reason, 0) + 1
