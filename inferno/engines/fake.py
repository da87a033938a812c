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


_INDEX = {word: i for i, word in enumerate(_VOCAB)}
#: each token is the one seven places on in the vocabulary from the one before
_STEP = 7


def _prompt_text(request: GenerationRequest) -> str:
    if request.messages:
        return "\n".join(content for _, content in request.messages)
    return request.prompt or ""


def _start(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % len(_VOCAB)


def _token(start: int, i: int) -> str:
    return (" " if i else "") + _VOCAB[(start + i * _STEP) % len(_VOCAB)]


def _answered(base: str, text: str) -> int | None:
    """How many of ``base``'s tokens ``text`` is, if it is exactly their beginning."""
    count = len(text.split(" "))
    start = _start(base)
    if "".join(_token(start, i) for i in range(count)) == text:
        return count
    return None


def _continued_prompt(prompt: str) -> tuple[str, int]:
    """A completion prompt that ends with this engine's own answer to its beginning
    (a stream continued elsewhere): (that beginning, tokens answered), else (prompt, 0)."""
    words = prompt.split(" ")
    # The answer's tokens after the first are whole words, each _STEP on from the last.
    j = len(words) - 1
    while (
        j > 0
        and words[j] in _INDEX
        and (j == len(words) - 1 or (_INDEX[words[j]] + _STEP) % len(_VOCAB) == _INDEX[words[j + 1]])
    ):
        j -= 1
    for at in range(j, len(words)):
        tail = "".join(" " + word for word in words[at + 1 :])
        # The first token is glued to the prompt's end.
        for first in _VOCAB:
            if not words[at].endswith(first):
                continue
            base = prompt[: len(prompt) - len(first) - len(tail)]
            if base and _answered(base, first + tail) is not None:
                return base, len(words) - at
    return prompt, 0


def _continuation(request: GenerationRequest) -> tuple[str, int]:
    """(the prompt as first asked, tokens already answered): the engine continues an
    answer deterministically, as llama.cpp does at temperature 0 (docs/retries.md)."""
    messages = request.messages
    if messages and len(messages) > 1 and messages[-1][0] == "assistant":
        base = "\n".join(content for _, content in messages[:-1])
        done = _answered(base, messages[-1][1])
        if done is not None:
            return base, done
    if messages is None and request.prompt:
        return _continued_prompt(request.prompt)
    return _prompt_text(request), 0


def fake_tokens(request: GenerationRequest) -> list[str]:
    """The exact tokens the fake engine answers ``request`` with."""
    base, done = _continuation(request)
    start = _start(base)
    return [_token(start, i) for i in range(done, done + request.max_tokens)]


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
        # A continued answer's text counts as prompt, one token per answered token.
        base, done = _continuation(request)
        return max(1, len(base.split())) + done

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
