"""``inferno controller``: make what runs match what the proxy wants.

It long-polls the proxy's ops port for the desired state (``--orchestrator
external`` on the proxy), reconciles it with the chosen orchestrator and reports
the instances back. It alone holds the orchestrator's power (for ``swarm``, the
Docker socket), so the internet-facing proxy never does.
"""

from __future__ import annotations

from typing import Any

import click
from pydantic import SecretStr

from inferno.cli.common import admin_token as read_admin_token
from inferno.cli.common import build, cluster_token, cluster_token_option, env_rules, hostport, serve


def admin_token(path: str | None) -> SecretStr:
    """The admin token from ``--admin-token-file`` or ``INFERNO_ADMIN_TOKEN`` (required)."""
    token = read_admin_token(path)
    if token is None:
        raise click.BadParameter(
            "the controller needs the proxy's admin token: --admin-token-file or INFERNO_ADMIN_TOKEN",
            param_hint="--admin-token-file",
        )
    return token


def option_pairs(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in values:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--orchestrator-option")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _orchestrators() -> list[str]:
    from inferno.orchestrators import Orchestrator

    return Orchestrator.names()


@env_rules
@click.command()
@click.option("--proxy-ops", required=True, help="The proxy's ops address (host:port).")
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the proxy's admin token (e.g. a Docker secret); without it, INFERNO_ADMIN_TOKEN.",
)
@click.option(
    "--orchestrator",
    type=click.Choice(_orchestrators()),
    required=True,
    help="How instances run: swarm (Docker Swarm services) or local (processes on this host).",
)
@click.option(
    "--orchestrator-option",
    multiple=True,
    help="KEY=VALUE for the orchestrator (repeatable), e.g. template=inferno_backend for swarm.",
)
@click.option(
    "--state-dir",
    default=".inferno-controller",
    show_default=True,
    help="The controller's own records (the local orchestrator's pid files; the liveness file).",
)
@click.option(
    "--discovery-lb",
    default=None,
    help="The proxy address instances register with (default: --proxy-ops).",
)
@click.option("--model-dir", default=None, help="Where model files named in backend_config live.")
@click.option("--reconcile-interval-s", type=float, default=2.0, show_default=True,
              help="Reconcile at least this often, changes or not.")  # fmt: skip
@click.option("--poll-wait-s", type=float, default=25.0, show_default=True,
              help="How long one long poll of the desired state waits for a change (0-30).")  # fmt: skip
@cluster_token_option
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text, or json: one object per line.")  # fmt: skip
def controller(**opts: Any) -> None:
    """Run the controller: reconcile the proxy's desired deployments with an orchestrator."""
    hostport(opts["proxy_ops"], "--proxy-ops")
    if opts["discovery_lb"]:
        hostport(opts["discovery_lb"], "--discovery-lb")
    from inferno.controller.config import ControllerConfig

    config: ControllerConfig = build(
        ControllerConfig,
        proxy_ops=opts["proxy_ops"],
        admin_token=admin_token(opts["admin_token_file"]),
        orchestrator=opts["orchestrator"],
        orchestrator_options=option_pairs(opts["orchestrator_option"]),
        state_dir=opts["state_dir"],
        discovery_lb=opts["discovery_lb"],
        cluster_token=cluster_token(opts["cluster_token_file"]),
        model_dir=opts["model_dir"],
        reconcile_interval_s=opts["reconcile_interval_s"],
        poll_wait_s=opts["poll_wait_s"],
        log_level=opts["log_level"],
        log_format=opts["log_format"],
    )
    from inferno.controller.run import run_controller

    serve(lambda: run_controller(config), config.log_level, config.log_format, "Controller")
