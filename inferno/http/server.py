"""A small HTTP/1.1 server: a raw asyncio Protocol with httptools parsing.

The proxy's hot path cannot afford a framework, so both the proxy and the backend
serve HTTP through this module. It handles keep-alive, pipelining (serially),
chunked request bodies, streaming (chunked) responses with write back-pressure
and graceful shutdown. A handler is an async function ``handler(request,
responder)``; when the client disconnects, the handler's task is cancelled at
once so upstream work stops.

Everything a client sends is bounded (docs/security.md): the request line (414),
each header, all headers and their count (431), the body (413), the time to send
a request (408) and to sit idle, and the connections per port (503). An early
error is answered, then the connection *lingers*: it keeps reading and discarding
for a bounded time, so the client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import cast

import httptools

from inferno.errors import (
    BadRequest,
    BodyBufferFull,
    ExpectationFailed,
    HeadersTooLarge,
    InfernoError,
    PayloadTooLarge,
    RequestTimeout,
    TooManyConnections,
    UriTooLong,
)
from inferno.http.limits import Limits, fit_to_fd_limit, limits_from
from inferno.http.messages import Header, Request, Responder, status_line
from inferno.http.responses import error_response

__all__ = [
    "Handler",
    "Header",
    "HttpProtocol",
    "Limits",
    "Request",
    "Responder",
    "fit_to_fd_limit",
    "limits_from",
    "status_line",
]

logger = logging.getLogger(__name__)

Handler = Callable[[Request, Responder], Awaitable[None]]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: what a lingering close reads and throws away at most, whatever the time left
MAX_LINGER_BYTES = 16 << 20
#: pipelined requests parsed ahead of the one being served before reading pauses
MAX_PIPELINED = 16
#: a chunked body may have this many chunks, plus one per FREE_CHUNK_BYTES of it: each
#: chunk costs a parser callback, so one-byte chunks would make 8 MiB cost seconds
FREE_CHUNKS = 4096
FREE_CHUNK_BYTES = 64


def _error_bytes(exc: InfernoError) -> bytes:
    status, headers, body = error_response(exc)
    return (
        status_line(status)
        + headers
        + b"Connection: close\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class ServerState:
    """Connections and tasks shared by every connection of one server."""

    def __init__(self) -> None:
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        #: request-body bytes held in memory by all connections (bounded by the limits)
        self.buffered = 0


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, handler: Handler, state: ServerState, limits: Limits) -> None:
        self._handler = handler
        self._state = state
        self._limits = limits
        self._max_body = limits.max_body_bytes
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self.closed = False
        # Per-message parse state.
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        #: the body, joined as it arrives: it costs its size, however small its chunks
        self._body: bytes | bytearray = b""
        self._body_size = 0
        #: body bytes this connection counts in ``ServerState.buffered``
        self._held = 0
        self._keep_alive = True
        #: between the first byte of a message (or of the connection) and its headers' end
        self._in_head = True
        self._in_message = False
        self._head_bytes = 0
        self._header_count = 0
        self._chunks = 0
        self._hosts = 0
        # Refusal: the error to answer once the requests before it are answered.
        self._rejected = False
        self._error: InfernoError | None = None
        self._lingering = False
        self._discarded = 0
        # Serial processing of (possibly pipelined) requests.
        self._pending: collections.deque[tuple[Request, bool]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        # One lazily re-armed timer enforces ``_deadline`` (0: none while a handler runs).
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0

    # -- transport callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        if len(self._state.connections) >= self._limits.max_connections:
            # Over the port's budget: say so and go, without reading anything.
            self._transport.write(_error_bytes(TooManyConnections("too many connections; retry later")))
            self._transport.close()
            self.closed = True
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = f"{peer[0]}:{peer[1]}"
        self._state.connections.add(self)
        self._state.accepted += 1
        # A connection that never sends a byte goes after read_timeout_s, not idle_timeout_s.
        self._deadline = self._loop.time() + self._limits.read_timeout_s
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            # The client is gone: stop whatever the handler is doing upstream.
            self._task.cancel()
        self._pending.clear()
        self._release(self._held)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("client disconnected"))

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            if self._lingering:
                self._discarded += len(data)
                if self._discarded > MAX_LINGER_BYTES:
                    self.close()
            return
        if self._in_head:
            # Count header bytes before parsing: httptools joins a header's pieces by
            # concatenation, so an unbounded header would cost quadratic time.
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(BadRequest("protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            if not self._rejected:
                message = str(exc).split(":")[0][:80] or "parse error"
                self._reject(BadRequest(f"malformed HTTP request ({message})"))
        if self._in_head and not self._rejected and self._head_bytes > self._limits.max_headers_total_bytes:
            self._reject(HeadersTooLarge("request headers too large"))

    def eof_received(self) -> bool | None:
        # The client finished sending: close (also ends a lingering close early).
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drain_waiter = None

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._chunks = 0
        self._url = b""
        self._headers = {}
        self._body = b""
        self._body_size = 0
        self._header_count = 0
        self._hosts = 0
        self._in_head = True
        self._in_message = True
        self._deadline = self._loop.time() + self._limits.read_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_request_line_bytes:
            self._reject(UriTooLong("request line too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head or self._rejected:
            return  # chunked trailers never override request headers
        self._header_count += 1
        if self._header_count > self._limits.max_header_count:
            self._reject(HeadersTooLarge("too many request headers"))
            return
        if len(name) + len(value) > self._limits.max_header_bytes:
            self._reject(HeadersTooLarge("a request header is too large"))
            return
        name = name.lower()
        if name == b"host":
            self._hosts += 1
        elif name == b"via" and name in self._headers:
            # An intermediary may add its own Via line: every hop counts (loop detection).
            value = self._headers[name] + b", " + value
        self._headers[name] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._rejected:
            return
        # llhttp answers should_keep_alive() correctly only until the message ends.
        self._keep_alive = self._parser.should_keep_alive()
        if self._hosts != 1 and (self._hosts > 1 or self._parser.get_http_version() != "1.0"):
            self._reject(BadRequest("a request needs exactly one Host header"))
            return
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit():
            if int(length) > self._max_body:
                self._reject(PayloadTooLarge(f"request body exceeds {self._max_body} bytes"))
                return
            if self._state.buffered + int(length) > self._limits.max_buffered_body_bytes:
                self._reject(BodyBufferFull("the server holds too much request data; retry shortly"))
                return
        expect = self._headers.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                self._reject(ExpectationFailed("only Expect: 100-continue is supported"))
            elif self._task is None and not self._pending:
                self.write(_CONTINUE)

    def on_chunk_header(self) -> None:
        self._chunks += 1
        if self._chunks > FREE_CHUNKS + self._body_size // FREE_CHUNK_BYTES and not self._rejected:
            self._reject(BadRequest("the request body's chunks are too small"))

    def on_body(self, body: bytes) -> None:
        if self._rejected:
            return
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._reject(PayloadTooLarge(f"request body exceeds {self._max_body} bytes"))
            return
        state = self._state
        if state.buffered + len(body) > self._limits.max_buffered_body_bytes:
            self._reject(BodyBufferFull("the server holds too much request data; retry shortly"))
            return
        state.buffered += len(body)
        self._held += len(body)
        held = self._body
        if not held:
            self._body = body
        elif isinstance(held, bytearray):
            held += body
        else:
            self._body = bytearray(held) + body

    def on_message_complete(self) -> None:
        self._in_head = True
        self._in_message = False
        self._head_bytes = 0
        if self._rejected:
            return
        if self._parser.should_upgrade():
            self._reject(BadRequest("protocol upgrades are not supported"))
            return
        self._deadline = 0.0
        url = self._url
        path, _, query = url.partition(b"?")
        request = Request(
            self._parser.get_method().decode("latin-1"),
            path.decode("latin-1"),
            query.decode("latin-1"),
            self._headers,
            bytes(self._body) if isinstance(self._body, bytearray) else self._body,
            self._peer,
        )
        self._body = b""  # the request holds it now (the budget share is released with it)
        keep_alive = self._keep_alive
        if self._task is None:
            self._start(request, keep_alive)
        else:
            self._pending.append((request, keep_alive))
            if len(self._pending) > MAX_PIPELINED and self._transport is not None:
                self._transport.pause_reading()

    # -- request processing --------------------------------------------------------------
    def _start(self, request: Request, keep_alive: bool) -> None:
        task = self._loop.create_task(self._run(request, keep_alive))
        self._task = task
        self._state.tasks.add(task)
        task.add_done_callback(self._state.tasks.discard)

    async def _run(self, request: Request, keep_alive: bool) -> None:
        responder = Responder(self, keep_alive, request.method == "HEAD")
        try:
            await self._handler(request, responder)
        except asyncio.CancelledError:
            raise
        except ConnectionError as exc:
            # The client went away while we were writing: nothing left to answer.
            logger.debug("client %s gone during %s: %s", self._peer, request.method, exc)
        except Exception as exc:
            if not isinstance(exc, InfernoError):
                logger.exception("Unhandled error serving a %s request", request.method)
            if not responder.started and not self.closed:
                status, headers, body = error_response(exc)
                responder.send(status, headers, body)
        finally:
            self._release(len(request.body))
            if not responder.finished and not self.closed:
                # A handler that returned without answering (or died mid-stream):
                # the connection's framing is unknown, so close it.
                self.close()

    def response_done(self, keep_alive: bool) -> None:
        self._task = None
        if not keep_alive:
            self.close()
            return
        if self._pending:
            request, ka = self._pending.popleft()
            if self._transport is not None and len(self._pending) <= MAX_PIPELINED and not self._rejected:
                self._transport.resume_reading()
            self._start(request, ka)
        elif self._error is not None:
            self._answer_error()
        elif not self._in_message:
            self._deadline = self._loop.time() + self._limits.idle_timeout_s

    def _release(self, size: int) -> None:
        """Give back ``size`` body bytes of this connection's share of the budget."""
        size = min(size, self._held)
        self._held -= size
        self._state.buffered -= size

    def _reject(self, exc: InfernoError) -> None:
        """Refuse the message being parsed: answer it after the ones before it, then close."""
        if self._rejected:
            return
        self._release(len(self._body))
        self._body = b""
        self._rejected = True
        self._error = exc
        if self._task is None and not self._pending:
            self._answer_error()
        elif self._transport is not None:
            # Requests before this one are still being answered; read nothing more meanwhile.
            self._transport.pause_reading()

    def _answer_error(self) -> None:
        exc, self._error = self._error, None
        if exc is None or self.closed or self._transport is None:
            return
        self._transport.write(_error_bytes(exc))
        if self._limits.linger_s <= 0 or not self._transport.can_write_eof():
            self.close()
            return
        # Lingering close: our side is done (FIN after the answer); read and discard what
        # the client still sends, so closing cannot reset the answer away. Bounded below.
        self._transport.write_eof()
        self._lingering = True
        self._deadline = self._loop.time() + self._limits.linger_s
        self._transport.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    # -- output --------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("client disconnected")
        if not self._write_paused:
            return
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = self._loop.create_future()
        await self._drain_waiter

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self.closed = True

    def _on_timer(self) -> None:
        """Enforce ``_deadline``. Re-armed lazily: setting a deadline costs a float store.

        The timer is never armed later than the deadline: deadlines only move forward,
        and an idle re-arm waits at most ``read_timeout_s``.
        """
        self._timer = None
        if self.closed:
            return
        now = self._loop.time()
        deadline = self._deadline
        if deadline and now >= deadline:
            if self._lingering:
                self.close()
                return
            if self._task is None and not self._pending:
                if self._in_message:
                    self._reject(RequestTimeout("the request did not arrive in time"))
                    return
                self.close()  # idle, or never sent a byte
                return
        wait = self._limits.read_timeout_s
        if deadline and deadline > now:
            wait = min(wait, deadline - now)
        self._timer = self._loop.call_at(now + max(0.01, wait), self._on_timer)

    @property
    def busy(self) -> bool:
        return self._task is not None
