"""The proxy's data port: validate, build a routing context, forward."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from inferno.config import ProxyConfig
from inferno.errors import BadRequest, InfernoError, MethodNotAllowed, NotFound
from inferno.http.responses import JSON_HEADERS, dumps, error_body
from inferno.http.server import Request, Responder
from inferno.observability.metrics import ProxyStats
from inferno.policies.base import Priority, RequestContext
from inferno.proxy.batch import BatchRunner
from inferno.proxy.forward import Forwarder, Job
from inferno.proxy.request_id import RequestIdFactory
from inferno.registry.registry import WorkerRegistry
from inferno.schemas import (
    PRIORITIES,
    ChatCompletionRequest,
    CompletionRequest,
    InferenceRequest,
    check_max_tokens,
    parse_body,
)

logger = logging.getLogger(__name__)

PREFIX_CHARS = 256
DEFAULT_CHAT_MAX_TOKENS = 256
Parsed = tuple[RequestContext, bool, int]


class ProxyApp:
    """Handler for the data port (8080)."""

    def __init__(
        self,
        config: ProxyConfig,
        registry: WorkerRegistry,
        forwarder: Forwarder,
        stats: ProxyStats,
        *,
        ids: RequestIdFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = config
        self._registry = registry
        self._forwarder = forwarder
        self._stats = stats
        self._ids = ids or RequestIdFactory()
        self._clock = clock
        self._batch = BatchRunner(forwarder, config.admission.max_batch_items, self.inference_context)
        self._routes: dict[str, Callable[[Request, str], Parsed]] = {
            "/inference": self._inference,
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
        }

    async def __call__(self, request: Request, responder: Responder) -> None:
        t0 = self._clock()
        rid = self._ids.accept_or_new(request.headers.get(b"x-request-id"))
        self._stats.in_flight += 1
        try:
            route = self._routes.get(request.path)
            if route is not None:
                if request.method != "POST":
                    raise MethodNotAllowed(("POST",))
                ctx, stream, max_tokens = route(request, rid)
                job = Job(
                    ctx, request.path.encode(), request.body, max_tokens, t0, self._deadline(request, t0)
                )
                await self._forwarder.forward(
                    responder, job, stream=stream, splice_timings=request.path == "/inference"
                )
            elif request.path == "/batch_inference":
                if request.method != "POST":
                    raise MethodNotAllowed(("POST",))
                body = await self._batch.run(request, rid, t0, self._deadline(request, t0))
                self._send_local(responder, rid, 200, body)
            elif request.path == "/v1/models":
                if request.method not in ("GET", "HEAD"):
                    raise MethodNotAllowed(("GET", "HEAD"))
                self._send_local(responder, rid, 200, dumps(self._models()))
            else:
                raise NotFound("no route for this path")
        except InfernoError as exc:
            if responder.started:
                raise
            status, body = error_body(exc)
            self._send_local(responder, rid, status, body, exc.headers())
        finally:
            self._stats.in_flight -= 1

    def _deadline(self, request: Request, t0: float) -> float:
        """Overall deadline: the default, or ``X-Inferno-Timeout-Ms`` within the cap."""
        header = request.headers.get(b"x-inferno-timeout-ms")
        if header is None:
            return t0 + self._cfg.deadline.default_s
        if not header.isdigit() or not 0 < int(header) <= self._cfg.deadline.max_s * 1000:
            raise BadRequest(
                f"X-Inferno-Timeout-Ms must be an integer from 1 to {int(self._cfg.deadline.max_s * 1000)}"
            )
        return t0 + int(header) / 1000.0

    def _send_local(
        self, responder: Responder, rid: str, status: int, body: bytes, extra: bytes = b""
    ) -> None:
        self._stats.record_local(status)
        responder.send(status, JSON_HEADERS + b"X-Request-ID: " + rid.encode() + b"\r\n" + extra, body)

    # -- routes: each validates and returns (routing context, stream?) ------------------
    def _priority(self, request: Request, field: str | None) -> Priority:
        name = field
        header = request.headers.get(b"x-priority")
        if header is not None:
            name = header.decode("latin-1").lower()
        if name is None:
            return Priority.NORMAL
        if name not in PRIORITIES:
            raise BadRequest("priority must be one of high, normal, low", param="priority")
        return PRIORITIES[name]

    def _session(self, request: Request, field: str | None) -> str | None:
        header = request.headers.get(b"x-session-id")
        if header is not None:
            return header.decode("latin-1")[:256]
        return field

    def _context(
        self,
        request: Request,
        rid: str,
        model: str | None,
        session_field: str | None,
        prompt: str,
        priority_field: str | None,
    ) -> RequestContext:
        return RequestContext(
            request_id=rid,
            model=model,
            session_key=self._session(request, session_field),
            prompt_prefix=prompt[:PREFIX_CHARS],
            priority=self._priority(request, priority_field),
        )

    def _inference(self, request: Request, rid: str) -> Parsed:
        return self.inference_context(request, rid, parse_body(InferenceRequest, request.body))

    def inference_context(self, request: Request, rid: str, body: InferenceRequest) -> Parsed:
        check_max_tokens(body.max_tokens, self._cfg.max_tokens_limit)
        self._log_prompt(rid, body.prompt)
        return (
            self._context(request, rid, body.model, body.session_id, body.prompt, body.priority),
            body.stream,
            body.max_tokens,
        )

    def _chat(self, request: Request, rid: str) -> Parsed:
        body = parse_body(ChatCompletionRequest, request.body)
        check_max_tokens(body.effective_max_tokens(DEFAULT_CHAT_MAX_TOKENS), self._cfg.max_tokens_limit)
        text = body.prompt_text()
        self._log_prompt(rid, text)
        return (
            self._context(request, rid, body.model, body.user, text, body.priority),
            body.stream,
            body.effective_max_tokens(DEFAULT_CHAT_MAX_TOKENS),
        )

    def _completions(self, request: Request, rid: str) -> Parsed:
        body = parse_body(CompletionRequest, request.body)
        check_max_tokens(body.max_tokens, self._cfg.max_tokens_limit)
        self._log_prompt(rid, body.prompt)
        return (
            self._context(request, rid, body.model, body.user, body.prompt, body.priority),
            body.stream,
            body.max_tokens,
        )

    def _log_prompt(self, rid: str, prompt: str) -> None:
        if self._cfg.log_prompts and logger.isEnabledFor(logging.DEBUG):
            logger.debug("Request %s prompt: %r", rid, prompt)

    def _models(self) -> dict[str, object]:
        return {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "inferno"}
                for model in self._registry.models()
            ],
        }
