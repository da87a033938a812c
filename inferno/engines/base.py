"""Engine interfaces, one per task, and the registry of named engines.

An engine is a model runtime. Each task has its own interface, because each
has its own calls: text generation streams deltas, embeddings turn texts into
vectors, image classification ranks labels. Every engine declares its own
options model (``Options``); the backend's config carries only the engine's name
and the raw option values, which the engine validates when it is created.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from inferno.errors import ConfigError, ModelMissing
from inferno.schemas.registration import ModelSpec, Task


def package_file(package: str, *parts: str, hint: str) -> Path:
    """A data file inside an installed package, found without importing the package
    (``importlib.util.find_spec``): model wheels often pull in heavy code on import."""
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location).joinpath(*parts)
        if candidate.is_file():
            return candidate
    raise ModelMissing(f"{'/'.join(parts)} of package {package} is not installed. Install: {hint}")


class EngineOptions(BaseModel):
    """Base of every engine's options model: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


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


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    confidence: float
    #: the class index (ImageNet-1k order for the bundled classifier)
    index: int = -1


#: imports the built-in engines; set by the ``inferno.engines`` package (always imported
#: before this module), run on the registry's first use: a process that needs only the
#: request and result types here (the proxy) never imports an engine's module
_load_builtins: Callable[[], None] | None = None


def set_builtin_loader(load: Callable[[], None]) -> None:
    global _load_builtins
    _load_builtins = load


def _registered() -> dict[str, type[Engine]]:
    """The registry, with the built-in engines in it."""
    global _load_builtins
    load, _load_builtins = _load_builtins, None
    if load is not None:
        load()
    return Engine._registry


class Engine(ABC):
    """A model runtime, registered by name (and aliases) for ``Engine.create``."""

    name: ClassVar[str] = ""
    task: ClassVar[Task]
    Options: ClassVar[type[EngineOptions]] = EngineOptions
    _registry: ClassVar[dict[str, type[Engine]]] = {}

    def __init_subclass__(
        cls, *, name: str | None = None, aliases: tuple[str, ...] = (), **kwargs: object
    ) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            for key in (name, *aliases):
                Engine._registry[key] = cls

    #: the model id served (as listed by /v1/models)
    model_id: str = ""
    #: how many requests run at once
    slots: int = 1

    @abstractmethod
    async def start(self) -> None:
        """Load the model. Raise ``ModelMissing`` with the fix when it is not installed."""

    @abstractmethod
    async def aclose(self) -> None: ...

    def models(self) -> list[ModelSpec]:
        return [ModelSpec(id=self.model_id, task=self.task)]

    @classmethod
    @abstractmethod
    def from_options(cls, options: Any) -> Engine:
        """Build the engine from a validated instance of its ``Options``."""

    @classmethod
    def create(cls, name: str, options: Mapping[str, Any] | None = None) -> Engine:
        """The engine registered as ``name``, its options validated by its own model."""
        registry = _registered()
        try:
            engine_cls = registry[name]
        except KeyError:
            raise ConfigError(f"unknown engine {name!r}; choose from {sorted(registry)}") from None
        try:
            validated = engine_cls.Options.model_validate(dict(options or {}))
        except ValidationError as exc:
            raise ConfigError(f"bad options for engine {name!r}: {exc}") from exc
        return engine_cls.from_options(validated)

    @classmethod
    def names(cls) -> list[str]:
        return sorted(_registered())

    @classmethod
    def lookup_task(cls, name: str) -> Task:
        """The task of the engine registered as ``name`` (without creating it)."""
        return _registered()[name].task

    @classmethod
    def options_models(cls) -> dict[str, type[EngineOptions]]:
        return {name: engine.Options for name, engine in sorted(_registered().items())}


class TextGenerationEngine(Engine):
    """``stream`` is the primitive; ``generate`` collects it.

    Cancelling the task that iterates ``stream`` must stop generation promptly and
    free the slot: that is how a client disconnect reaches the model.
    """

    task: ClassVar[Task] = "text-generation"

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


class EmbeddingEngine(Engine):
    """Texts in, one vector each (batched inside the engine)."""

    task: ClassVar[Task] = "embeddings"
    #: the length of every vector
    dimensions: ClassVar[int] = 0

    @abstractmethod
    async def embed(self, texts: Sequence[str]) -> Embeddings: ...


class ImageClassificationEngine(Engine):
    """An encoded image in, the ``top_k`` most likely labels out."""

    task: ClassVar[Task] = "image-classification"

    @abstractmethod
    async def classify(self, image: bytes, top_k: int) -> list[Prediction]: ...
