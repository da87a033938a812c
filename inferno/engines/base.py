"""The engine (model runtime) interface and its registry of named engines."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from inferno.config import BackendConfig


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation. Chat requests carry ``messages``; raw completions ``prompt``."""

    max_tokens: int
    temperature: float = 0.7
    messages: tuple[tuple[str, str], ...] | None = None
    prompt: str | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(slots=True)
class Delta:
    """A piece of streamed output. The last one carries ``finish_reason`` and usage."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class GenerationResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    extra: dict[str, float] = field(default_factory=dict)


class Engine(ABC):
    """A model runtime. ``stream`` is the primitive; ``generate`` collects it.

    Cancelling the task that iterates ``stream`` must stop generation promptly and
    free the slot: that is how a client disconnect reaches the model.
    """

    name: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Engine]]] = {}

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            Engine._registry[name] = cls

    #: the model id served (as listed by /v1/models)
    model_id: str = ""
    #: how many generations run at once
    slots: int = 1

    @abstractmethod
    async def start(self) -> None:
        """Load the model. Raise ``ModelMissing`` with the fix when it is not installed."""

    @abstractmethod
    async def aclose(self) -> None: ...

    @abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]: ...

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        parts: list[str] = []
        finish, prompt_tokens, completion_tokens = "stop", 0, 0
        async for delta in self.stream(request):
            parts.append(delta.text)
            if delta.finish_reason is not None:
                finish = delta.finish_reason
                prompt_tokens = delta.prompt_tokens
                completion_tokens = delta.completion_tokens
        return GenerationResult("".join(parts), finish, prompt_tokens, completion_tokens)

    @classmethod
    def create(cls, name: str, config: BackendConfig) -> Engine:
        try:
            engine_cls = cls._registry[name]
        except KeyError:
            raise ValueError(f"unknown engine {name!r}; choose from {sorted(cls._registry)}") from None
        return engine_cls.from_config(config)

    @classmethod
    @abstractmethod
    def from_config(cls, config: BackendConfig) -> Engine: ...

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._registry)
