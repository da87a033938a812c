"""``inferno proxy``: the load-balancing proxy."""

from __future__ import annotations

import logging
from typing import Any

import click
from pydantic import BaseModel

from inferno.cli.common import (
    admin_token,
    build,
    build_sections,
    cluster_token,
    cluster_token_option,
    env_rules,
    hostport,
    logging_options,
    section_options,
    serve,
    worker_token,
)
from inferno.config import (
    AdmissionConfig,
    AffinityConfig,
    DashboardConfig,
    DeadlineConfig,
    HealthCheckConfig,
    HttpConfig,
    MigrationConfig,
    OutlierConfig,
    ProxyConfig,
    QueueConfig,
    QueueSpec,
    RegistryConfig,
    RequestLimits,
    RetryConfig,
    UpstreamConfig,
)
from inferno.policies import available_policies

logger = logging.getLogger(__name__)

# Each proxy setting group becomes flags named --<section>-<field>, with the model's
# default and description, so the CLI, the env vars and the config never drift apart.
PROXY_SECTIONS: dict[str, type[BaseModel]] = {
    "health": HealthCheckConfig,
    "registry": RegistryConfig,
    "upstream": UpstreamConfig,
    "retry": RetryConfig,
    "migration": MigrationConfig,
    "deadline": DeadlineConfig,
    "outlier": OutlierConfig,
    "admission": AdmissionConfig,
    "affinity": AffinityConfig,
    "dashboard": DashboardConfig,
    "http": HttpConfig,
    "request": RequestLimits,
    "queue": QueueConfig,
}


@env_rules
@click.command()
@click.option(
    "--listen-addr",
    default="0.0.0.0:8080",
    show_default=True,
    envvar=["INFERNO_PROXY_LISTEN_ADDR", "INFERNO_LISTEN_ADDR"],
    help="Data port.",
)
@click.option(
    "--ops-addr",
    default="127.0.0.1:6100",
    show_default=True,
    help="Ops port: /health /livez /metrics /workers /registration /queue/status. Loopback by "
    "default: bind it to a private network only (backends on other hosts register through it).",
)
@click.option(
    "--require-api-key",
    is_flag=True,
    help="Every data-port request needs Authorization: Bearer <key> (inferno keys create).",
)
@click.option(
    "--state-dir",
    default=".inferno",
    show_default=True,
    help="Where the SQLite state (API keys, usage) lives.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Run without a cluster token: anyone who reaches the ops port can register a backend "
    "and receive prompts. For local experiments only.",
)
@click.option("--backend-servers", default="", help="Static backends: host:port[=weight],...")
@click.option(
    "--policy",
    type=click.Choice(available_policies()),
    default="round_robin",
    show_default=True,
    help="Load-balancing policy (docs/policies.md).",
)
@click.option(
    "--max-body-bytes",
    type=int,
    default=ProxyConfig.model_fields["max_body_bytes"].default,
    show_default=True,
    help="Larger request bodies get 413 (base64 images need room).",
)
@click.option(
    "--max-tokens-limit", type=int, default=4096, show_default=True, help="Larger max_tokens gets 400."
)
@click.option(
    "--grace-s",
    type=float,
    default=30.0,
    show_default=True,
    help="On SIGTERM, time to finish in-flight requests.",
)
@click.option("--seed", type=int, default=None, help="Seed for randomised policies.")
@click.option(
    "--model-alias",
    multiple=True,
    metavar="ALIAS=MODEL",
    help="Serve MODEL under another name too, e.g. gpt-4o-mini=smollm2-135m-instruct (repeatable; "
    "in the environment, separate several with spaces).",
)
@click.option(
    "--fallback",
    multiple=True,
    metavar="MODEL=B[,C]",
    help="When no backend of MODEL can answer (none routable, or every try failed before the "
    "first byte), send the request to B, then C (repeatable).",
)
@click.option(
    "--orchestrator",
    type=click.Choice(["none", "local", "external"]),
    default="none",
    show_default=True,
    help="Who runs deployment instances (docs/deployments.md): none (deployments off), local "
    "(inferno backend processes on this machine), external (an inferno controller, e.g. on Swarm).",
)
@click.option(
    "--orchestrator-option",
    multiple=True,
    metavar="KEY=VALUE",
    help="A setting of the orchestrator (repeatable).",
)
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the admin token that the deployments API and inferno controller need; "
    "without it the token comes from INFERNO_ADMIN_TOKEN. Not the cluster token: backends never hold it.",
)
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="The only directory whose files a deployment's backend_config may name (model_path).",
)
@click.option(
    "--autoscale-tick-s",
    type=float,
    default=ProxyConfig.model_fields["autoscale_tick_s"].default,
    show_default=True,
    help="How often the autoscaler samples demand (a request at zero instances wakes it at once).",
)
@click.option(
    "--queue",
    multiple=True,
    metavar="NAME[:MAX_SIZE[:MAX_MESSAGE_BYTES]]",
    help="Declare a pull queue (docs/queues.md; repeatable): jobs not finished at most (1024) and "
    "a job's body at most (1024 bytes).",
)
@click.option(
    "--queue-memory-only",
    is_flag=True,
    help="Keep queued jobs and results in memory only (by default they are journaled in --state-dir).",
)
@click.option(
    "--worker-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the token queue workers lease with; without it the token comes from "
    "INFERNO_WORKER_TOKEN. It can only lease and report; the cluster token leases too.",
)
@section_options(PROXY_SECTIONS)
@cluster_token_option
@logging_options
def proxy(**opts: Any) -> None:
    """Run the load-balancing proxy."""
    listen = hostport(opts["listen_addr"], "--listen-addr")
    ops = hostport(opts["ops_addr"], "--ops-addr")
    token = cluster_token(opts["cluster_token_file"])
    if token is None and not opts["insecure"]:
        raise click.UsageError(
            "no cluster token: give --cluster-token-file PATH or set INFERNO_CLUSTER_TOKEN (the same on "
            "every backend), or run with --insecure to let anyone who reaches the ops port register"
        )
    sections = build_sections(opts, PROXY_SECTIONS)
    config: ProxyConfig = build(
        ProxyConfig,
        listen_host=listen[0],
        listen_port=listen[1],
        ops_host=ops[0],
        ops_port=ops[1],
        backend_servers=tuple(s for s in opts["backend_servers"].split(",") if s.strip()),
        policy=opts["policy"],
        max_body_bytes=opts["max_body_bytes"],
        max_tokens_limit=opts["max_tokens_limit"],
        log_format=opts["log_format"],
        log_level=opts["log_level"],
        log_prompts=opts["log_prompts"],
        otlp_endpoint=opts["otlp_endpoint"],
        seed=opts["seed"],
        model_aliases=_aliases(opts["model_alias"]),
        fallbacks=_fallbacks(opts["fallback"]),
        cluster_token=token,
        insecure=opts["insecure"],
        require_api_key=opts["require_api_key"],
        state_dir=opts["state_dir"],
        orchestrator=opts["orchestrator"],
        orchestrator_options=_pairs(opts["orchestrator_option"], "--orchestrator-option"),
        admin_token=admin_token(opts["admin_token_file"]),
        model_dir=opts["model_dir"],
        autoscale_tick_s=opts["autoscale_tick_s"],
        queues=_queues(opts["queue"]),
        queue_memory_only=opts["queue_memory_only"],
        worker_token=worker_token(opts["worker_token_file"]),
        **sections,
    )
    from inferno.proxy.server import run_proxy

    serve(lambda: run_proxy(config, grace_s=opts["grace_s"]), config.log_level, config.log_format, "Proxy")


def _queues(specs: tuple[str, ...]) -> tuple[QueueSpec, ...]:
    from pydantic import ValidationError

    queues: dict[str, QueueSpec] = {}
    for text in specs:
        for part in text.split():
            name, _, rest = part.partition(":")
            size, _, message = rest.partition(":")
            try:
                values: dict[str, Any] = {"name": name}
                if size:
                    values["max_size"] = int(size)
                if message:
                    values["max_message_bytes"] = int(message)
                spec = QueueSpec(**values)
            except (ValueError, ValidationError) as exc:
                raise click.BadParameter(str(exc), param_hint="--queue") from None
            if spec.name in queues:
                raise click.BadParameter(f"queue {spec.name!r} is declared twice", param_hint="--queue")
            queues[spec.name] = spec
    return tuple(queues.values())


def _pairs(specs: tuple[str, ...], flag: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {spec!r}", param_hint=flag)
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _aliases(specs: tuple[str, ...]) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for spec in specs:
        alias, sep, target = spec.partition("=")
        if not sep or not alias.strip() or not target.strip():
            raise click.BadParameter(f"expected ALIAS=MODEL, got {spec!r}", param_hint="--model-alias")
        aliases[alias.strip()] = target.strip()
    return aliases


def _fallbacks(specs: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    chains: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        model, sep, rest = spec.partition("=")
        chain = tuple(part.strip() for part in rest.split(",") if part.strip())
        if not sep or not model.strip() or not chain:
            raise click.BadParameter(
                f"expected MODEL=FALLBACK[,FALLBACK...], got {spec!r}", param_hint="--fallback"
            )
        chains[model.strip()] = chain
    return chains
