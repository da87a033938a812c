"""Model runtimes, one interface per task, registered by name (``Engine.create``).

The engines' modules are imported on the registry's first use (``Engine.create``,
``available_engines()``...), not with this package: the proxy imports the request
types of ``inferno.engines.base`` and must not pay for every model runtime.
"""

from inferno.engines.base import (
    Delta,
    EmbeddingEngine,
    Engine,
    EngineOptions,
    GenerationRequest,
    GenerationResult,
    ImageClassificationEngine,
    TextGenerationEngine,
    set_builtin_loader,
)


def _load_builtins() -> None:
    from inferno.engines import fake, llamacpp, minilm  # noqa: F401  (registers engines)
    from inferno.engines.vision import engine as _vision  # noqa: F401


set_builtin_loader(_load_builtins)


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
