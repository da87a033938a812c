"""The backend's data port: the APIs (one adapter each), /health and /v1/models.

Each request names a model (or none: the first engine able to do its task) and
runs on that model's engine, in one of its slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from inferno.api import EMBEDDINGS, INFERENCE, TEXT_APIS, ParsedText, RenderMeta, TextAPI
from inferno.api.inference import image_bytes
from inferno.api.vetting import BodyVetter
from inferno.backend.chaos import Chaos
from inferno.backend.service import InferenceService
from inferno.config import BackendConfig
from inferno.engines.base import (
    Delta,
    EmbeddingEngine,
    Engine,
    GenerationRequest,
    ImageClassificationEngine,
    TextGenerationEngine,
)
from inferno.errors import BadRequest, Draining, EngineError, InfernoError, Loading
from inferno.http.request_id import RequestIdFactory
from inferno.http.responses import JSON_HEADERS, SSE_HEADERS, dumps, error_body
from inferno.http.router import RouteTable
from inferno.http.server import Request, Responder
from inferno.observability.logging import fast_info, json_logs
from inferno.observability.tracing import Tracing
from inferno.schemas.openai import EmbeddingRequest, ImageRequest
from inferno.security import ClusterAuth

logger = logging.getLogger(__name__)

#: a data-port route: the request, its responder, its request id and response headers
BackendRoute = Callable[[Request, Responder, str, bytes], Awaitable[None]]


def health(service: InferenceService, node_id: str, chaos: Chaos | None) -> tuple[int, bytes]:
    """The backend's one health answer, the same on the data and the ops port."""
    status = service.status()
    if status == "ok" and chaos is not None and chaos.health_ok() is False:
        status = "unavailable"
    body = {
        "status": status,
        "node_id": node_id,
        "model": service.engine.model_id,
        "models": list(service.engines),
        # a proxy that lists this backend statically learns its capacity from this
        "slots": service.slots,
    }
    return (200 if status == "ok" else 503), dumps(body)


class BackendApp:
    """Handler for the backend's data port (3000)."""

    def __init__(
        self,
        config: BackendConfig,
        service: InferenceService,
        node_id: str,
        auth: ClusterAuth | None = None,
        tracing: Tracing | None = None,
        vetter: BodyVetter | None = None,
    ) -> None:
        #: decodes bodies, in another process those that may be costly to decode
        self.vetter = vetter or BodyVetter(config.request)
        self._auth = auth or ClusterAuth(None)
        #: OpenTelemetry (``--otlp-endpoint``), else None
        self._tracing = tracing
        self._cfg = config
        self._service = service
        self._node = node_id
        self._ids = RequestIdFactory()
        self.chaos = Chaos() if config.chaos else None
        # Every route gets the request id and the response headers carrying it.
        self._routes: RouteTable[BackendRoute] = RouteTable()
        for path, api in TEXT_APIS.items():
            self._routes.add("POST", path, self._generate_route(api))
        self._routes.add("POST", EMBEDDINGS.path, self._embeddings)
        self._routes.add("GET", "/health", self._health)
        self._routes.add("GET", "/v1/models", self._models)
        if self.chaos is not None:
            self._routes.add_prefix("POST", "/simulate/", self._simulate)

    async def __call__(self, request: Request, responder: Responder) -> None:
        rid = self._ids.accept_or_new(request.headers.get(b"x-request-id"))
        headers = JSON_HEADERS + b"X-Request-ID: " + rid.encode() + b"\r\nX-Inferno-Backend: "
        headers += self._node.encode() + b"\r\n"
        if self._tracing is None:
            await self._handle(request, responder, rid, headers)
            return
        # A child of the proxy's try when it sent a traceparent.
        span = self._tracing.start(
            "inferno.backend",
            request.headers.get(b"traceparent"),
            **{"http.route": request.path, "inferno.node_id": self._node, "inferno.request_id": rid},
        )
        try:
            status = await self._handle(request, responder, rid, headers)
        except BaseException as exc:
            Tracing.end(span, error=type(exc).__name__)
            raise
        Tracing.end(span, status)

    async def _handle(self, request: Request, responder: Responder, rid: str, headers: bytes) -> int | None:
        """Answer one request; the status of an error answer (None when a route answered)."""
        try:
            route = self._routes.match(request.method, request.path)
            await route(request, responder, rid, headers)
        except InfernoError as exc:
            if responder.started:
                raise
            status, body = error_body(exc)
            responder.send(status, headers + exc.headers(), body)
            return status
        return None

    # -- routes --------------------------------------------------------------------------
    async def _health(self, request: Request, responder: Responder, rid: str, headers: bytes) -> None:
        status, body = health(self._service, self._node, self.chaos)
        responder.send(status, headers, body)

    async def _models(self, request: Request, responder: Responder, rid: str, headers: bytes) -> None:
        data = [
            {"id": spec.id, "object": "model", "created": 0, "owned_by": "inferno", "task": spec.task}
            for engine in self._service.engines.values()
            for spec in engine.models()
        ]
        responder.send(200, headers, dumps({"object": "list", "data": data}))

    async def _simulate(self, request: Request, responder: Responder, rid: str, headers: bytes) -> None:
        assert self.chaos is not None
        # Fault injection needs --chaos and, when the cluster has one, the cluster token.
        self._auth.check(
            request.headers, f"POST {request.path}", request.peer.rpartition(":")[0], endpoint="chaos"
        )
        self.chaos.handle(request, responder)

    def _generate_route(self, api: TextAPI) -> BackendRoute:
        async def route(request: Request, responder: Responder, rid: str, headers: bytes) -> None:
            data = await self.vetter.decode(request.body)
            parsed = api.parse_checked(data, self._cfg.max_tokens_limit, self._cfg.request)
            if parsed.task == "image-classification":
                await self._classify(responder, headers, rid, parsed)
            else:
                await self._generate(responder, headers, rid, api, parsed)

        return route

    def _engine(self, parsed: ParsedText) -> Engine:
        """The engine for this request, once the backend is ready and not draining."""
        engine = self._service.engine_for(parsed.model, parsed.task)
        if not self._service.ready:
            raise Loading("backend is still loading its model; retry shortly")
        if self._service.draining:
            raise Draining("backend is draining; retry on another backend")
        return engine

    # -- embeddings and images -----------------------------------------------------------
    async def _embeddings(self, request: Request, responder: Responder, rid: str, headers: bytes) -> None:
        parsed = EMBEDDINGS.parse_data(await self.vetter.decode(request.body), self._cfg.request)
        engine = self._engine(parsed)
        assert isinstance(engine, EmbeddingEngine)
        req: EmbeddingRequest = parsed.body
        EMBEDDINGS.check_dimensions(req, engine.dimensions)
        texts = req.texts()
        logger.info(
            "Processing embeddings request %s (model %s, %d inputs)", rid, engine.model_id, len(texts)
        )
        async with self._task(engine, rid, len(texts)) as (queue_ms, t_slot):
            result = await engine.embed(texts)
            meta = self._meta(rid, engine, queue_ms, t_slot)
            responder.send(200, headers, dumps(EMBEDDINGS.render(result, req, meta)))

    async def _classify(self, responder: Responder, headers: bytes, rid: str, parsed: ParsedText) -> None:
        engine = self._engine(parsed)
        assert isinstance(engine, ImageClassificationEngine)
        req: ImageRequest = parsed.body
        image = image_bytes(req.data)
        logger.info(
            "Processing image request %s (model %s, %d bytes, top_k %d)",
            rid,
            engine.model_id,
            len(image),
            req.top_k,
        )
        async with self._task(engine, rid, 1) as (queue_ms, t_slot):
            predictions = await engine.classify(image, req.top_k)
            meta = self._meta(rid, engine, queue_ms, t_slot)
            responder.send(200, headers, dumps(INFERENCE.render_predictions(predictions, meta)))

    def _meta(self, rid: str, engine: Engine, queue_ms: float, t_slot: float) -> RenderMeta:
        inference_ms = (time.perf_counter() - t_slot) * 1000.0
        return RenderMeta(rid, engine.model_id, self._node, int(time.time()), queue_ms, inference_ms)

    @contextlib.asynccontextmanager
    async def _task(self, engine: Engine, rid: str, items: int) -> AsyncIterator[tuple[float, float]]:
        """A slot of ``engine`` (yields the queue time in ms and when the slot was taken),
        and the counting and logging around one request."""
        started = time.perf_counter()
        model = engine.model_id
        try:
            if self.chaos is not None:
                await self.chaos.before_request()
            async with self._service.slot(model) as queued_s:
                yield queued_s * 1000.0, time.perf_counter()
        except BadRequest:
            raise
        except (EngineError, InfernoError):
            self._service.failed(model)
            logger.exception("Inference failed for request %s", rid)
            raise
        duration = time.perf_counter() - started
        self._service.completed(0, duration, 0.0, model=model, items=items)
        fields = None
        if json_logs():
            fields = {
                "request_id": rid,
                "model": model,
                "items": items,
                "total_ms": round(duration * 1000, 3),
            }
        fast_info(
            logger,
            "Inference completed in %dms for request %s (model %s, %d items)",
            round(duration * 1000),
            rid,
            model,
            items,
            fields=fields,
        )

    # -- generation ----------------------------------------------------------------------
    async def _generate(
        self, responder: Responder, headers: bytes, rid: str, api: TextAPI, parsed: ParsedText
    ) -> None:
        engine = self._engine(parsed)
        assert isinstance(engine, TextGenerationEngine)
        gen = api.generation(parsed)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "Processing inference request %s (%s, model %s, prompt %d chars, max_tokens %d)",
                rid,
                api.path,
                engine.model_id,
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
            async with self._service.slot(engine.model_id) as queued_s:
                t_gen = time.perf_counter()
                meta = RenderMeta(rid, engine.model_id, self._node, int(time.time()), queued_s * 1000.0)
                if parsed.stream:
                    tokens = await self._stream(responder, headers, api, engine, gen, meta, parsed)
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
            self._service.failed(engine.model_id)
            logger.exception("Inference failed for request %s", rid)
            raise
        duration = time.perf_counter() - started
        generation_s = time.perf_counter() - t_gen
        self._service.completed(tokens, duration, generation_s, model=engine.model_id)
        fields = None
        if json_logs():
            fields = {
                "request_id": rid,
                "model": engine.model_id,
                "tokens": tokens,
                "queue_ms": round(meta.queue_ms, 3),
                "inference_ms": round(generation_s * 1000, 3),
                "total_ms": round(duration * 1000, 3),
            }
        fast_info(
            logger,
            "Inference completed in %dms for request %s (%d tokens)",
            round(duration * 1000),
            rid,
            tokens,
            fields=fields,
        )

    async def _stream(
        self,
        responder: Responder,
        headers: bytes,
        api: TextAPI,
        engine: TextGenerationEngine,
        gen: GenerationRequest,
        meta: RenderMeta,
        parsed: ParsedText,
    ) -> int:
        """Server-sent events, one per token, flushed as generated; ends with [DONE]."""
        responder.start_stream(200, headers.replace(JSON_HEADERS, SSE_HEADERS))
        tokens = 0
        deltas = engine.stream(gen)
        try:
            first = True
            last: Delta | None = None
            async for delta in deltas:
                if delta.finish_reason is None:
                    tokens += 1
                event = api.render_chunk(delta, meta, first)
                first = False
                last = delta
                await responder.write(b"data: " + dumps(event) + b"\n\n")
            closing = api.usage_chunk(parsed, last, meta) if last is not None else None
            if closing is not None:
                await responder.write(b"data: " + dumps(closing) + b"\n\n")
            await responder.write(b"data: [DONE]\n\n")
        finally:
            await deltas.aclose()
        responder.end_stream()
        return tokens
