"""Response bodies shared by the proxy and the backend: JSON and error shapes."""

from __future__ import annotations

from typing import Any

import orjson

from inferno.errors import InfernoError, status_for

JSON_HEADERS = b"Content-Type: application/json\r\n"
SSE_HEADERS = b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def error_payload(message: str, kind: str, code: str, param: str | None = None) -> bytes:
    """The OpenAI error shape, used on every path so clients parse one format."""
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def error_body(exc: BaseException) -> tuple[int, bytes]:
    """Translate any exception into (status, body). Internal details never leak."""
    if isinstance(exc, InfernoError):
        return exc.status, error_payload(exc.message, exc.kind, exc.code, exc.param)
    return status_for(exc), error_payload("internal server error", "server_error", "internal_error")


def error_response(exc: BaseException) -> tuple[int, bytes, bytes]:
    """(status, header lines with the content type, body) for any exception."""
    status, body = error_body(exc)
    extra = exc.headers() if isinstance(exc, InfernoError) else b""
    return status, JSON_HEADERS + extra, body


def sse_error_event(message: str, code: str) -> bytes:
    """An SSE event that ends a stream which cannot be completed."""
    return b"data: " + error_payload(message, "upstream_error", code) + b"\n\n"
