"""Model runtimes, one interface per task, registered by name (``Engine.create``)."""

from inferno.engines import fake, llamacpp  # noqa: F401  (registers engines)
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
