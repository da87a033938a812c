"""Forwarding: admit, send, retry elsewhere on failure, relay the answer.

A request is retried on a *different* backend, after a full-jitter backoff, only
while nothing has gone back to the client: connection refused/reset, connect
timeout, a per-try first-byte timeout, or a 5xx from the backend. Once a
stream has started, a failure ends it with an SSE error event instead. Every
outcome feeds passive outlier detection; a client's 4xx never counts against
a backend. See docs/retries.md and docs/deadlines.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping

from inferno.config import DeadlineConfig, MigrationConfig, RetryConfig, UpstreamConfig
from inferno.errors import (
    DeadlineExceeded,
    InfernoError,
    ModelNotFound,
    NoBackendAvailable,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from inferno.http.client import Timeouts, UpstreamPool, UpstreamResponse, build_request
from inferno.http.server import Responder
from inferno.observability.metrics import ProxyStats
from inferno.observability.tracing import Tracing
from inferno.proxy.admission import AdmissionController
from inferno.proxy.bodies import read_bounded, response_headers, served_model, usage_of
from inferno.proxy.job import Job, Outcome
from inferno.proxy.migration import ERROR_EVENT
from inferno.proxy.streams import StreamRelay

__all__ = ["Forwarder", "Job", "Outcome"]
from inferno.proxy.requestlog import log_answer, log_route
from inferno.registry.registry import WorkerRegistry
from inferno.registry.worker import WorkerInfo

logger = logging.getLogger(__name__)

#: 508: the backend is a route back into this proxy (a loop), never the answer
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504, 508})


#: what makes a model's own tries give up and its fallback run
FALLBACK_ON = (NoBackendAvailable, ModelNotFound, UpstreamError)


class Forwarder:
    def __init__(
        self,
        registry: WorkerRegistry,
        admission: AdmissionController,
        pool: UpstreamPool,
        stats: ProxyStats,
        upstream: UpstreamConfig,
        retry: RetryConfig,
        deadline: DeadlineConfig,
        *,
        fallbacks: Mapping[str, tuple[str, ...]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        tracing: Tracing | None = None,
        via: bytes = b"1.1 inferno",
        migration: MigrationConfig | None = None,
    ) -> None:
        #: this proxy's ``Via`` entry, unique per process: a request that comes back
        #: carrying it is a loop (ProxyApp answers it 508)
        self.via = via
        #: OpenTelemetry (``--otlp-endpoint``), else None: then tracing costs one test per call
        self.tracing = tracing
        self._fallbacks = dict(fallbacks or {})
        self._registry = registry
        self._admission = admission
        self._pool = pool
        self._stats = stats
        self._up = upstream
        self._retry = retry
        self._deadline = deadline
        self._clock = clock
        self._rng = rng or random.Random()
        self._streams = StreamRelay(
            registry,
            admission,
            stats,
            upstream,
            migration or MigrationConfig(),
            tries=self._tries,
            on_failure=self._on_failure,
            clock=clock,
        )

    # -- the per-try timeout rule (docs/deadlines.md) ------------------------------------
    def per_try_timeout(self, worker: WorkerInfo, job: Job, *, can_retry: bool) -> float:
        return self._per_try(worker, job, can_retry=can_retry)[0]

    def _per_try(self, worker: WorkerInfo, job: Job, *, can_retry: bool) -> tuple[float, bool]:
        """(timeout, whether its expiry counts against the backend).

        Expiry counts when the backend's own budget ran out, or when the request's
        deadline cut the try short but still left at least the time the backend
        normally needs (max_tokens at its measured speed): a busy backend asked for
        the impossible is not a failing one.
        """
        remaining = job.deadline - self._clock()
        speed = worker.vitals.decode_tokens_per_s or self._deadline.assumed_tokens_per_s
        expected = job.max_tokens / speed
        budget = self._deadline.per_try_base_s + self._deadline.per_try_safety_factor * expected
        cap = remaining * self._deadline.per_try_max_fraction if can_retry else remaining
        timeout = max(0.001, min(budget, cap))
        return timeout, cap >= budget or timeout >= expected

    def _backoff_s(self, attempt: int) -> float:
        ceiling = min(self._retry.backoff_max_ms, self._retry.backoff_base_ms * (2 ** (attempt - 1)))
        return self._rng.uniform(0.0, ceiling) / 1000.0

    # -- attempts ------------------------------------------------------------------------
    async def _exchange(self, job: Job, *, stream: bool) -> tuple[Job, WorkerInfo, UpstreamResponse, float]:
        """Tries on the job's model, then on each of its fallbacks in turn, until one
        gets a response worth returning (the job that got it comes back too)."""
        first = job.ctx.model
        chain = self._fallbacks.get(first, ()) if first is not None else ()
        if first is None or not chain:
            return (job, *await self._tries(job, stream=stream, last=True))
        models = (first, *chain)
        for index, model in enumerate(models):
            attempt = job if index == 0 else job.for_model(model)
            try:
                return (attempt, *await self._tries(attempt, stream=stream, last=index == len(models) - 1))
            except FALLBACK_ON as exc:
                if index == len(models) - 1:
                    raise
                self._stats.fallbacks += 1
                logger.warning(
                    "Falling back from model %s to %s for request %s: %s",
                    model,
                    models[index + 1],
                    job.ctx.request_id,
                    exc.message,
                )
        raise AssertionError("unreachable")

    async def _tries(
        self,
        job: Job,
        *,
        stream: bool,
        last: bool,
        avoid: frozenset[str] = frozenset(),
        urgent: bool = False,
    ) -> tuple[WorkerInfo, UpstreamResponse, float]:
        """Run attempts until one gets a response worth returning. The caller releases.
        Unless this is the ``last`` model to try, a final 5xx raises instead. ``avoid``
        and ``urgent`` are for a migrating stream (``AdmissionController.acquire``)."""
        ctx = job.ctx
        tried = avoid
        via = job.via + b", " + self.via if job.via else self.via
        rid = ctx.request_id.encode()
        headers = b"Content-Type: application/json\r\nX-Request-ID: " + rid + b"\r\nVia: " + via + b"\r\n"
        max_attempts = self._retry.max_attempts
        attempt = 0
        while True:
            attempt += 1
            remaining = job.deadline - self._clock()
            if remaining <= 0:
                raise DeadlineExceeded("the request deadline passed before a backend answered")
            worker = await self._admission.acquire(
                ctx, tried, timeout_s=remaining, urgent=urgent, on_cold=job.cold_started
            )
            address = worker.address
            log_route(ctx.request_id, address, attempt)
            pool = self._registry.routable_for(ctx.model, ctx.task)
            # A migrating stream may go back to a backend it tried, once that one is back.
            can_retry = attempt < max_attempts and (urgent or len(pool) > len(tried) + 1)
            if stream:
                budget = self._up.stream_first_byte_timeout_s
                cap = remaining * self._deadline.per_try_max_fraction if can_retry else remaining
                first_byte = min(budget, cap)
                # The first token normally comes within the base allowance.
                counts = cap >= budget or first_byte >= self._deadline.per_try_base_s
            else:
                first_byte, counts = self._per_try(worker, job, can_retry=can_retry)
            timeouts = Timeouts(
                connect_s=min(self._up.connect_timeout_s, first_byte),
                first_byte_s=first_byte,
                read_s=first_byte,
            )
            span = None
            try_headers = headers
            if job.span is not None:
                assert self.tracing is not None
                span = self.tracing.start_child(
                    job.span, "inferno.try", **{"inferno.backend": address, "inferno.attempt": attempt}
                )
                try_headers = headers + self.tracing.header(span)
            data = build_request(b"POST", job.path, address.encode(), try_headers, job.body)
            t_send = self._clock()
            upstream: UpstreamResponse | None = None
            failure: UpstreamError | None = None
            try:
                response = await self._pool.request(
                    address, data, stream=stream, timeouts=timeouts, request_id=rid
                )
                if stream and response.status == 200:
                    # Hold the headers until the first chunk: a backend that fails before
                    # it sends anything is retried elsewhere instead of breaking a stream.
                    # Headers and first chunk share one first-byte budget.
                    left = max(0.001, first_byte - (self._clock() - t_send))
                    try:
                        first_chunk = await response.next_chunk(left)
                    except BaseException:
                        response.close()
                        raise
                    if first_chunk is not None and ERROR_EVENT in first_chunk:
                        response.close()  # nothing relayed yet: try elsewhere
                        raise UpstreamProtocolError(f"{address} began its stream with an error event")
                    response.unshift(first_chunk)
                upstream = response
                if upstream.status in RETRYABLE_STATUSES:
                    failure = UpstreamStatusError(
                        f"{address} answered {upstream.status}", upstream_status=upstream.status
                    )
            except UpstreamError as exc:
                failure = exc
            except BaseException:
                self._admission.release(worker, failed=True)
                if span is not None:
                    Tracing.end(span, error="cancelled")
                raise
            if span is not None:
                status = upstream.status if upstream is not None else None
                Tracing.end(span, status, failure.message if failure is not None else None)
            if failure is None:
                assert upstream is not None
                return worker, upstream, t_send
            if not counts and isinstance(failure, UpstreamTimeout):
                # The request's own deadline cut this try short, not the backend's budget:
                # a busy backend is not a dead one, so this never counts towards ejection.
                logger.info("Try of request %s on %s cut short by its deadline", ctx.request_id, address)
            else:
                self._on_failure(worker, failure)
            deadline_hit = self._clock() >= job.deadline
            if upstream is not None and ((not can_retry and last) or deadline_hit):
                # Out of tries: the backend's own 5xx answer goes back to the client.
                return worker, upstream, t_send
            self._admission.release(worker, failed=True)
            if upstream is not None:
                upstream.close()
            if deadline_hit:
                raise DeadlineExceeded(f"deadline exceeded waiting for {address}") from failure
            if not can_retry:
                raise failure
            tried = tried | {address}
            if urgent and all(w.address in tried for w in self._registry.routable_for(ctx.model, ctx.task)):
                tried = frozenset()
            self._stats.retries += 1
            logger.warning("Retrying request %s after %s: %s", ctx.request_id, address, failure.message)
            delay = min(self._backoff_s(attempt), max(0.0, job.deadline - self._clock()))
            if delay > 0:
                await asyncio.sleep(delay)

    def _on_failure(self, worker: WorkerInfo, exc: UpstreamError) -> None:
        """Passive outlier detection: count the failure, eject on refusal at once."""
        if isinstance(exc, UpstreamConnectError):
            reason = "connection_refused" if exc.refused else "connect_error"
            if exc.refused:
                self._pool.drop_address(worker.address)
                self._registry.report_refused(worker.address)
        elif isinstance(exc, UpstreamStatusError):
            reason = f"status_{exc.upstream_status}"
        elif isinstance(exc, UpstreamTimeout):
            reason = "timeout"
        else:
            reason = "connection_broken"
        self._stats.record_error(worker.address, reason)
        self._registry.record_failure(worker, reason)

    # -- non-streamed --------------------------------------------------------------------
    async def call(self, job: Job, *, splice_timings: bool) -> Outcome:
        if self.tracing is None:
            return await self._call(job, splice_timings=splice_timings)
        self._start_span(job)
        try:
            outcome = await self._call(job, splice_timings=splice_timings)
        except BaseException as exc:
            self._end_span(job, exc)
            raise
        Tracing.end(job.span, outcome.status)
        return outcome

    def _start_span(self, job: Job) -> None:
        assert self.tracing is not None
        job.span = self.tracing.start(
            "inferno.request",
            job.traceparent,
            **{"http.route": job.path.decode(), "inferno.request_id": job.ctx.request_id},
        )

    def _end_span(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, InfernoError):
            Tracing.end(job.span, exc.status, exc.message)
        else:
            Tracing.end(job.span, error=type(exc).__name__)

    async def _call(self, job: Job, *, splice_timings: bool) -> Outcome:
        job, worker, upstream, t_send = await self._exchange(job, stream=False)
        try:
            if upstream.status < 500:
                self._registry.record_success(worker)
            now = self._clock()
            queue_ms = (t_send - job.t0) * 1000.0
            backend_ms = (now - t_send) * 1000.0
            total_ms = (now - job.t0) * 1000.0
            body = upstream.body
            if splice_timings and upstream.status == 200 and body.endswith(b"}"):
                # Splice the proxy's timings into the backend's JSON instead of re-encoding it.
                body = b'%b,"timings":{"queue_ms":%.3f,"backend_ms":%.3f,"total_ms":%.3f}}' % (
                    body[:-1],
                    queue_ms,
                    backend_ms,
                    total_ms,
                )
            timing = b"queue;dur=%.3f, backend;dur=%.3f, total;dur=%.3f" % (
                queue_ms,
                backend_ms,
                total_ms,
            )
            content_type = upstream.header(b"content-type") or b"application/json"
            model = served_model(worker, job.ctx)
            headers = response_headers(worker, job.ctx, model, content_type, timing) + job.extra_headers
            self._stats.record(worker.address, upstream.status, now - job.t0, model, job.path)
            log_answer(job.ctx.request_id, job.path, worker, upstream.status, model, job.t0, t_send, now)
            if job.on_usage is not None and upstream.status == 200:
                used = usage_of(body)
                job.charge(model, used or (0, 0))
            return Outcome(upstream.status, headers, body, worker)
        finally:
            self._admission.release(worker)

    async def forward(self, responder: Responder, job: Job, *, stream: bool, splice_timings: bool) -> None:
        if self.tracing is None:
            await self._forward(responder, job, stream=stream, splice_timings=splice_timings)
            return
        self._start_span(job)
        try:
            status = await self._forward(responder, job, stream=stream, splice_timings=splice_timings)
        except BaseException as exc:
            self._end_span(job, exc)
            raise
        Tracing.end(job.span, status)

    async def _forward(self, responder: Responder, job: Job, *, stream: bool, splice_timings: bool) -> int:
        """Answer one request; returns the status sent."""
        if not stream:
            outcome = await self._call(job, splice_timings=splice_timings)
            responder.send(outcome.status, outcome.headers, outcome.body)
            return outcome.status
        job, worker, upstream, t_send = await self._exchange(job, stream=True)
        model = served_model(worker, job.ctx)
        try:
            if upstream.status != 200:
                # An error before the stream began: answer it whole.
                body = await read_bounded(
                    upstream, self._up.stream_idle_timeout_s, self._up.max_response_bytes
                )
                content_type = upstream.header(b"content-type") or b"application/json"
                if upstream.status < 500:
                    self._registry.record_success(worker)
                headers = response_headers(worker, job.ctx, model, content_type, b"") + job.extra_headers
                responder.send(upstream.status, headers, body)
            else:
                # The relay may move the stream; it hands back the backend that finished it.
                worker = await self._streams.relay(responder, upstream, worker, job, t_send, model)
            now = self._clock()
            self._stats.record(worker.address, upstream.status, now - job.t0, model, job.path)
            log_answer(job.ctx.request_id, job.path, worker, upstream.status, model, job.t0, t_send, now)
            return upstream.status
        finally:
            self._admission.release(worker)
