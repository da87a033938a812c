"""Start-up stays light: the CLI imports a subcommand only when it runs, and the proxy
imports no engine, orchestrator, controller, bench, worker or tracing code unless
configured. Each check runs in a fresh interpreter, whose ``sys.modules`` it reads."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from inferno.cli import COMMANDS, load, main

#: what a proxy with static backends must never import (top-level packages or modules)
HEAVY = (
    "inferno.backend",
    "inferno.bench",
    "inferno.controller",
    "inferno.deployments",
    "inferno.engines.fake",
    "inferno.engines.llamacpp",
    "inferno.engines.minilm",
    "inferno.engines.vision",
    "inferno.launcher",
    "inferno.orchestrators",
    "inferno.queues.service",
    "inferno.worker",
    "llama_cpp",
    "numpy",
    "onnxruntime",
    "opentelemetry",
    "xllamacpp",
)


def _modules(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_importing_the_cli_imports_no_subcommand() -> None:
    modules = _modules("import inferno.cli")
    assert not _heavy(modules)
    assert not {f"inferno.cli.{name}" for name in COMMANDS} & modules
    assert "inferno.config" not in modules and "pydantic" not in modules


def test_the_proxy_with_static_backends_imports_nothing_it_does_not_run() -> None:
    modules = _modules(
        "from inferno.cli import load\n"
        "load('proxy')\n"
        "from inferno.config import ProxyConfig\n"
        "from inferno.proxy.server import ProxyServer\n"
        "ProxyServer(ProxyConfig(listen_port=0, ops_port=0, insecure=True,\n"
        "    backend_servers=('127.0.0.1:9', '127.0.0.1:10')))"
    )
    assert "inferno.proxy.server" in modules and "inferno.cli.proxy" in modules
    assert not _heavy(modules)
    assert not {f"inferno.cli.{name}" for name in COMMANDS if name != "proxy"} & modules


def test_a_backend_still_finds_every_engine() -> None:
    # the engines are imported on the registry's first use, not with the package
    modules = _modules("from inferno.engines import available_engines\nassert 'fake' in available_engines()")
    assert {"inferno.engines.fake", "inferno.engines.llamacpp", "inferno.engines.minilm"} <= modules


def test_inferno_proxy_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "inferno", "proxy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Run the load-balancing proxy." in out.stdout and "--backend-servers" in out.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_help_table_says_what_each_command_says(name: str) -> None:
    command = load(name)
    assert command.name == name
    assert COMMANDS[name][1] == command.get_short_help_str(limit=1000)


def test_inferno_help_lists_every_command_with_its_help() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:", 1)[1]
    for name, (_, text) in COMMANDS.items():
        assert f"  {name}  " in listed and text in listed, name


def test_an_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["prox"])
    assert result.exit_code == 2 and "No such command" in result.output
    assert main.get_command(click.Context(main), "prox") is None
