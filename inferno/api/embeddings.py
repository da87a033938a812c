"""``POST /v1/embeddings``: the OpenAI shape, floats or base64 little-endian float32."""

from __future__ import annotations

import base64
import struct
from typing import Any

from inferno.api.base import API, ParsedText, RenderMeta
from inferno.config import RequestLimits
from inferno.engines.base import Embeddings
from inferno.errors import BadRequest
from inferno.schemas.bounds import check_embeddings
from inferno.schemas.openai import DEFAULT_LIMITS, EmbeddingRequest, parse_obj

PREFIX_CHARS = 256
#: tokens an embedding model reads in the time a generation writes one (the per-try
#: timeout counts work in generated tokens: docs/deadlines.md)
TOKENS_PER_WORK_UNIT = 50
#: what a text can cost at most: the models truncate at 256 tokens
MAX_TOKENS_PER_TEXT = 256


def embedding_work(texts: list[str]) -> int:
    """Units of work for the per-try timeout: one per text, or the texts' estimated
    tokens (about four characters each) over TOKENS_PER_WORK_UNIT, whichever is more,
    so a large valid request is never cut off (and its backend ejected) for its size."""
    tokens = sum(min(MAX_TOKENS_PER_TEXT, len(text) // 4 + 2) for text in texts)
    return max(len(texts), tokens // TOKENS_PER_WORK_UNIT)


class EmbeddingsAPI(API):
    path = "/v1/embeddings"

    def parse_data(self, data: Any, limits: RequestLimits = DEFAULT_LIMITS) -> ParsedText:
        check_embeddings(data, limits)
        req = parse_obj(EmbeddingRequest, data)
        texts = req.texts()
        return ParsedText(
            req.model,
            False,
            embedding_work(texts),
            texts[0][:PREFIX_CHARS],
            req.user,
            req.priority,
            req,
            task="embeddings",
        )

    def check_dimensions(self, req: EmbeddingRequest, dims: int) -> None:
        """Refuse a ``dimensions`` the model cannot give, before any work is done."""
        if req.dimensions is not None and req.dimensions != dims:
            raise BadRequest(
                f"this model returns {dims} dimensions; dimensions cannot change it", param="dimensions"
            )

    def render(self, result: Embeddings, req: EmbeddingRequest, meta: RenderMeta) -> dict[str, Any]:
        data: list[dict[str, Any]] = []
        for index, vector in enumerate(result.vectors):
            value: Any = vector
            if req.encoding_format == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": value})
        return {
            "object": "list",
            "data": data,
            "model": meta.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
            "backend": meta.node_id,
            "backend_timings": {
                "queue_ms": round(meta.queue_ms, 3),
                "inference_ms": round(meta.inference_ms, 3),
            },
        }
