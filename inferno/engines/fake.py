"""``fake``: a deterministic TEST engine. It runs no model.

It emits words from a fixed vocabulary, chosen by a hash of the prompt, at a
configurable token rate after a configurable latency. Use it for load-balancer
benchmarks and fast tests; never to judge answer quality.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator

from pydantic import Field

from inferno.engines.base import (
    Delta,
    EngineOptions,
    GenerationRequest,
    GenerationResult,
    TextGenerationEngine,
)

_VOCAB = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "inference",
    "engines",
    "route",
    "tokens",
    "through",
    "proxies",
    "and",
    "backends",
    "answer",
    "politely",
    "with",
    "small",
    "words",
)


def _prompt_text(request: GenerationRequest) -> str:
    if request.messages:
        return "\n".join(content for _, content in request.messages)
    return request.prompt or ""


def fake_tokens(request: GenerationRequest) -> list[str]:
    """The exact tokens the fake engine answers ``request`` with."""
    digest = hashlib.blake2b(_prompt_text(request).encode(), digest_size=8).digest()
    start = int.from_bytes(digest, "big")
    return [(" " if i else "") + _VOCAB[(start + i * 7) % len(_VOCAB)] for i in range(request.max_tokens)]


class FakeOptions(EngineOptions):
    n_parallel: int = Field(2, ge=1, le=4096, description="concurrent generations")
    fake_tokens_per_s: float = Field(2000.0, gt=0, description="the fake engine's token rate")
    fake_latency_ms: float = Field(0.0, ge=0, description="the fake engine's latency before the first token")


class FakeEngine(TextGenerationEngine, name="fake"):
    model_id = "fake"
    Options = FakeOptions

    def __init__(self, tokens_per_s: float, latency_ms: float, slots: int) -> None:
        self._interval_s = 1.0 / tokens_per_s
        self._latency_s = latency_ms / 1000.0
        self.slots = slots

    @classmethod
    def from_options(cls, options: FakeOptions) -> FakeEngine:
        return cls(options.fake_tokens_per_s, options.fake_latency_ms, options.n_parallel)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _prompt_tokens(self, request: GenerationRequest) -> int:
        return max(1, len(_prompt_text(request).split()))

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        # One sleep for the whole answer keeps the engine cheap at high request rates.
        tokens = fake_tokens(request)
        delay = self._latency_s + self._interval_s * len(tokens)
        if delay >= 1e-4:  # below that a timer costs more than it models
            await asyncio.sleep(delay)
        return GenerationResult("".join(tokens), "length", self._prompt_tokens(request), len(tokens))

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        tokens = fake_tokens(request)
        if self._latency_s > 0:
            await asyncio.sleep(self._latency_s)
        for token in tokens:
            await asyncio.sleep(self._interval_s)
            yield Delta(token)
        yield Delta("", "length", self._prompt_tokens(request), len(tokens))
