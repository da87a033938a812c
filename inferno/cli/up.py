"""``inferno up``: a local cluster of a proxy and N backends, supervised."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from inferno.cli.common import LOG_FORMATS, env_rules
from inferno.engines import available_engines
from inferno.policies import available_policies


@env_rules
@click.command()
@click.option(
    "--backends",
    type=click.IntRange(1, 16),
    default=2,
    show_default=True,
    help="Number of backends, all running --engine (see --models for a mixed cluster).",
)
@click.option(
    "--engine",
    type=click.Choice(available_engines()),
    default="llamacpp",
    show_default=True,
    help="Engine of every backend ('fake' is a test engine that runs no model).",
)
@click.option(
    "--models",
    default=None,
    help=(
        "A mixed cluster, one group per backend: engines joined by '+', '*N' repeats a group, "
        "e.g. 'llamacpp*2,minilm+efficientnet-lite0'. Overrides --backends and --engine. "
        "'none': no fixed backend, deployments only (docs/deployments.md)."
    ),
)
@click.option(
    "--state-dir",
    default=".inferno",
    show_default=True,
    help="The proxy's state (deployments, API keys) and its admin token (admin-token).",
)
@click.option(
    "--deployments",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A deployments YAML file applied once the proxy is up (as inferno deploy apply -f).",
)
@click.option(
    "--queue",
    multiple=True,
    metavar="NAME[:MAX_SIZE[:MAX_MESSAGE_BYTES]]",
    help="Declare a pull queue on the proxy (repeatable; docs/queues.md); a --deployments file's "
    "queues: are declared too. Workers lease with the token in <state-dir>/worker-token.",
)
@click.option(
    "--policy",
    type=click.Choice(available_policies()),
    default="round_robin",
    show_default=True,
    help="The proxy's load-balancing policy (docs/policies.md).",
)
@click.option("--free-ports", is_flag=True, help="Pick free ports instead of 8080/6100/300N/620N.")
@click.option(
    "--ready-timeout-s",
    type=float,
    default=180.0,
    show_default=True,
    help="Wait at most this long for every backend to load its model and be healthy.",
)
@click.option(
    "--log-format",
    type=LOG_FORMATS,
    default="text",
    show_default=True,
    help="Log format of the proxy and the backends: text, or json (one object per line).",
)
def up(**opts: Any) -> None:
    """Start a local cluster: one proxy and N backends on 127.0.0.1."""
    from inferno.launcher import make_plan, parse_models, run_up

    models: tuple[str, ...] | None = None
    if opts["models"] == "none":
        models = ()
    elif opts["models"]:
        try:
            models = parse_models(opts["models"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--models") from None
        unknown = {e for group in models for e in group.split(",")} - set(available_engines())
        if unknown:
            raise click.BadParameter(f"unknown engine(s) {sorted(unknown)}", param_hint="--models")
    queues = [q for text in opts["queue"] for q in text.split()]
    if opts["deployments"]:
        from inferno.deployments.apply import load_queues, read_document

        try:
            queues += load_queues(read_document(Path(opts["deployments"])))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--deployments") from None
    plan = make_plan(
        opts["backends"],
        free_ports=opts["free_ports"],
        engine=opts["engine"],
        policy=opts["policy"],
        log_format=opts["log_format"],
        models=models,
        state_dir=opts["state_dir"],
        deployments_file=opts["deployments"],
        queues=tuple(queues),
    )
    sys.exit(run_up(plan, ready_timeout_s=opts["ready_timeout_s"]))
