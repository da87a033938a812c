"""Request and answer bodies and headers as the forwarder touches them, decoding no more than needed."""

from __future__ import annotations

import re

import orjson

from inferno.errors import UpstreamProtocolError
from inferno.http.client import UpstreamResponse
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext

#: Inferno's backends write usage in this order: read it with one regex, no JSON decoding
_USAGE = re.compile(rb'"usage":\{"prompt_tokens":(\d{1,12}),"completion_tokens":(\d{1,12})')


def usage_of(data: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the last ``"usage"`` object in a JSON answer
    or SSE chunk, read without decoding the whole thing (answers can be megabytes)."""
    at = data.rfind(b'"usage":')
    if at < 0:
        return None
    fast = _USAGE.match(data, at)
    if fast is not None:
        return int(fast[1]), int(fast[2])
    end = data.find(b"}", at)
    if end < 0:
        return None
    try:
        usage = orjson.loads(data[at + 8 : end + 1])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return max(0, prompt), max(0, completion)


#: template and system-prompt tokens a backend may add to what the body holds
PROMPT_OVERHEAD_TOKENS = 1024


def sane_usage(used: tuple[int, int], body_bytes: int, max_tokens: int) -> tuple[int, int]:
    """A backend's reported usage, bounded by what the request could have cost: a prompt
    has at most about one token per byte of the body, an answer at most ``max_tokens``.
    One absurd number from a backend cannot charge a key for centuries."""
    prompt, completion = used
    return (
        max(0, min(prompt, body_bytes + PROMPT_OVERHEAD_TOKENS)),
        max(0, min(completion, max_tokens)),
    )


def with_usage_requested(body: bytes) -> bytes:
    """The body of an OpenAI stream request with ``stream_options.include_usage`` set."""
    data = orjson.loads(body)
    options = data.get("stream_options")
    data["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(data)


def with_model(body: bytes, field: str, model: str | None) -> bytes:
    """The request body with its model field replaced (aliases and fallbacks only)."""
    data = orjson.loads(body)
    for key in ("model", "model_type"):
        if key == field or key in data:
            data[key] = model
    return orjson.dumps(data)


def served_model(worker: WorkerInfo, ctx: RequestContext) -> str:
    """The model that answered: the one asked for, else the backend's model for the task."""
    if ctx.model is not None:
        return ctx.model if ctx.model in worker.models else ""
    for model in worker.models:
        if worker.tasks.get(model, "text-generation") == ctx.task:
            return model
    return ""


async def read_bounded(upstream: UpstreamResponse, idle_s: float, max_bytes: int) -> bytes:
    """A short non-200 answer to a stream request, read whole but never past the cap."""
    parts: list[bytes] = [upstream.body] if upstream.body else []
    size = len(upstream.body)
    try:
        while (chunk := await upstream.next_chunk(idle_s)) is not None:
            size += len(chunk)
            if size > max_bytes:
                raise UpstreamProtocolError("a backend's error answer is over the proxy's limit")
            parts.append(chunk)
    except BaseException:
        upstream.close()
        raise
    return b"".join(parts)


def response_headers(
    worker: WorkerInfo, ctx: RequestContext, model: str, content_type: bytes, timing: bytes
) -> bytes:
    """The proxy's response headers. ``model`` is ``served_model(worker, ctx)``,
    computed once per response."""
    parts = [
        b"Content-Type: ",
        content_type,
        b"\r\nX-Request-ID: ",
        ctx.request_id.encode(),
        b"\r\nX-Inferno-Backend: ",
        worker.node_id.encode(),
        b"\r\nX-Inferno-Backend-Addr: ",
        worker.address.encode(),
        b"\r\n",
    ]
    if model:
        # Only an id the backend registered (validated) ever becomes a header value.
        parts += [b"X-Inferno-Model: ", model.encode(), b"\r\n"]
    if timing:
        parts += [b"Server-Timing: ", timing, b"\r\n"]
    return b"".join(parts)
