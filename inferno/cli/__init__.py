"""The ``inferno`` command: one module per subcommand, imported only when it runs.

Every flag can be set from the environment as ``INFERNO_<COMMAND>_<FLAG>``
(click's ``auto_envvar_prefix``), e.g. ``INFERNO_PROXY_POLICY``; ``--help`` shows
each. Two aliases from existing deployment docs are honoured as well:
``INFERNO_LISTEN_ADDR`` for the proxy's listen address and
``INFERNO_BACKEND_LISTEN_ADDR`` for the backend's.

``inferno proxy`` must answer its first request within half a second of being
spawned, so this module imports no subcommand: each one's module (and with it the
engines, orchestrators, controller, bench...) is imported when that subcommand is
looked up. ``inferno --help`` lists the commands from the table below instead.
"""

from __future__ import annotations

import importlib

import click

#: command name -> (its module, the first sentence of its help, as ``inferno --help`` shows it);
#: tests/unit/test_cli_imports.py checks each against the command itself
COMMANDS: dict[str, tuple[str, str]] = {
    "backend": ("inferno.cli.backend", "Run an inference backend."),
    "bench": ("inferno.cli.bench", "Load-test a proxy or backend at URL (e.g. http://127.0.0.1:8080)."),
    "controller": (
        "inferno.cli.controller",
        "Run the controller: reconcile the proxy's desired deployments with an orchestrator.",
    ),
    "deploy": ("inferno.cli.deploy", "Manage serverless deployments (the proxy's /v1/deployments)."),
    "keys": ("inferno.cli.keys", "Manage API keys (the proxy's --require-api-key)."),
    "proxy": ("inferno.cli.proxy", "Run the load-balancing proxy."),
    "up": ("inferno.cli.up", "Start a local cluster: one proxy and N backends on 127.0.0.1."),
    "worker": (
        "inferno.cli.worker",
        "Lease jobs from queues at the proxy and run a workload (after --) for each.",
    ),
}


def load(name: str) -> click.Command:
    """The subcommand ``name``, its module imported now (``KeyError`` if there is none)."""
    module_name, _ = COMMANDS[name]
    command = getattr(importlib.import_module(module_name), name)
    assert isinstance(command, click.Command)
    return command


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.add_command(load(cmd_name), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the table: ``--help`` imports no subcommand."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            # a stand-in that carries the table's help shortens it as the command would
            command = self.commands.get(name) or click.Command(name, help=COMMANDS[name][1])
            rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"auto_envvar_prefix": "INFERNO", "help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="inferno-serve")
def main() -> None:
    """Inferno: a load-balancing proxy and inference backends for language, embeddings and image models."""


__all__ = ["COMMANDS", "LazyGroup", "load", "main"]
