"""The adapter interface: one per API shape, shared by the proxy and the backend.

An adapter owns everything that differs between the API shapes (``/inference``,
``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``): parsing a
body into what the proxy routes on (model, task, priority) and what the engine
runs, and rendering a whole answer or one stream chunk. Adding an API shape is
one adapter file; nothing compares kind strings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from inferno.config import RequestLimits
from inferno.engines.base import Delta, GenerationRequest, GenerationResult
from inferno.schemas.openai import DEFAULT_LIMITS, check_max_tokens, decode_json
from inferno.schemas.registration import Task


@dataclass(slots=True)
class ParsedText:
    """A validated request: what the proxy routes on. Never mutated (not frozen only
    because a frozen dataclass costs ~2 µs more to build, on every request).

    ``body`` is the validated model; the backend turns it into an engine request
    with ``TextAPI.generation`` (the proxy never needs one, so never builds one).
    """

    model: str | None
    stream: bool
    max_tokens: int
    #: the prompt's text, for prefix affinity and the logged length
    prompt: str
    #: the body's session field (``session_id`` or OpenAI ``user``)
    session: str | None
    #: the body's priority field
    priority: str | None
    body: Any
    task: Task = "text-generation"
    #: the body field that names the model (``model_type`` for images)
    model_field: str = "model"


@dataclass(frozen=True, slots=True)
class RenderMeta:
    """What a rendered answer says about where and how it was made."""

    request_id: str
    model: str
    node_id: str
    created: int
    queue_ms: float = 0.0
    inference_ms: float = 0.0


class API(ABC):
    """One API shape: what the proxy parses to route a request."""

    path: ClassVar[str]

    def parse(self, body: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> ParsedText:
        """Validate a request body (``BadRequest`` naming the field on any problem),
        its counts held to ``limits`` before any field is validated."""
        return self.parse_data(decode_json(body, limits.max_json_values), limits)

    @abstractmethod
    def parse_data(self, data: Any, limits: RequestLimits = DEFAULT_LIMITS) -> ParsedText:
        """Validate a decoded body (``decode_json``'s, so its JSON values are counted)."""

    def parse_checked(
        self, data: Any, max_tokens_limit: int, limits: RequestLimits = DEFAULT_LIMITS
    ) -> ParsedText:
        """``parse_data`` and the ``max_tokens`` limit."""
        parsed = self.parse_data(data, limits)
        check_max_tokens(parsed.max_tokens, max_tokens_limit)
        return parsed

    def wants_usage(self, parsed: ParsedText) -> bool | None:
        """Whether a stream's client asked for the usage chunk (None: this API always
        sends its usage, so there is nothing to ask for)."""
        return None


class TextAPI(API):
    """One text-generation API shape."""

    @abstractmethod
    def generation(self, parsed: ParsedText) -> GenerationRequest:
        """What the engine runs for this request (backend side)."""

    @abstractmethod
    def render_whole(self, result: GenerationResult, meta: RenderMeta) -> dict[str, Any]: ...

    @abstractmethod
    def render_chunk(self, delta: Delta, meta: RenderMeta, first: bool) -> dict[str, Any]: ...

    def usage_chunk(self, parsed: ParsedText, last: Delta, meta: RenderMeta) -> dict[str, Any] | None:
        """The separate final chunk with the usage, when the API has one and the client
        asked for it (OpenAI's ``stream_options.include_usage``)."""
        return None

    # -- stream migration (proxy side; docs/retries.md) ------------------------------------
    @abstractmethod
    def chunk_text(self, event: dict[str, Any]) -> str | None:
        """The generated text one decoded stream event carries (None: none)."""

    @abstractmethod
    def finished(self, event: dict[str, Any]) -> bool:
        """Whether this event ends the answer (it has a finish reason)."""

    @abstractmethod
    def continuation(self, data: dict[str, Any], text: str, tokens: int) -> dict[str, Any] | None:
        """The request body that continues an answer from ``text`` (``tokens`` of it
        relayed), or None when nothing is left to generate."""

    @abstractmethod
    def restamp(self, event: dict[str, Any], first: dict[str, Any]) -> dict[str, Any] | None:
        """An event of a continued segment as if the first segment had sent it (its
        ``id``, ``created``, ``model``), or None to drop it (a role-only chunk)."""


def remaining_tokens(data: dict[str, Any], fields: tuple[str, ...], default: int, used: int) -> int:
    """What is left of a body's token budget (the first of ``fields`` it sets)."""
    for name in fields:
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value - used
    return default - used


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
