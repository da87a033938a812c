"""The backend's data port: /inference and the OpenAI-compatible endpoints."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from inferno.backend.chaos import Chaos
from inferno.backend.service import InferenceService
from inferno.config import BackendConfig
from inferno.engines.base import Delta, GenerationRequest
from inferno.errors import (
    EngineError,
    InfernoError,
    MethodNotAllowed,
    ModelNotFound,
    NoBackendAvailable,
    NotFound,
)
from inferno.http.responses import JSON_HEADERS, SSE_HEADERS, dumps, error_body
from inferno.http.server import Request, Responder
from inferno.proxy.request_id import RequestIdFactory
from inferno.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    InferenceRequest,
    check_max_tokens,
    parse_body,
)

logger = logging.getLogger(__name__)

DEFAULT_CHAT_MAX_TOKENS = 256


class Draining(NoBackendAvailable):
    code = "backend_draining"


class Loading(NoBackendAvailable):
    code = "backend_loading"


class BackendApp:
    """Handler for the backend's data port (3000)."""

    def __init__(self, config: BackendConfig, service: InferenceService, node_id: str) -> None:
        self._cfg = config
        self._service = service
        self._node = node_id
        self._ids = RequestIdFactory()
        self.chaos = Chaos() if config.chaos else None

    async def __call__(self, request: Request, responder: Responder) -> None:
        rid = self._ids.accept_or_new(request.headers.get(b"x-request-id"))
        headers = JSON_HEADERS + b"X-Request-ID: " + rid.encode() + b"\r\nX-Inferno-Backend: "
        headers += self._node.encode() + b"\r\n"
        try:
            path = request.path
            if path in ("/inference", "/v1/chat/completions", "/v1/completions"):
                if request.method != "POST":
                    raise MethodNotAllowed(("POST",))
                gen, stream, kind, model_name = self._parse(path, request.body)
                await self._generate(responder, headers, rid, gen, stream, kind, model_name)
            elif path.startswith("/simulate/") and self.chaos is not None:
                if request.method != "POST":
                    raise MethodNotAllowed(("POST",))
                self.chaos.handle(request, responder)
            elif path == "/health":
                scripted = self.chaos.health_ok() if self.chaos is not None else None
                state = self._service.status()
                if state != "ok":
                    responder.send(503, headers, dumps({"status": state}))
                elif scripted is False:
                    responder.send(503, headers, b'{"status":"unavailable"}')
                else:
                    responder.send(200, headers, b'{"status":"ok"}')
            elif path == "/v1/models":
                model = {
                    "id": self._service.engine.model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "inferno",
                }
                responder.send(200, headers, dumps({"object": "list", "data": [model]}))
            else:
                raise NotFound("no route for this path")
        except InfernoError as exc:
            if responder.started:
                raise
            status, body = error_body(exc)
            responder.send(status, headers + exc.headers(), body)

    # -- parsing -------------------------------------------------------------------------
    def _parse(self, path: str, body: bytes) -> tuple[GenerationRequest, bool, str, str | None]:
        limit = self._cfg.max_tokens_limit
        if path == "/inference":
            inf = parse_body(InferenceRequest, body)
            gen = GenerationRequest(
                max_tokens=check_max_tokens(inf.max_tokens, limit),
                temperature=inf.temperature,
                top_p=inf.top_p,
                seed=inf.seed,
                messages=(("user", inf.prompt),),
            )
            return gen, inf.stream, "inference", inf.model
        if path == "/v1/chat/completions":
            chat = parse_body(ChatCompletionRequest, body)
            gen = GenerationRequest(
                max_tokens=check_max_tokens(chat.effective_max_tokens(DEFAULT_CHAT_MAX_TOKENS), limit),
                temperature=chat.temperature,
                top_p=chat.top_p,
                seed=chat.seed,
                stop=chat.stop_tuple(),
                messages=tuple(
                    ("system" if m.role == "developer" else m.role, m.text()) for m in chat.messages
                ),
            )
            return gen, chat.stream, "chat", chat.model
        comp = parse_body(CompletionRequest, body)
        gen = GenerationRequest(
            max_tokens=check_max_tokens(comp.max_tokens, limit),
            temperature=comp.temperature,
            top_p=comp.top_p,
            seed=comp.seed,
            stop=comp.stop_tuple(),
            prompt=comp.prompt,
        )
        return gen, comp.stream, "completion", comp.model

    # -- generation ----------------------------------------------------------------------
    async def _generate(
        self,
        responder: Responder,
        headers: bytes,
        rid: str,
        gen: GenerationRequest,
        stream: bool,
        kind: str,
        requested_model: str | None,
    ) -> None:
        engine = self._service.engine
        if requested_model is not None and requested_model != engine.model_id:
            raise ModelNotFound(
                f"the requested model is not served here; this backend serves {engine.model_id!r}",
                param="model",
            )
        if not self._service.ready:
            raise Loading("backend is still loading its model; retry shortly")
        if self._service.draining:
            raise Draining("backend is draining; retry on another backend")
        if logger.isEnabledFor(logging.INFO):
            prompt_chars = sum(len(c) for _, c in gen.messages or ()) + len(gen.prompt or "")
            logger.info(
                "Processing inference request %s (%s, prompt %d chars, max_tokens %d)",
                rid,
                kind,
                prompt_chars,
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
                if stream:
                    tokens = await self._stream(responder, headers, rid, gen, kind)
                else:
                    result = await engine.generate(gen)
                    tokens = result.completion_tokens
                    inference_ms = (time.perf_counter() - t_gen) * 1000.0
                    body = self._whole_body(
                        kind,
                        rid,
                        result.text,
                        result.finish_reason,
                        result.prompt_tokens,
                        tokens,
                        queued_s,
                        inference_ms,
                    )
                    responder.send(200, headers, dumps(body))
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

    def _whole_body(
        self,
        kind: str,
        rid: str,
        text: str,
        finish: str,
        prompt_tokens: int,
        completion_tokens: int,
        queued_s: float,
        inference_ms: float,
    ) -> dict[str, Any]:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        model = self._service.engine.model_id
        created = int(time.time())
        if kind == "chat":
            return {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        if kind == "completion":
            return {
                "id": f"cmpl-{rid}",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            }
        return {
            "id": f"inf-{uuid.uuid4().hex[:12]}",
            "object": "inference",
            "request_id": rid,
            "model": model,
            "backend": self._node,
            "text": text,
            "finish_reason": finish,
            "usage": usage,
            "backend_timings": {
                "queue_ms": round(queued_s * 1000.0, 3),
                "inference_ms": round(inference_ms, 3),
            },
        }

    async def _stream(
        self, responder: Responder, headers: bytes, rid: str, gen: GenerationRequest, kind: str
    ) -> int:
        """Server-sent events, one per token, flushed as generated; ends with [DONE]."""
        responder.start_stream(200, headers.replace(JSON_HEADERS, SSE_HEADERS))
        created = int(time.time())
        model = self._service.engine.model_id
        tokens = 0
        deltas = self._service.engine.stream(gen)
        try:
            first = True
            async for delta in deltas:
                if delta.finish_reason is None:
                    tokens += 1
                event = self._event(kind, rid, created, model, delta, first)
                first = False
                await responder.write(b"data: " + dumps(event) + b"\n\n")
            await responder.write(b"data: [DONE]\n\n")
        finally:
            await deltas.aclose()
        responder.end_stream()
        return tokens

    def _event(
        self, kind: str, rid: str, created: int, model: str, delta: Delta, first: bool
    ) -> dict[str, Any]:
        usage = None
        if delta.finish_reason is not None:
            usage = {
                "prompt_tokens": delta.prompt_tokens,
                "completion_tokens": delta.completion_tokens,
                "total_tokens": delta.prompt_tokens + delta.completion_tokens,
            }
        if kind == "chat":
            content: dict[str, Any] = {"content": delta.text} if delta.text else {}
            if first:
                content["role"] = "assistant"
            event: dict[str, Any] = {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": content, "finish_reason": delta.finish_reason}],
            }
        elif kind == "completion":
            event = {
                "id": f"cmpl-{rid}",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "text": delta.text,
                        "logprobs": None,
                        "finish_reason": delta.finish_reason,
                    }
                ],
            }
        else:
            event = {
                "request_id": rid,
                "backend": self._node,
                "text": delta.text,
                "finish_reason": delta.finish_reason,
            }
        if usage is not None:
            event["usage"] = usage
        return event
