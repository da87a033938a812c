"""``inferno controller``'s flags: the admin token, orchestrator options, choices."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from inferno.cli import main
from inferno.cli.controller import admin_token, option_pairs


def test_the_admin_token_comes_from_its_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "admin-token"
    path.write_text("  admin-token-0123456789abcdef\n")
    assert admin_token(str(path)).get_secret_value() == "admin-token-0123456789abcdef"
    monkeypatch.setenv("INFERNO_ADMIN_TOKEN", "from-the-environment-0123")
    assert admin_token(None).get_secret_value() == "from-the-environment-0123"
    monkeypatch.setenv("INFERNO_ADMIN_TOKEN", "short")
    with pytest.raises(click.BadParameter, match="16"):
        admin_token(None)
    monkeypatch.delenv("INFERNO_ADMIN_TOKEN")
    with pytest.raises(click.BadParameter, match="needs the proxy's admin token"):
        admin_token(None)
    with pytest.raises(click.BadParameter, match=r"cannot read|missing"):
        admin_token(str(tmp_path / "missing"))


def test_orchestrator_options_are_key_value_pairs() -> None:
    assert option_pairs(("template=backend", "stack=inferno")) == (
        ("template", "backend"),
        ("stack", "inferno"),
    )
    with pytest.raises(click.BadParameter):
        option_pairs(("template",))


def test_the_command_refuses_bad_settings_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERNO_ADMIN_TOKEN", "admin-token-0123456789abcdef")
    runner = CliRunner()
    out = runner.invoke(main, ["controller", "--proxy-ops", "nowhere", "--orchestrator", "swarm"])
    assert out.exit_code == 2 and "--proxy-ops" in out.output
    out = runner.invoke(main, ["controller", "--proxy-ops", "127.0.0.1:1", "--orchestrator", "nope"])
    assert out.exit_code == 2 and "swarm" in out.output
    help_text = runner.invoke(main, ["controller", "--help"]).output
    assert "INFERNO_CONTROLLER_ORCHESTRATOR_OPTION" in help_text
