"""Model runtimes, one interface per task, registered by name (``Engine.create``)."""

from inferno.engines import fake, llamacpp, minilm  # noqa: F401  (registers engines)
from inferno.engines.base import (
    Delta,
    EmbeddingEngine,
    Engine,
    EngineOptions,
    GenerationRequest,
    GenerationResult,
    ImageClassificationEngine,
    TextGenerationEngine,
)
from inferno.engines.vision import engine as _vision  # noqa: F401


def available_engines() -> list[str]:
    return Engine.names()


__all__ = [
    "Delta",
    "EmbeddingEngine",
    "Engine",
    "EngineOptions",
    "GenerationRequest",
    "GenerationResult",
    "ImageClassificationEngine",
    "TextGenerationEngine",
    "available_engines",
]
