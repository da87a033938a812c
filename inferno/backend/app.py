"""The backend's data port: the text APIs (one adapter each), /health and /v1/models."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from inferno.api import TEXT_APIS, ParsedText, RenderMeta, TextAPI
from inferno.backend.chaos import Chaos
from inferno.backend.service import InferenceService
from inferno.config import BackendConfig
from inferno.engines.base import GenerationRequest
from inferno.errors import Draining, EngineError, InfernoError, Loading, ModelNotFound
from inferno.http.request_id import RequestIdFactory
from inferno.http.responses import JSON_HEADERS, SSE_HEADERS, dumps, error_body
from inferno.http.router import RouteTable
from inferno.http.server import Request, Responder

logger = logging.getLogger(__name__)

#: a data-port route: the request, its responder, its request id and response headers
BackendRoute = Callable[[Request, Responder, str, bytes], Awaitable[None]]


def health(service: InferenceService, node_id: str, chaos: Chaos | None) -> tuple[int, bytes]:
    """The backend's one health answer, the same on the data and the ops port."""
    status = service.status()
    if status == "ok" and chaos is not None and chaos.health_ok() is False:
        status = "unavailable"
    body = {"status": status, "node_id": node_id, "model": service.engine.model_id}
    return (200 if status == "ok" else 503), dumps(body)


class BackendApp:
    """Handler for the backend's data port (3000)."""

    def __init__(self, config: BackendConfig, service: InferenceService, node_id: str) -> None:
        self._cfg = config
        self._service = service
        self._node = node_id
        self._ids = RequestIdFactory()
        self.chaos = Chaos() if config.chaos else None
        # Every route gets the request id and the response headers carrying it.
        self._routes: RouteTable[BackendRoute] = RouteTable()
        for path, api in TEXT_APIS.items():
            self._routes.add("POST", path, self._generate_route(api))
        self._routes.add("GET", "/health", self._health)
        self._routes.add("GET", "/v1/models", self._models)
        if self.chaos is not None:
            self._routes.add_prefix("POST", "/simulate/", self._simulate)

    async def __call__(self, request: Request, responder: Responder) -> None:
        rid = self._ids.accept_or_new(request.headers.get(b"x-request-id"))
        headers = JSON_HEADERS + b"X-Request-ID: " + rid.encode() + b"\r\nX-Inferno-Backend: "
        headers += self._node.encode() + b"\r\n"
        try:
            route = self._routes.match(request.method, request.path)
            await route(request, responder, rid, headers)
        except InfernoError as exc:
            if responder.started:
                raise
            status, body = error_body(exc)
            responder.send(status, headers + exc.headers(), body)

    # -- routes --------------------------------------------------------------------------
    async def _health(self, request: Request, responder: Responder, rid: str, headers: bytes) -> None:
        status, body = health(self._service, self._node, self.chaos)
        responder.send(status, headers, body)

    async def _models(self, request: Request, responder: Responder, rid: str, headers: bytes) -> None:
        data = [
            {"id": spec.id, "object": "model", "created": 0, "owned_by": "inferno", "task": spec.task}
            for spec in self._service.engine.models()
        ]
        responder.send(200, headers, dumps({"object": "list", "data": data}))

    async def _simulate(self, request: Request, responder: Responder, rid: str, headers: bytes) -> None:
        assert self.chaos is not None
        self.chaos.handle(request, responder)

    def _generate_route(self, api: TextAPI) -> BackendRoute:
        async def route(request: Request, responder: Responder, rid: str, headers: bytes) -> None:
            parsed = api.parse_checked(request.body, self._cfg.max_tokens_limit)
            await self._generate(responder, headers, rid, api, parsed)

        return route

    # -- generation ----------------------------------------------------------------------
    async def _generate(
        self, responder: Responder, headers: bytes, rid: str, api: TextAPI, parsed: ParsedText
    ) -> None:
        engine = self._service.engine
        if parsed.model is not None and parsed.model != engine.model_id:
            raise ModelNotFound(
                f"the requested model is not served here; this backend serves {engine.model_id!r}",
                param="model",
            )
        if not self._service.ready:
            raise Loading("backend is still loading its model; retry shortly")
        if self._service.draining:
            raise Draining("backend is draining; retry on another backend")
        gen = api.generation(parsed)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "Processing inference request %s (%s, prompt %d chars, max_tokens %d)",
                rid,
                api.path,
                len(parsed.prompt),
                gen.max_tokens,
            )
        if self._cfg.log_prompts and logger.isEnabledFor(logging.DEBUG):
            logger.debug("Request %s input: %r", rid, gen.messages or gen.prompt)
        started = time.perf_counter()
        tokens = 0
        try:
            if self.chaos is not None:
                await self.chaos.before_request()
            async with self._service.slot() as queued_s:
                t_gen = time.perf_counter()
                meta = RenderMeta(rid, engine.model_id, self._node, int(time.time()), queued_s * 1000.0)
                if parsed.stream:
                    tokens = await self._stream(responder, headers, api, gen, meta)
                else:
                    result = await engine.generate(gen)
                    tokens = result.completion_tokens
                    meta = RenderMeta(
                        rid,
                        engine.model_id,
                        self._node,
                        meta.created,
                        meta.queue_ms,
                        (time.perf_counter() - t_gen) * 1000.0,
                    )
                    responder.send(200, headers, dumps(api.render_whole(result, meta)))
        except asyncio.CancelledError:
            logger.info(
                "Inference cancelled after %dms for request %s (client disconnected)",
                round((time.perf_counter() - started) * 1000),
                rid,
            )
            raise
        except EngineError:
            self._service.requests_failed += 1
            logger.exception("Inference failed for request %s", rid)
            raise
        duration = time.perf_counter() - started
        self._service.completed(tokens, duration, time.perf_counter() - t_gen)
        logger.info(
            "Inference completed in %dms for request %s (%d tokens)",
            round(duration * 1000),
            rid,
            tokens,
        )

    async def _stream(
        self, responder: Responder, headers: bytes, api: TextAPI, gen: GenerationRequest, meta: RenderMeta
    ) -> int:
        """Server-sent events, one per token, flushed as generated; ends with [DONE]."""
        responder.start_stream(200, headers.replace(JSON_HEADERS, SSE_HEADERS))
        tokens = 0
        deltas = self._service.engine.stream(gen)
        try:
            first = True
            async for delta in deltas:
                if delta.finish_reason is None:
                    tokens += 1
                event = api.render_chunk(delta, meta, first)
                first = False
                await responder.write(b"data: " + dumps(event) + b"\n\n")
            await responder.write(b"data: [DONE]\n\n")
        finally:
            await deltas.aclose()
        responder.end_stream()
        return tokens
