"""One request as parsed, and the writer of its one response (whole, streamed or HEAD)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Protocol

Header = tuple[bytes, bytes]

_STATUS_LINES: dict[int, bytes] = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


class Connection(Protocol):
    """What a ``Responder`` needs from its connection (``HttpProtocol``)."""

    closed: bool

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def response_done(self, keep_alive: bool) -> None: ...

    def close(self) -> None: ...


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
    """Writes exactly one response for one request, whole or streamed.

    For a HEAD request the headers (with the GET body's length) go out, the body never.
    """

    __slots__ = ("_conn", "_ended", "_head", "_held", "_keep_alive", "finished", "started")

    def __init__(self, conn: Connection, keep_alive: bool, head: bool = False) -> None:
        self._conn = conn
        self._keep_alive = keep_alive
        self._head = head
        self.started = False
        self.finished = False
        #: a stream's status line and headers, held to go out with its first chunk
        self._held = b""
        #: the stream's last chunk went out (``write(..., end=True)``)
        self._ended = False

    def close_after(self) -> None:
        """Close the connection after this response (a refusal that must free its slot)."""
        self._keep_alive = False

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
                    # a 204 carries no body and no Content-Length (RFC 9110, 8.6)
                    b"\r\n" if status == 204 else b"Content-Length: %d\r\n\r\n" % len(body),
                    b"" if self._head or status == 204 else body,
                )
            )
        )
        self._conn.response_done(self._keep_alive)

    def start_stream(self, status: int, headers: list[Header] | bytes, *, hold: bool = False) -> None:
        """Start a chunked response; follow with ``write`` calls and ``end_stream``.

        With ``hold`` the head goes out with the first ``write`` (one send, not two):
        for a caller that writes at once, such as a relay with its first chunk in hand.
        """
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        encoded = headers if isinstance(headers, bytes) else _encode_headers(headers)
        conn_hdr = b"" if self._keep_alive else b"Connection: close\r\n"
        head = status_line(status) + encoded + conn_hdr + b"Transfer-Encoding: chunked\r\n\r\n"
        if hold:
            self._held = head
        else:
            self._conn.write(head)

    async def write(self, data: bytes, *, end: bool = False) -> None:
        """Write one chunk, waiting while the client's socket buffer is full. With
        ``end`` the stream's terminator goes in the same send (``end_stream`` then only
        finishes the exchange)."""
        if self._ended:
            raise RuntimeError("stream already ended")
        if self._head:
            return
        if data:
            size = b"%x\r\n" % len(data)
            if self._held or end:
                held, self._held = self._held, b""
                self._ended = end
                self._conn.write(b"".join((held, size, data, b"\r\n0\r\n\r\n" if end else b"\r\n")))
            else:
                self._conn.write(b"".join((size, data, b"\r\n")))
        elif self._held or end:
            held, self._held = self._held, b""
            self._ended = end
            self._conn.write(held + b"0\r\n\r\n" if end else held)
        else:
            return
        await self._conn.drain()

    def end_stream(self) -> None:
        if self.finished:
            return
        self.finished = True
        if not self._head:
            held, self._held = self._held, b""
            if not self._ended:
                self._conn.write(held + b"0\r\n\r\n")
        self._conn.response_done(self._keep_alive)

    def abort(self) -> None:
        """Close the connection without finishing the response."""
        self.finished = True
        self._conn.close()


def _encode_headers(headers: list[Header]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers)
