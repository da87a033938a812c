"""``POST /inference``: Inferno's own shape, for text and for images.

A body with ``data`` (a base64 image) is an image classification; any other body
is a text generation. Both answer with timings and the serving backend.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

from inferno.api.base import ParsedText, RenderMeta, TextAPI, remaining_tokens, usage
from inferno.config import RequestLimits
from inferno.engines.base import Delta, GenerationRequest, GenerationResult, Prediction
from inferno.errors import BadRequest
from inferno.schemas.openai import DEFAULT_LIMITS, ImageRequest, InferenceRequest, parse_obj


def image_bytes(data: str) -> bytes:
    """The image file in ``data``: standard or URL-safe base64, or a ``data:`` URL."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("data is not valid base64", param="data") from None


#: an image's units of work for the per-try timeout (docs/deadlines.md): decoding a large
#: or 16-bit image can take about a second before the model runs
IMAGE_WORK_TOKENS = 20


class InferenceAPI(TextAPI):
    path = "/inference"

    def parse_data(self, data: Any, limits: RequestLimits = DEFAULT_LIMITS) -> ParsedText:
        # Unknown fields are refused, so the fields' count needs no bound of its own.
        return self.from_dict(data)

    def from_dict(self, data: Any) -> ParsedText:
        """A decoded ``/inference`` body (or one batch item): image or text."""
        if isinstance(data, dict) and "data" in data:
            image = parse_obj(ImageRequest, data)
            field = "model" if image.model_type is None and image.model is not None else "model_type"
            return ParsedText(
                image.requested_model(),
                False,
                IMAGE_WORK_TOKENS,
                "",
                image.session_id,
                image.priority,
                image,
                task="image-classification",
                model_field=field,
            )
        return self.from_model(parse_obj(InferenceRequest, data))

    def from_model(self, inf: InferenceRequest) -> ParsedText:
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
            messages=(("user", inf.prompt),)
            + ((("assistant", inf.continue_from),) if inf.continue_from else ()),
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

    def render_predictions(self, predictions: list[Prediction], meta: RenderMeta) -> dict[str, Any]:
        return {
            "id": f"inf-{uuid.uuid4().hex[:12]}",
            "object": "classification",
            "request_id": meta.request_id,
            "model": meta.model,
            "predictions": [
                {"class": p.label, "confidence": round(p.confidence, 6), "index": p.index}
                for p in predictions
            ],
            "worker_id": meta.node_id,
            "backend": meta.node_id,
            "processing_time": round(meta.inference_ms / 1000.0, 6),
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

    def chunk_text(self, event: dict[str, Any]) -> str | None:
        text = event.get("text")
        return text if isinstance(text, str) and "finish_reason" in event else None

    def finished(self, event: dict[str, Any]) -> bool:
        return bool(event.get("finish_reason"))

    def continuation(self, data: dict[str, Any], text: str, tokens: int) -> dict[str, Any] | None:
        left = remaining_tokens(data, ("max_tokens",), 128, tokens)
        if left <= 0:
            return None
        data["max_tokens"] = left
        data["continue_from"] = data.get("continue_from", "") + text
        return data

    def restamp(self, event: dict[str, Any], first: dict[str, Any]) -> dict[str, Any] | None:
        if "request_id" in first:
            event["request_id"] = first["request_id"]
        return event
