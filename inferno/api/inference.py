"""``POST /inference``: Inferno's own shape, with timings and the serving backend."""

from __future__ import annotations

import uuid
from typing import Any

from inferno.api.base import ParsedText, RenderMeta, TextAPI, usage
from inferno.engines.base import Delta, GenerationRequest, GenerationResult
from inferno.schemas.openai import InferenceRequest, parse_body


class InferenceAPI(TextAPI):
    path = "/inference"

    def parse(self, body: bytes) -> ParsedText:
        return self.from_model(parse_body(InferenceRequest, body))

    def from_model(self, inf: InferenceRequest) -> ParsedText:
        """A parsed ``/inference`` body (batch items arrive already decoded)."""
        return ParsedText(
            inf.model, inf.stream, inf.max_tokens, inf.prompt, inf.session_id, inf.priority, inf
        )

    def generation(self, parsed: ParsedText) -> GenerationRequest:
        inf: InferenceRequest = parsed.body
        return GenerationRequest(
            max_tokens=inf.max_tokens,
            temperature=inf.temperature,
            top_p=inf.top_p,
            seed=inf.seed,
            messages=(("user", inf.prompt),),
        )

    def render_whole(self, result: GenerationResult, meta: RenderMeta) -> dict[str, Any]:
        return {
            "id": f"inf-{uuid.uuid4().hex[:12]}",
            "object": "inference",
            "request_id": meta.request_id,
            "model": meta.model,
            "backend": meta.node_id,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "usage": usage(result.prompt_tokens, result.completion_tokens),
            "backend_timings": {
                "queue_ms": round(meta.queue_ms, 3),
                "inference_ms": round(meta.inference_ms, 3),
            },
        }

    def render_chunk(self, delta: Delta, meta: RenderMeta, first: bool) -> dict[str, Any]:
        event: dict[str, Any] = {
            "request_id": meta.request_id,
            "backend": meta.node_id,
            "text": delta.text,
            "finish_reason": delta.finish_reason,
        }
        if delta.finish_reason is not None:
            event["usage"] = usage(delta.prompt_tokens, delta.completion_tokens)
        return event
