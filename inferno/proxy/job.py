"""One request as the forwarder handles it, and a complete answer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inferno.api.base import TextAPI
from inferno.proxy.bodies import sane_usage, with_model
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


@dataclass(slots=True)
class Outcome:
    """A complete answer, ready to send or to embed in a batch result."""

    status: int
    headers: bytes
    body: bytes
    worker: WorkerInfo


@dataclass(slots=True)
class Job:
    """What the forwarder needs to know about one request."""

    ctx: RequestContext
    path: bytes
    body: bytes
    max_tokens: int
    t0: float
    deadline: float
    #: the body field naming the model (rewritten for aliases and fallbacks)
    model_field: str = "model"
    #: extra response headers (an API key's ``x-ratelimit-*``)
    extra_headers: bytes = b""
    #: called with (model, prompt tokens, completion tokens) once the answer's usage is seen
    on_usage: Callable[[str, int, int], None] | None = None
    #: called once the request is over, whatever happened (gives back what was reserved)
    on_done: Callable[[], None] | None = None
    #: the proxy asked for the stream's usage chunk itself: take it out before the client sees it
    strip_usage: bool = False
    #: the API shape of a streamed text request, to continue it elsewhere if its backend
    #: fails mid-stream (None: not migratable)
    api: TextAPI | None = None
    #: the prompt's length, to estimate its tokens when a stream ends before its usage
    prompt_chars: int = 0
    #: the ``Via`` header the request arrived with (hops before this proxy)
    via: bytes = b""
    #: tracing on: the client's ``traceparent`` header, and this request's span
    traceparent: bytes | None = None
    span: Any = None

    def cold_started(self, waited_s: float) -> None:
        """The request waited ``waited_s`` for an instance to start: say so to the client."""
        self.extra_headers += b"X-Inferno-Cold-Start: %d\r\n" % round(waited_s * 1000)

    def charge(self, model: str, used: tuple[int, int]) -> None:
        """Hand ``on_usage`` the answer's (prompt, completion) tokens, bounded by what
        this request could have cost (``sane_usage``)."""
        if self.on_usage is not None:
            self.on_usage(model, *sane_usage(used, len(self.body), self.max_tokens))

    def for_model(self, model: str) -> Job:
        """The same request sent to another model (a fallback)."""
        ctx = dataclasses.replace(self.ctx, model=model)
        body = with_model(self.body, self.model_field, model)
        return dataclasses.replace(self, ctx=ctx, body=body)
