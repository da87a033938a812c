"""Model runtimes, registered by name (``Engine.create``)."""

from inferno.engines import fake, smollm2  # noqa: F401  (registers engines)
from inferno.engines.base import Delta, Engine, GenerationRequest, GenerationResult


def available_engines() -> list[str]:
    return Engine.names()


__all__ = ["Delta", "Engine", "GenerationRequest", "GenerationResult", "available_engines"]
