"""Forwarding: pick a backend, send, retry elsewhere on failures, relay the answer.

A request is retried on a *different* backend only while nothing has gone back
to the client: connection refused/reset, connect timeout, or a 502/503 from the
backend. Once a stream has started, a failure ends it with an SSE error event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from inferno.config import UpstreamConfig
from inferno.errors import (
    ModelNotFound,
    NoBackendAvailable,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from inferno.http.client import Timeouts, UpstreamPool, UpstreamResponse, build_request
from inferno.http.responses import sse_error_event
from inferno.http.server import Responder
from inferno.observability.metrics import ProxyStats
from inferno.policies.base import LoadBalancingPolicy, RequestContext
from inferno.registry.registry import WorkerRegistry
from inferno.registry.worker import WorkerInfo

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({502, 503})


class Forwarder:
    def __init__(
        self,
        registry: WorkerRegistry,
        policy: LoadBalancingPolicy,
        pool: UpstreamPool,
        stats: ProxyStats,
        config: UpstreamConfig,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._registry = registry
        self._policy = policy
        self._pool = pool
        self._stats = stats
        self._cfg = config
        self._clock = clock
        self._timeouts = Timeouts(
            connect_s=config.connect_timeout_s,
            first_byte_s=config.first_byte_timeout_s,
            read_s=config.read_timeout_s,
        )

    # -- choosing ------------------------------------------------------------------------
    def pick(self, ctx: RequestContext, tried: set[str] | None = None) -> WorkerInfo:
        routable = self._registry.routable()
        if ctx.model is None and not tried:
            candidates: tuple[WorkerInfo, ...] | list[WorkerInfo] = routable
        else:
            candidates = [
                w for w in routable if w.serves(ctx.model) and (not tried or w.address not in tried)
            ]
        if not candidates:
            if ctx.model is not None and not any(w.serves(ctx.model) for w in self._registry.all()):
                raise ModelNotFound(
                    f"model {ctx.model!r} is not served by any backend; available: {self._registry.models()}",
                    param="model",
                )
            if tried:
                raise NoBackendAvailable(
                    f"all backends failed for this request ({len(tried)} tried) and none is left"
                )
            raise NoBackendAvailable("no healthy backend is available; retry later")
        return self._policy.choose(ctx, candidates)

    # -- forwarding ----------------------------------------------------------------------
    async def forward(
        self,
        responder: Responder,
        ctx: RequestContext,
        *,
        path: bytes,
        body: bytes,
        stream: bool,
        t0: float,
        splice_timings: bool,
    ) -> None:
        rid = ctx.request_id.encode()
        upstream_headers = b"Content-Type: application/json\r\nX-Request-ID: " + rid + b"\r\n"
        tried: set[str] | None = None
        attempt = 0
        while True:
            attempt += 1
            worker = self.pick(ctx, tried)
            address = worker.address
            logger.info("Routing request %s to %s", ctx.request_id, address)
            data = build_request(b"POST", path, address.encode(), upstream_headers, body)
            t_send = self._clock()
            worker.in_flight += 1
            try:
                try:
                    upstream = await self._pool.request(address, data, stream=stream, timeouts=self._timeouts)
                    if upstream.status in RETRYABLE_STATUSES and attempt < self._cfg.max_attempts:
                        upstream.close()
                        raise UpstreamStatusError(
                            f"{address} answered {upstream.status}",
                            upstream_status=upstream.status,
                        )
                except UpstreamError as exc:
                    self._on_failure(worker, exc)
                    if attempt >= self._cfg.max_attempts or not self._retryable(exc):
                        raise
                    if tried is None:
                        tried = set()
                    tried.add(address)
                    self._stats.retries += 1
                    logger.warning("Retrying request %s after %s: %s", ctx.request_id, address, exc.message)
                    continue
                try:
                    if stream and upstream.status == 200:
                        await self._relay_stream(responder, upstream, worker, ctx, t0, t_send)
                    else:
                        self._send_whole(responder, upstream, worker, ctx, t0, t_send, splice_timings)
                finally:
                    # Counted once per client response; failed attempts are in record_error.
                    self._stats.record(address, upstream.status, self._clock() - t0)
                return
            finally:
                worker.in_flight -= 1

    @staticmethod
    def _retryable(exc: UpstreamError) -> bool:
        if isinstance(exc, UpstreamConnectError | UpstreamStatusError):
            return True
        # A reset before any response byte: the backend never answered.
        return isinstance(exc, UpstreamProtocolError)

    def _on_failure(self, worker: WorkerInfo, exc: UpstreamError) -> None:
        if isinstance(exc, UpstreamConnectError):
            reason = "connection_refused" if exc.refused else "connect_error"
            if exc.refused:
                self._pool.drop_address(worker.address)
                self._registry.report_refused(worker.address)
        elif isinstance(exc, UpstreamStatusError):
            reason = f"status_{exc.upstream_status}"
        else:
            reason = type(exc).__name__
        self._stats.record_error(worker.address, reason)

    def _headers(self, worker: WorkerInfo, ctx: RequestContext, content_type: bytes, timing: bytes) -> bytes:
        return b"".join(
            (
                b"Content-Type: ",
                content_type,
                b"\r\nX-Request-ID: ",
                ctx.request_id.encode(),
                b"\r\nX-Inferno-Backend: ",
                worker.node_id.encode(),
                b"\r\nX-Inferno-Backend-Addr: ",
                worker.address.encode(),
                b"\r\nServer-Timing: ",
                timing,
                b"\r\n",
            )
        )

    def _send_whole(
        self,
        responder: Responder,
        upstream: UpstreamResponse,
        worker: WorkerInfo,
        ctx: RequestContext,
        t0: float,
        t_send: float,
        splice_timings: bool,
    ) -> None:
        now = self._clock()
        queue_ms = (t_send - t0) * 1000.0
        backend_ms = (now - t_send) * 1000.0
        total_ms = (now - t0) * 1000.0
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
        responder.send(upstream.status, self._headers(worker, ctx, content_type, timing), body)

    async def _relay_stream(
        self,
        responder: Responder,
        upstream: UpstreamResponse,
        worker: WorkerInfo,
        ctx: RequestContext,
        t0: float,
        t_send: float,
    ) -> None:
        now = self._clock()
        # For streams the timings are known when the headers go out: ``backend`` is the
        # time to the backend's response headers, ``total`` the time to ours.
        timing = b'queue;dur=%.3f, backend;dur=%.3f;desc="time to headers", total;dur=%.3f' % (
            (t_send - t0) * 1000.0,
            (now - t_send) * 1000.0,
            (now - t0) * 1000.0,
        )
        content_type = upstream.header(b"content-type") or b"text/event-stream"
        responder.start_stream(
            200, self._headers(worker, ctx, content_type, timing) + b"Cache-Control: no-cache\r\n"
        )
        try:
            async for chunk in upstream.iter_chunks(self._timeouts.read_s):
                await responder.write(chunk)
        except UpstreamError as exc:
            # Never retried: the client already has part of the answer.
            self._on_failure(worker, exc)
            logger.warning("Stream %s from %s broke: %s", ctx.request_id, worker.address, exc.message)
            if responder.client_connected:
                await responder.write(sse_error_event(exc.message, "upstream_stream_error"))
        except (ConnectionError, asyncio.CancelledError):
            upstream.close()
            raise
        responder.end_stream()
