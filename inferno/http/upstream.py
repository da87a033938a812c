"""What an upstream call is given (deadlines, limits) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class BodySource(Protocol):
    """The connection a streamed body is read from (``inferno.http.client``)."""

    async def next_chunk(self, timeout_s: float) -> bytes | None: ...

    async def next_chunks(self, timeout_s: float) -> list[bytes] | None: ...

    def take_chunks(self) -> list[bytes]: ...

    @property
    def drained(self) -> bool: ...

    def finish_stream(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines for one upstream call, in seconds (like httpx.Timeout)."""

    connect_s: float = 2.0
    #: until the response headers arrive (a stream), or the whole response (buffered)
    first_byte_s: float = 60.0
    #: between body chunks of a streamed response / until a buffered body completes
    read_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ResponseLimits:
    """What the proxy reads from a backend at most; past it the try fails cleanly."""

    #: a non-streamed body, buffered whole
    max_body_bytes: int = 64 << 20
    #: one chunk of a chunked (streamed) body; also what is queued before reading pauses
    max_chunk_bytes: int = 1 << 20
    #: the status line and headers
    max_header_bytes: int = 65536


#: interim (1xx) answers read and dropped before a connection is given up on
MAX_INTERIM_RESPONSES = 8


class UpstreamResponse:
    """Status and headers of an upstream response; the body is buffered or streamed."""

    __slots__ = ("_conn", "_peeked", "body", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        conn: BodySource | None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self._conn = conn
        self._peeked: bytes | None = None

    def unshift(self, chunk: bytes | None) -> None:
        """Put back a chunk read ahead (``None``: the stream had already ended)."""
        self._peeked = chunk if chunk is not None else b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def next_chunk(self, timeout_s: float) -> bytes | None:
        """The next body chunk of a streamed response, or None at its end.

        Raises ``UpstreamTimeout`` if nothing arrives within ``timeout_s``. At the
        end the connection goes back to the pool.
        """
        peeked = self._peeked
        if peeked is not None:
            self._peeked = None
            if peeked:
                return peeked
        conn = self._conn
        if conn is None:
            return None
        try:
            chunk = await conn.next_chunk(timeout_s)
        except BaseException:
            self.close()
            raise
        if chunk is None:
            self._conn = None
            conn.finish_stream()
        return chunk

    async def next_chunks(self, timeout_s: float) -> list[bytes] | None:
        """Every chunk that has arrived (waiting up to ``timeout_s`` for the first), or
        None at the end; like ``next_chunk``, but one call per read, not per chunk."""
        peeked = self._peeked
        conn = self._conn
        if peeked is not None:
            self._peeked = None
            if peeked:
                more = conn.take_chunks() if conn is not None else []
                return [peeked, *more] if more else [peeked]
        if conn is None:
            return None
        try:
            chunks = await conn.next_chunks(timeout_s)
        except BaseException:
            self.close()
            raise
        if chunks is None:
            self._conn = None
            conn.finish_stream()
        return chunks

    @property
    def ended(self) -> bool:
        """Everything was received and taken: the next read would return None."""
        conn = self._conn
        return not self._peeked and (conn is None or conn.drained)

    def finish(self) -> None:
        """The stream was read to its end: the connection goes back to the pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish_stream()

    def close(self) -> None:
        """Abandon a streamed body (closes the connection)."""
        if self._conn is not None:
            self._conn.abort()
            self._conn = None


def build_request(method: bytes, path: bytes, host: bytes, headers: bytes, body: bytes) -> bytes:
    """Serialise a request. ``headers`` are pre-encoded ``Name: value\\r\\n`` lines."""
    return b"".join(
        (
            method,
            b" ",
            path,
            b" HTTP/1.1\r\nHost: ",
            host,
            b"\r\n",
            headers,
            b"Content-Length: ",
            str(len(body)).encode(),
            b"\r\n\r\n",
            body,
        )
    )
