"""OpenAI-style and ``/inference`` request schemas, shared by the proxy and the backend.

``parse_body`` is the one place where JSON and validation errors become a
``BadRequest`` with a message that names the field, never echoing the input.
``decode_json`` is the one JSON parser every body goes through (orjson, strict
RFC 8259: no ``NaN``, ``Infinity`` or numbers that overflow a double, no lone
surrogates), on the proxy and the backend alike, so the two never disagree about
what a body holds.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inferno.config import RequestLimits
from inferno.errors import BadRequest
from inferno.schemas.bounds import check_values

PriorityName = Literal["high", "normal", "low"]
MAX_PROMPT_CHARS = 200_000
#: one stop sequence (the engine matches each against the text at every token)
MAX_STOP_CHARS = 256
StopText = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
#: the bounds a body is held to when the caller names none (``--request-*`` flags)
DEFAULT_LIMITS = RequestLimits()


class InferenceRequest(BaseModel):
    """``POST /inference``. Unknown fields are rejected so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    model: str | None = Field(None, max_length=128)
    stream: bool = False
    priority: PriorityName | None = None
    session_id: str | None = Field(None, max_length=256)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    #: an answer to continue: the model goes on after this text, streaming only what
    #: follows (the proxy sets it when it moves a stream to another backend)
    continue_from: str | None = Field(None, max_length=MAX_PROMPT_CHARS)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts: list[str] = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise BadRequest(
                    "only content parts of type 'text' are supported by this model", param="messages"
                )
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    #: end the stream with a separate chunk holding the usage (and empty choices)
    include_usage: bool = False


class _OpenAIBase(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    model: str | None = Field(None, max_length=128)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    stop: StopText | list[StopText] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    user: str | None = Field(None, max_length=256)
    n: int = Field(1, ge=1, le=1)
    priority: PriorityName | None = None
    stream_options: StreamOptions | None = None
    #: accepted within OpenAI's range and ignored: the engines do not implement them
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    #: OpenAI's bounds: 16 pairs, keys of 64 characters, values of 512
    metadata: dict[str, str] | None = Field(None, max_length=16)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and any(len(k) > 64 or len(v) > 512 for k, v in value.items()):
            raise ValueError("metadata keys are at most 64 characters, values at most 512")
        return value

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_OpenAIBase):
    #: how many, and how many content parts, is bounded before validation (``bounds.check_chat``)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def effective_max_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def prompt_text(self) -> str:
        return "\n".join(m.text() for m in self.messages)


class CompletionRequest(_OpenAIBase):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_tokens: int = Field(16, ge=1)


M = TypeVar("M", bound=BaseModel)


def decode_json(body: bytes, max_values: int = DEFAULT_LIMITS.max_json_values) -> Any:
    """The JSON value in ``body``, or a ``BadRequest``: the one parser's verdict everywhere,
    and at most ``max_values`` JSON values."""
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest(
            "request body is not valid JSON (NaN, Infinity and numbers out of range are not JSON)"
        ) from None
    check_values(body, data, max_values)
    return data


def parse_body(model: type[M], body: bytes) -> M:
    """Validate a JSON body into ``model`` or raise a ``BadRequest`` naming the problem."""
    return parse_obj(model, decode_json(body))


def parse_obj(model: type[M], data: Any) -> M:
    """Validate an already-decoded JSON value (e.g. one item of a batch)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_describe(exc), param=_param(exc)) from None


def _param(exc: ValidationError) -> str | None:
    errors = exc.errors(include_input=False, include_url=False)
    if errors and errors[0]["loc"]:
        return _safe_part(errors[0]["loc"][0])
    return None


_FIELD_RE = re.compile(r"[A-Za-z0-9_]{1,40}")


def _safe_part(part: object) -> str:
    """A location part as text, unless the client made it up: field names are echoed
    only when they look like field names, never as arbitrary client text."""
    text = str(part)
    return text if isinstance(part, int) or _FIELD_RE.fullmatch(text) else "?"


def _describe(exc: ValidationError) -> str:
    errors: list[Any] = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return "request body is not valid JSON"
    if first["type"] == "model_type" or (not first["loc"] and "type" in first["type"]):
        return "request body must be a JSON object"
    loc = ".".join(_safe_part(p) for p in first["loc"])[:100]
    if first["type"] == "missing":
        message = f"missing required field '{loc}'"
    elif first["type"] == "extra_forbidden":
        message = f"unknown field '{loc}'"
    else:
        message = f"invalid field '{loc}': {first['msg']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return message


def check_max_tokens(value: int, limit: int) -> int:
    if value > limit:
        raise BadRequest(f"max_tokens must be at most {limit}, got {value}", param="max_tokens")
    return value


class EmbeddingRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings``: one string or a list of strings."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    #: how many is bounded before validation (``bounds.check_embeddings``)
    input: str | list[str]
    model: str | None = Field(None, max_length=128)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)
    priority: PriorityName | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input must not be empty")
        if any(not text for text in texts):
            raise ValueError("input strings must not be empty")
        if sum(len(text) for text in texts) > MAX_PROMPT_CHARS * 4:
            raise ValueError(f"input is over {MAX_PROMPT_CHARS * 4} characters in all")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


#: the ``model_type`` that lets the proxy pick any image classifier
ANY_MODEL = "any"


class ImageRequest(BaseModel):
    """``POST /inference`` with an image: ``data`` is the base64-encoded file."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    data: str = Field(min_length=1)
    model_type: str | None = Field(None, max_length=128)
    model: str | None = Field(None, max_length=128)
    top_k: int = Field(5, ge=1, le=1000)
    priority: PriorityName | None = None
    session_id: str | None = Field(None, max_length=256)

    def requested_model(self) -> str | None:
        """The named model, or None for ``any`` (either field; they must agree)."""
        if self.model is not None and self.model_type is not None and self.model != self.model_type:
            raise BadRequest("model and model_type name different models; give one", param="model_type")
        name = self.model_type if self.model_type is not None else self.model
        return None if name == ANY_MODEL else name
