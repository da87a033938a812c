"""Configuration of model kinds: engine lists, fallback chains, ``inferno up --models``."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from inferno.backend.server import create_engines
from inferno.cli import main
from inferno.config import BackendConfig, ProxyConfig
from inferno.errors import ConfigError
from inferno.launcher import parse_models


def test_engine_lists_and_their_options() -> None:
    config = BackendConfig(
        engine="fake, minilm", engine_options={"fake_tokens_per_s": 5.0, "onnx_threads": 1}
    )
    assert config.engine == ("fake", "minilm")
    engines = create_engines(config)
    assert [e.model_id for e in engines] == ["fake", "all-minilm-l6-v2"]
    with pytest.raises(ConfigError, match="takes the options"):
        create_engines(BackendConfig(engine="fake", engine_options={"onnx_threads": 1}))
    with pytest.raises(ConfigError, match="unknown engine"):
        create_engines(BackendConfig(engine="fake,nope"))
    with pytest.raises(ValidationError):
        BackendConfig(engine="fake,,minilm")


def test_fallback_chains_are_validated() -> None:
    assert ProxyConfig(fallbacks={"a": ("b", "c")}).fallbacks == {"a": ("b", "c")}
    for bad in ({"a": ()}, {"a": ("a",)}, {"a": ("b", "b")}, {"a\n": ("b",)}):
        with pytest.raises(ValidationError):
            ProxyConfig(fallbacks=bad)


def test_fallback_flag() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["proxy", "--fallback", "nothing-after-equals="])
    assert result.exit_code == 2 and "MODEL=FALLBACK" in result.output


def test_up_models_spec() -> None:
    assert parse_models("llamacpp*2,minilm+efficientnet-lite0") == (
        "llamacpp",
        "llamacpp",
        "minilm,efficientnet-lite0",
    )
    for bad in ("", "a,,b", "a*0", "a*x", "a+", "a*17"):
        with pytest.raises(ValueError):
            parse_models(bad)
    result = CliRunner().invoke(main, ["up", "--models", "llamacpp,nope"])
    assert result.exit_code == 2 and "nope" in result.output
