"""A small HTTP/1.1 server: a raw asyncio Protocol with httptools parsing.

The proxy's hot path cannot afford a framework, so both the proxy and the backend
serve HTTP through this module. It handles keep-alive, pipelining (serially),
chunked request bodies, body-size limits, streaming (chunked) responses with
write back-pressure, idle timeouts and graceful shutdown. A handler is an async
function ``handler(request, responder)``; when the client disconnects, the
handler's task is cancelled at once so upstream work stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

import httptools

from inferno.errors import BadRequest, InfernoError, PayloadTooLarge
from inferno.http.responses import error_body

logger = logging.getLogger(__name__)

Header = tuple[bytes, bytes]
Handler = Callable[["Request", "Responder"], Awaitable[None]]

_STATUS_LINES: dict[int, bytes] = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} Unknown\r\n".encode()
    return line


class Request:
    """One parsed request. Header names are lower-cased bytes."""

    __slots__ = ("body", "headers", "method", "path", "peer", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[bytes, bytes],
        body: bytes,
        peer: str,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.peer = peer

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        if value is None:
            return None
        return value.decode("latin-1")


class Responder:
    """Writes exactly one response for one request, whole or streamed."""

    __slots__ = ("_conn", "_keep_alive", "finished", "started")

    def __init__(self, conn: HttpProtocol, keep_alive: bool) -> None:
        self._conn = conn
        self._keep_alive = keep_alive
        self.started = False
        self.finished = False

    @property
    def client_connected(self) -> bool:
        return not self._conn.closed

    def send(self, status: int, headers: list[Header] | bytes, body: bytes) -> None:
        """Send a complete response. ``headers`` may be pre-encoded ``b"Name: v\\r\\n"`` lines."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.finished = True
        encoded = headers if isinstance(headers, bytes) else _encode_headers(headers)
        conn_hdr = b"" if self._keep_alive else b"Connection: close\r\n"
        self._conn.write(
            b"".join(
                (
                    status_line(status),
                    encoded,
                    conn_hdr,
                    b"Content-Length: ",
                    str(len(body)).encode(),
                    b"\r\n\r\n",
                    body,
                )
            )
        )
        self._conn.response_done(self._keep_alive)

    def start_stream(self, status: int, headers: list[Header] | bytes) -> None:
        """Start a chunked response; follow with ``write`` calls and ``end_stream``."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        encoded = headers if isinstance(headers, bytes) else _encode_headers(headers)
        conn_hdr = b"" if self._keep_alive else b"Connection: close\r\n"
        self._conn.write(status_line(status) + encoded + conn_hdr + b"Transfer-Encoding: chunked\r\n\r\n")

    async def write(self, data: bytes) -> None:
        """Write one chunk, waiting while the client's socket buffer is full."""
        if not data:
            return
        self._conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        await self._conn.drain()

    def end_stream(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._conn.write(b"0\r\n\r\n")
        self._conn.response_done(self._keep_alive)

    def abort(self) -> None:
        """Close the connection without finishing the response."""
        self.finished = True
        self._conn.close()


def _encode_headers(headers: list[Header]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers)


class ServerState:
    """Connections and tasks shared by every connection of one server."""

    def __init__(self) -> None:
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(
        self,
        handler: Handler,
        state: ServerState,
        *,
        max_body_bytes: int,
        idle_timeout_s: float,
    ) -> None:
        self._handler = handler
        self._state = state
        self._max_body = max_body_bytes
        self._idle_timeout_s = idle_timeout_s
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self.closed = False
        # Per-message parse state.
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._rejected = False
        self._keep_alive = True
        # Serial processing of (possibly pipelined) requests.
        self._pending: collections.deque[tuple[Request, bool]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_activity = 0.0

    # -- transport callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = f"{peer[0]}:{peer[1]}"
        self._state.connections.add(self)
        self._state.accepted += 1
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._state.connections.discard(self)
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._task is not None and not self._task.done():
            # The client is gone: stop whatever the handler is doing upstream.
            self._task.cancel()
        self._pending.clear()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("client disconnected"))

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(BadRequest("protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            if not self._rejected:
                self._reject(BadRequest(f"malformed HTTP request: {exc}"))

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
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._last_activity = self._loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        # llhttp answers should_keep_alive() correctly only until the message ends.
        self._keep_alive = self._parser.should_keep_alive()
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            self._reject(PayloadTooLarge(f"request body exceeds {self._max_body} bytes"))

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._reject(PayloadTooLarge(f"request body exceeds {self._max_body} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        if self._parser.should_upgrade():
            self._reject(BadRequest("protocol upgrades are not supported"))
            return
        url = self._url
        path, _, query = url.partition(b"?")
        request = Request(
            self._parser.get_method().decode("latin-1"),
            path.decode("latin-1"),
            query.decode("latin-1"),
            self._headers,
            b"".join(self._body) if len(self._body) != 1 else self._body[0],
            self._peer,
        )
        keep_alive = self._keep_alive
        if self._task is None:
            self._start(request, keep_alive)
        else:
            self._pending.append((request, keep_alive))
            if len(self._pending) > 16 and self._transport is not None:
                self._transport.pause_reading()

    # -- request processing --------------------------------------------------------------
    def _start(self, request: Request, keep_alive: bool) -> None:
        task = self._loop.create_task(self._run(request, keep_alive))
        self._task = task
        self._state.tasks.add(task)
        task.add_done_callback(self._state.tasks.discard)

    async def _run(self, request: Request, keep_alive: bool) -> None:
        responder = Responder(self, keep_alive)
        try:
            await self._handler(request, responder)
        except asyncio.CancelledError:
            raise
        except ConnectionError as exc:
            # The client went away while we were writing: nothing left to answer.
            logger.debug("client %s gone during %s %s: %s", self._peer, request.method, request.path, exc)
        except Exception as exc:
            if not isinstance(exc, InfernoError):
                logger.exception("Unhandled error serving %s %s", request.method, request.path)
            if not responder.started and not self.closed:
                status, body = error_body(exc)
                responder.send(status, [(b"Content-Type", b"application/json")], body)
        finally:
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
            if self._transport is not None and len(self._pending) <= 16:
                self._transport.resume_reading()
            self._start(request, ka)
        else:
            self._arm_idle_timer()

    def _reject(self, exc: InfernoError) -> None:
        """Answer a request we refuse to parse further, then close."""
        self._rejected = True
        if self._task is None and not self.closed:
            status, body = error_body(exc)
            self.write(
                status_line(status)
                + b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
        self.close()

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

    def _arm_idle_timer(self) -> None:
        # One timer per connection, re-armed lazily when it fires: resetting it on
        # every request would cost a timer allocation per request.
        self._last_activity = self._loop.time()
        if self._idle_timeout_s > 0 and self._idle_handle is None:
            self._idle_handle = self._loop.call_later(self._idle_timeout_s, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_handle = None
        if self.closed:
            return
        idle_for = self._loop.time() - self._last_activity
        if self._task is None and idle_for >= self._idle_timeout_s:
            self.close()
        else:
            remaining = max(0.05, self._idle_timeout_s - idle_for)
            self._idle_handle = self._loop.call_later(remaining, self._on_idle)

    @property
    def busy(self) -> bool:
        return self._task is not None


class HttpServer:
    """Owns a listening socket and its connections; ``start()`` / ``aclose()``."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int = 1 << 20,
        idle_timeout_s: float = 75.0,
        name: str = "http",
    ) -> None:
        self._handler = handler
        self._max_body = max_body_bytes
        self._idle_timeout_s = idle_timeout_s
        self._name = name
        self._state = ServerState()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, **kwargs: Any) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(
                self._handler,
                self._state,
                max_body_bytes=self._max_body,
                idle_timeout_s=self._idle_timeout_s,
            ),
            host=host,
            port=port,
            reuse_address=True,
            backlog=1024,
            **kwargs,
        )
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    @property
    def in_flight(self) -> int:
        return len(self._state.tasks)

    @property
    def connections_accepted(self) -> int:
        return self._state.accepted

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop accepting, let in-flight requests finish for ``grace_s``, then cancel."""
        self.stop_accepting()
        for conn in list(self._state.connections):
            if not conn.busy:
                conn.close()
        tasks = set(self._state.tasks)
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in list(self._state.tasks):
            task.cancel()
        if self._state.tasks:
            await asyncio.wait(set(self._state.tasks), timeout=1.0)
        for conn in list(self._state.connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
