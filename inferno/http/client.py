"""Pooled keep-alive HTTP/1.1 client for upstream calls, with deadlines on every step.

This is the one boundary where socket, timeout and parser errors become
``inferno.errors.Upstream*`` exceptions. Connections are kept per address (LIFO,
so the warmest socket is reused) and returned to the pool only after a complete,
keep-alive response. A streamed response that is abandoned closes its socket,
which is how a client disconnect cancels work on the backend.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
from typing import cast

import httptools

from inferno.errors import (
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from inferno.http.upstream import (
    MAX_INTERIM_RESPONSES,
    ResponseLimits,
    Timeouts,
    UpstreamResponse,
    build_request,
)

__all__ = [
    "ResponseLimits",
    "Timeouts",
    "UpstreamConnection",
    "UpstreamPool",
    "UpstreamResponse",
    "build_request",
]


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend."""

    def __init__(self, pool: UpstreamPool, address: str) -> None:
        self._pool = pool
        self.address = address
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._limits = pool.limits
        self.closed = False
        #: between writing a request and handing the connection back to the pool
        self._exchanging = False
        # The stream-data timer (``_wait_data``): armed at most once at a time.
        self._data_timer: asyncio.TimerHandle | None = None
        self._data_timer_at = 0.0
        self._data_deadline = 0.0
        self._data_timeout = 0.0
        self._reset_state()

    def _reset_state(self) -> None:
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_head = True
        self._head_bytes = 0
        self._chunk_size = 0
        self._chunked = False
        self._partial: list[bytes] = []
        self._queued = 0
        self._reading_paused = False
        self._got_bytes = False
        self._complete = False
        self._streaming = False
        self._headers_fut: asyncio.Future[None] | None = None
        self._done_fut: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._chunk_waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._keep_alive = False
        self._status = 0
        self._interim = False
        self._interims = 0
        self._stray = False
        #: the X-Request-ID sent: an answer echoing another one is refused
        self._request_id: bytes | None = None
        #: a buffered body's cap for this exchange (the pool's, or the caller's smaller one)
        self._max_body = self._limits.max_body_bytes

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if not self._complete:
            self._fail(
                UpstreamProtocolError(f"connection to {self.address} closed before the response completed")
            )

    def data_received(self, data: bytes) -> None:
        if not self._exchanging:
            # An idle pooled socket has nothing to say; whatever it says is not for us.
            self.abort()
            return
        self._got_bytes = True
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"bad HTTP from {self.address}: {exc}"))
            self.abort()
            return
        if self._in_head and self._head_bytes > self._limits.max_header_bytes:
            self._too_large("response headers")

    # -- httptools callbacks -------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._complete:
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._complete or self._stray:
            # A second answer after the one asked for (in the same read): the next
            # request on this socket would take it for its own. Never reuse it.
            self._stray = True
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints) is read and dropped: the
            # real one follows on the same socket. 101 would switch protocols: not ours.
            self._interims += 1
            if status == 101 or self._interims > MAX_INTERIM_RESPONSES:
                self._fail(UpstreamProtocolError(f"{self.address} answered {status} (interim)"))
                self.abort()
            self._headers = []
            self._interim = True
            return
        self._in_head = False
        expected = self._request_id
        for name, value in self._headers:
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True
            elif name == b"x-request-id" and expected is not None and value != expected:
                # The answer to another request (a backend that said more than it was
                # asked, late): never hand it to this client, never reuse the socket.
                self._stray = True
                self._fail(UpstreamProtocolError(f"{self.address} answered another request"))
                self.abort()
                return
        # llhttp answers should_keep_alive() correctly only until the message ends.
        self._keep_alive = self._parser.should_keep_alive()
        self._status = self._parser.get_status_code()
        fut = self._headers_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_chunk_header(self) -> None:
        self._chunk_size = 0

    def on_chunk_complete(self) -> None:
        if self._complete or self._stray:
            return
        # A stream is relayed in whole chunks (one SSE event each, as backends write
        # them), so a chunk that breaks the limit fails the try before any of it is sent.
        if not self._streaming or self.closed or not self._partial:
            return
        parts, self._partial = self._partial, []
        self._push(parts[0] if len(parts) == 1 else b"".join(parts))

    def on_body(self, body: bytes) -> None:
        if self.closed or self._complete:
            return
        size = len(body)
        if self._streaming:
            self._chunk_size += size
            if self._chunk_size > self._limits.max_chunk_bytes:
                self._too_large("a stream chunk")
                return
            if self._chunked:
                self._partial.append(body)
            else:
                self._push(body)
        else:
            self._body_size += size
            if self._body_size > self._max_body:
                self._too_large("the response body")
                return
            self._body.append(body)

    def _push(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._queued += len(chunk)
        if self._queued > self._limits.max_chunk_bytes and self._transport is not None:
            # The client reads slower than the backend writes: stop reading upstream
            # until the queue drains, so the proxy never holds more than this.
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def _too_large(self, what: str) -> None:
        self._partial = []
        self._body = []
        self._chunks.clear()
        self._fail(UpstreamProtocolError(f"{self.address}: {what} is over the proxy's limit"))
        self.abort()

    def on_message_complete(self) -> None:
        if self._stray:
            return
        if self._interim:
            self._interim = False
            return
        self._complete = True
        fut = self._done_fut
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._wake()

    # -- internals -----------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._chunk_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        for fut in (self._headers_fut, self._done_fut, self._chunk_waiter):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    async def _wait(self, fut: asyncio.Future[None], timeout_s: float, what: str) -> None:
        if fut.done():
            fut.result()
            return
        handle = self._loop.call_later(timeout_s, self._expire, fut, what, timeout_s)
        try:
            await fut
        finally:
            handle.cancel()

    async def _wait_data(self, fut: asyncio.Future[None], timeout_s: float) -> None:
        """``_wait`` for the next chunks of a stream, with one lazily re-armed timer per
        connection instead of a timer armed and cancelled per chunk."""
        if fut.done():
            fut.result()
            return
        deadline = self._loop.time() + timeout_s
        self._data_deadline = deadline
        self._data_timeout = timeout_s
        if self._data_timer is None or self._data_timer_at > deadline:
            if self._data_timer is not None:
                self._data_timer.cancel()
            self._data_timer = self._loop.call_at(deadline, self._on_data_timer)
            self._data_timer_at = deadline
        try:
            await fut
        finally:
            self._data_deadline = 0.0

    def _on_data_timer(self) -> None:
        self._data_timer = None
        deadline = self._data_deadline
        if not deadline or self.closed:
            return  # nobody waits: the next wait arms it again
        if self._loop.time() < deadline:
            self._data_timer = self._loop.call_at(deadline, self._on_data_timer)
            self._data_timer_at = deadline
            return
        waiter = self._chunk_waiter
        if waiter is not None:
            self._expire(waiter, "stream data", self._data_timeout)

    def _expire(self, fut: asyncio.Future[None], what: str, timeout_s: float) -> None:
        if not fut.done():
            fut.set_exception(UpstreamTimeout(f"{self.address}: no {what} within {timeout_s:.3g}s"))

    # -- API used by the pool ------------------------------------------------------------
    async def exchange(
        self,
        data: bytes,
        *,
        stream: bool,
        timeouts: Timeouts,
        request_id: bytes | None = None,
        max_body_bytes: int | None = None,
    ) -> UpstreamResponse:
        assert self._transport is not None
        self._reset_state()
        self._request_id = request_id
        if max_body_bytes is not None:
            self._max_body = min(max_body_bytes, self._max_body)
        self._exchanging = True
        self._streaming = stream
        # One future per exchange: the headers for a stream, the whole message otherwise
        # (a buffered answer is bounded as a whole by first_byte_s). The parser is reused:
        # llhttp resets itself between messages on a keep-alive connection.
        if stream:
            waiter = self._headers_fut = self._loop.create_future()
        else:
            waiter = self._done_fut = self._loop.create_future()
        self._transport.write(data)
        try:
            await self._wait(waiter, timeouts.first_byte_s, "response headers" if stream else "response")
            if stream:
                return UpstreamResponse(self._status, self._headers, b"", self)
        except BaseException:
            self.abort()
            raise
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        response = UpstreamResponse(self._status, self._headers, body, None)
        self._release()
        return response

    async def next_chunk(self, timeout_s: float) -> bytes | None:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._queued -= len(chunk)
                if self._reading_paused and self._queued <= self._limits.max_chunk_bytes // 2:
                    self._reading_paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
                return chunk
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            self._chunk_waiter = self._loop.create_future()
            await self._wait_data(self._chunk_waiter, timeout_s)

    async def next_chunks(self, timeout_s: float) -> list[bytes] | None:
        """Every chunk received so far (waiting for one), or None at the end: a relay
        writes what one read brought in one write, not one per chunk."""
        while True:
            chunks = self.take_chunks()
            if chunks:
                return chunks
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            self._chunk_waiter = self._loop.create_future()
            await self._wait_data(self._chunk_waiter, timeout_s)

    def take_chunks(self) -> list[bytes]:
        """The chunks received so far, without waiting (reading resumes if it paused)."""
        if not self._chunks:
            return []
        chunks = list(self._chunks)
        self._chunks.clear()
        self._queued = 0
        if self._reading_paused:
            self._reading_paused = False
            if self._transport is not None:
                self._transport.resume_reading()
        return chunks

    @property
    def drained(self) -> bool:
        """The whole response arrived and every chunk of it was taken."""
        return self._complete and not self._chunks and self._error is None

    def finish_stream(self) -> None:
        if self._complete and not self._chunks:
            self._release()
        else:
            self.abort()

    def _release(self) -> None:
        # Reused only once its answer was read to the end and nothing followed it.
        self._exchanging = False
        if self._keep_alive and self._complete and not self._stray and not self.closed:
            self._pool.release(self)
        else:
            self.abort()

    @property
    def failed_before_response(self) -> bool:
        return not self._got_bytes

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


class UpstreamPool:
    """Keep-alive connections per backend address."""

    def __init__(self, *, max_idle_per_host: int = 64, limits: ResponseLimits | None = None) -> None:
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._max_idle = max_idle_per_host
        self.limits = limits or ResponseLimits()
        #: address -> IP it was resolved to at registration: connects never wait on DNS
        self._pins: dict[str, str] = {}

    def pin(self, address: str, ip: str) -> None:
        self._pins[address] = ip

    def forget_address(self, address: str) -> None:
        """A backend left: close its idle sockets and drop its pinned IP."""
        self.drop_address(address)
        self._pins.pop(address, None)

    async def request(
        self,
        address: str,
        data: bytes,
        *,
        stream: bool = False,
        timeouts: Timeouts,
        request_id: bytes | None = None,
        retry_idle: bool = True,
        max_body_bytes: int | None = None,
    ) -> UpstreamResponse:
        """Send raw request bytes to ``address`` and read the response (an answer whose
        ``X-Request-ID`` is not ``request_id`` fails: it was meant for another request).

        A pooled socket that turns out to have been closed by the peer while idle
        is retried once on a fresh connection: nothing was processed there. A caller
        whose request must never be sent twice (a job submission without an
        idempotency key: the peer may have closed *after* taking it) passes
        ``retry_idle=False`` and gets the error instead. ``max_body_bytes`` caps a
        buffered answer below the pool's limit (a health probe's, say): past it the
        socket is closed mid-read, never buffered further.
        """
        conn = self._take_idle(address)
        if conn is not None:
            try:
                return await conn.exchange(
                    data,
                    stream=stream,
                    timeouts=timeouts,
                    request_id=request_id,
                    max_body_bytes=max_body_bytes,
                )
            except UpstreamProtocolError:
                if not conn.failed_before_response or not retry_idle:
                    raise
        conn = await self._connect(address, timeouts.connect_s)
        return await conn.exchange(
            data, stream=stream, timeouts=timeouts, request_id=request_id, max_body_bytes=max_body_bytes
        )

    def _take_idle(self, address: str) -> UpstreamConnection | None:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, address: str, timeout_s: float) -> UpstreamConnection:
        host, _, port = address.rpartition(":")
        host = self._pins.get(address, host)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, proto = await loop.create_connection(
                    lambda: UpstreamConnection(self, address), host.strip("[]"), int(port)
                )
        except TimeoutError as exc:
            raise UpstreamConnectError(f"connect to {address} timed out after {timeout_s}s") from exc
        except ConnectionRefusedError as exc:
            raise UpstreamConnectError(f"connection refused by {address}", refused=True) from exc
        except OSError as exc:
            refused = exc.errno in (errno.ECONNREFUSED,)
            raise UpstreamConnectError(f"cannot connect to {address}: {exc}", refused=refused) from exc
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.abort()

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    def drop_address(self, address: str) -> None:
        """Close idle sockets to a backend that left or died."""
        for conn in self._idle.pop(address, []):
            conn.abort()

    async def aclose(self) -> None:
        for address in list(self._idle):
            self.drop_address(address)
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)
