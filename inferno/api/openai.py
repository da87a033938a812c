"""The OpenAI shapes: ``POST /v1/chat/completions`` and ``POST /v1/completions``."""

from __future__ import annotations

from typing import Any

from inferno.api.base import ParsedText, RenderMeta, TextAPI, remaining_tokens, usage
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


class _OpenAIStream(TextAPI):
    """What chat and completions streams share: one choice, OpenAI chunk stamps."""

    def finished(self, event: dict[str, Any]) -> bool:
        choices = event.get("choices")
        return bool(choices) and isinstance(choices, list) and bool(choices[0].get("finish_reason"))

    def restamp(self, event: dict[str, Any], first: dict[str, Any]) -> dict[str, Any] | None:
        for key in ("id", "created", "model"):
            if key in first:
                event[key] = first[key]
        return event


class ChatAPI(_OpenAIStream):
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

    def chunk_text(self, event: dict[str, Any]) -> str | None:
        choices = event.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return None
        delta = choices[0].get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
        return text if isinstance(text, str) else None

    def continuation(self, data: dict[str, Any], text: str, tokens: int) -> dict[str, Any] | None:
        # llama.cpp continues a trailing assistant message and streams only the new text.
        fields = ("max_completion_tokens", "max_tokens")
        left = remaining_tokens(data, fields, DEFAULT_CHAT_MAX_TOKENS, tokens)
        if left <= 0:
            return None
        data.pop("max_completion_tokens", None)
        data["max_tokens"] = left
        data["messages"] = [*data.get("messages", ()), {"role": "assistant", "content": text}]
        return data

    def restamp(self, event: dict[str, Any], first: dict[str, Any]) -> dict[str, Any] | None:
        choices = event.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            delta = choices[0].get("delta")
            role_only = (
                isinstance(delta, dict)
                and delta.pop("role", None) is not None
                and not any(delta.values())
                and not choices[0].get("finish_reason")
            )
            if role_only:
                return None  # the new segment's role-only chunk (content "" counts as none)
        return super().restamp(event, first)

    def wants_usage(self, parsed: ParsedText) -> bool | None:
        return bool(parsed.body.include_usage())


class CompletionAPI(_OpenAIStream):
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

    def chunk_text(self, event: dict[str, Any]) -> str | None:
        choices = event.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return None
        text = choices[0].get("text")
        return text if isinstance(text, str) else None

    def continuation(self, data: dict[str, Any], text: str, tokens: int) -> dict[str, Any] | None:
        left = remaining_tokens(data, ("max_tokens",), 16, tokens)
        prompt = data.get("prompt")
        if left <= 0 or not isinstance(prompt, str):
            return None
        data["max_tokens"] = left
        data["prompt"] = prompt + text
        return data

    def wants_usage(self, parsed: ParsedText) -> bool | None:
        return bool(parsed.body.include_usage())
