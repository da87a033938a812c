"""The OpenAI shapes: ``POST /v1/chat/completions`` and ``POST /v1/completions``."""

from __future__ import annotations

from typing import Any

from inferno.api.base import ParsedText, RenderMeta, TextAPI, usage
from inferno.config import RequestLimits
from inferno.engines.base import Delta, GenerationRequest, GenerationResult
from inferno.schemas.bounds import check_chat, check_completion
from inferno.schemas.openai import (
    DEFAULT_LIMITS,
    ChatCompletionRequest,
    CompletionRequest,
    parse_obj,
)

#: max_tokens of a chat request that names none
DEFAULT_CHAT_MAX_TOKENS = 256


def _usage_chunk(
    parsed: ParsedText, last: Delta, ident: str, kind: str, meta: RenderMeta
) -> dict[str, Any] | None:
    """OpenAI's separate last chunk with the usage, when the client asked for it."""
    if not parsed.body.include_usage():
        return None
    return {
        "id": ident,
        "object": kind,
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage(last.prompt_tokens, last.completion_tokens),
    }


class ChatAPI(TextAPI):
    path = "/v1/chat/completions"

    def parse_data(self, data: Any, limits: RequestLimits = DEFAULT_LIMITS) -> ParsedText:
        check_chat(data, limits)
        chat = parse_obj(ChatCompletionRequest, data)
        max_tokens = chat.effective_max_tokens(DEFAULT_CHAT_MAX_TOKENS)
        return ParsedText(
            chat.model, chat.stream, max_tokens, chat.prompt_text(), chat.user, chat.priority, chat
        )

    def generation(self, parsed: ParsedText) -> GenerationRequest:
        chat: ChatCompletionRequest = parsed.body
        return GenerationRequest(
            max_tokens=parsed.max_tokens,
            temperature=chat.temperature,
            top_p=chat.top_p,
            seed=chat.seed,
            stop=chat.stop_tuple(),
            messages=tuple(("system" if m.role == "developer" else m.role, m.text()) for m in chat.messages),
        )

    def render_whole(self, result: GenerationResult, meta: RenderMeta) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{meta.request_id}",
            "object": "chat.completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": usage(result.prompt_tokens, result.completion_tokens),
        }

    def render_chunk(self, delta: Delta, meta: RenderMeta, first: bool) -> dict[str, Any]:
        content: dict[str, Any] = {"content": delta.text} if delta.text else {}
        if first:
            content["role"] = "assistant"
        event: dict[str, Any] = {
            "id": f"chatcmpl-{meta.request_id}",
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "choices": [{"index": 0, "delta": content, "finish_reason": delta.finish_reason}],
        }
        return event

    def usage_chunk(self, parsed: ParsedText, last: Delta, meta: RenderMeta) -> dict[str, Any] | None:
        return _usage_chunk(parsed, last, f"chatcmpl-{meta.request_id}", "chat.completion.chunk", meta)

    def wants_usage(self, parsed: ParsedText) -> bool | None:
        return bool(parsed.body.include_usage())


class CompletionAPI(TextAPI):
    path = "/v1/completions"

    def parse_data(self, data: Any, limits: RequestLimits = DEFAULT_LIMITS) -> ParsedText:
        check_completion(data, limits)
        comp = parse_obj(CompletionRequest, data)
        return ParsedText(
            comp.model, comp.stream, comp.max_tokens, comp.prompt, comp.user, comp.priority, comp
        )

    def generation(self, parsed: ParsedText) -> GenerationRequest:
        comp: CompletionRequest = parsed.body
        return GenerationRequest(
            max_tokens=comp.max_tokens,
            temperature=comp.temperature,
            top_p=comp.top_p,
            seed=comp.seed,
            stop=comp.stop_tuple(),
            prompt=comp.prompt,
        )

    def render_whole(self, result: GenerationResult, meta: RenderMeta) -> dict[str, Any]:
        return {
            "id": f"cmpl-{meta.request_id}",
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [
                {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
            ],
            "usage": usage(result.prompt_tokens, result.completion_tokens),
        }

    def render_chunk(self, delta: Delta, meta: RenderMeta, first: bool) -> dict[str, Any]:
        event: dict[str, Any] = {
            "id": f"cmpl-{meta.request_id}",
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [
                {"index": 0, "text": delta.text, "logprobs": None, "finish_reason": delta.finish_reason}
            ],
        }
        return event

    def usage_chunk(self, parsed: ParsedText, last: Delta, meta: RenderMeta) -> dict[str, Any] | None:
        return _usage_chunk(parsed, last, f"cmpl-{meta.request_id}", "text_completion", meta)

    def wants_usage(self, parsed: ParsedText) -> bool | None:
        return bool(parsed.body.include_usage())
