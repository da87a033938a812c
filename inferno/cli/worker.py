"""``inferno worker``: lease jobs from the proxy's queues and run a workload for each.

    inferno worker --discovery-lb proxy:6100 --queue sim [--queue other ...] -- /path/to/workload [args]
    inferno worker --discovery-lb proxy:6100 --queue chat --engine fake

The workload comes after ``--`` (argv, never a shell); ``sleep`` and
``fake-device`` are built in. docs/queues.md#worker has the whole story.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from pydantic import BaseModel, SecretStr

from inferno.cli.backend import ENGINE_FIELDS
from inferno.cli.common import (
    LOG_FORMATS,
    build,
    build_sections,
    cluster_token,
    cluster_token_option,
    env_rules,
    hostport,
    model_options,
    section_options,
)
from inferno.cli.common import worker_token as common_worker_token
from inferno.config import RequestLimits
from inferno.engines import Engine, available_engines
from inferno.worker.config import WorkerConfig

logger = logging.getLogger(__name__)

WORKER_SECTIONS: dict[str, type[BaseModel]] = {"request": RequestLimits}
DEFAULT_BACKOFF_S = 0.5
DEFAULT_BACKOFF_MAX_S = 30.0


def text_engines() -> list[str]:
    return [name for name in available_engines() if Engine.lookup_task(name) == "text-generation"]


def worker_token(path: str | None, cluster_file: str | None) -> SecretStr | None:
    """The worker token (``--worker-token-file`` or ``INFERNO_WORKER_TOKEN``), else the cluster token."""
    return common_worker_token(path) or cluster_token(cluster_file)


@env_rules
@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--discovery-lb", required=True, help="The proxy's ops address (host:port): the worker routes.")
@click.option(
    "--queue",
    multiple=True,
    required=True,
    help="A queue to lease from (repeatable); the order rotates on each lease, so none starves.",
)
@click.option(
    "--glob",
    default=None,
    help="Files (devices, say) that replace the word FILENAME in the args: one per job, round-robin.",
)
@click.option(
    "--limit-s",
    type=float,
    default=0.0,
    show_default=True,
    help="The worker's time limit per job (0: none); the job's own limit applies too, the smaller wins.",
)
@click.option(
    "--kill-grace-s",
    type=float,
    default=2.0,
    show_default=True,
    help="After the limit, SIGTERM to the workload's process group, then SIGKILL after this.",
)
@click.option("--workdir", default=None, help="The workload's working directory (default: the worker's).")
@click.option("--discard-output", is_flag=True, help="Send the workload's output to /dev/null.")
@click.option(
    "--ignore-args",
    is_flag=True,
    help="Drop the jobs' args: the workload gets only the worker's (clusters not secured).",
)
@click.option(
    "--max-output-bytes",
    type=int,
    default=65536,
    show_default=True,
    help="Output (stdout and stderr) kept per job; the rest is read and dropped, marked truncated.",
)
@click.option(
    "--exit-when-empty",
    is_flag=True,
    help="Exit 0 once a lease finds the queues empty (batch runs); not with the backoff flags.",
)
@click.option(
    "--backoff-s",
    type=float,
    default=None,
    help=f"Least delay before retrying an unreachable proxy [default: {DEFAULT_BACKOFF_S}].",
)
@click.option(
    "--backoff-max-s",
    type=float,
    default=None,
    help=f"Most delay between retries; it doubles up to this, jittered [default: {DEFAULT_BACKOFF_MAX_S:g}].",
)
@click.option(
    "--poll-wait-s",
    type=float,
    default=20.0,
    show_default=True,
    help="How long one lease waits for a job (a long poll; the proxy may cap it).",
)
@click.option(
    "--request-timeout-s",
    type=float,
    default=10.0,
    show_default=True,
    help="Deadline of each heartbeat, completion and release (a lease: its wait plus 5s).",
)
@click.option("--concurrency", type=int, default=1, show_default=True, help="Jobs run at once.")
@click.option(
    "--node-name",
    envvar="INFERNO_NODE_NAME",
    default=None,
    help="The node reported with each job [default: the host name].",
)
@click.option(
    "--pod-name",
    envvar="INFERNO_POD_NAME",
    default=None,
    help="The pod reported with each job [default: hostname-pid].",
)
@click.option(
    "--device-name",
    envvar="INFERNO_DEVICE_NAME",
    default=None,
    help="The device reported with each job [default: the job's --glob match].",
)
@click.option(
    "--worker-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the worker token; without it INFERNO_WORKER_TOKEN, else the cluster token.",
)
@cluster_token_option
@click.option(
    "--engine",
    type=click.Choice(text_engines()),
    default=None,
    help="Engine mode: run each job's input (a chat completions body) on this engine "
    "('fake' is a TEST engine); no workload then.",
)
@model_options(ENGINE_FIELDS)
@click.option(
    "--max-tokens-limit",
    type=int,
    default=4096,
    show_default=True,
    help="Engine mode: a larger max_tokens fails the job.",
)
@section_options(WORKER_SECTIONS)
@click.option(
    "--health-addr",
    default=None,
    metavar="HOST:PORT",
    help="Serve GET /health here: 200 once the proxy has answered, else 503 (for orchestrators).",
)
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
@click.option(
    "--log-format",
    type=LOG_FORMATS,
    default="text",
    show_default=True,
    help="text, or json: one object per line.",
)
@click.argument("workload", nargs=-1, type=click.UNPROCESSED)
def worker(**opts: Any) -> None:
    """Lease jobs from queues at the proxy and run a workload (after --) for each."""
    sys.exit(_serve(worker_config(opts)))


def worker_config(opts: dict[str, Any]) -> WorkerConfig:
    """The ``WorkerConfig`` from the parsed flags (a usage error naming what is wrong)."""
    opts = dict(opts)
    hostport(opts["discovery_lb"], "--discovery-lb")
    if opts["health_addr"] is not None:
        hostport(opts["health_addr"], "--health-addr")
    explicit = [flag for flag in ("backoff_s", "backoff_max_s") if opts[flag] is not None]
    if opts["exit_when_empty"] and explicit:
        raise click.UsageError("--exit-when-empty cannot be combined with --backoff-s or --backoff-max-s")
    from inferno.worker.run import default_names

    node, pod = default_names()
    sections = build_sections(opts, WORKER_SECTIONS)
    engine = opts["engine"]
    own = set(Engine.options_models()[engine].model_fields) if engine else set()
    config: WorkerConfig = build(
        WorkerConfig,
        discovery_lb=opts["discovery_lb"],
        queues=tuple(opts["queue"]),
        workload=tuple(opts["workload"]),
        glob=opts["glob"],
        limit_s=opts["limit_s"],
        kill_grace_s=opts["kill_grace_s"],
        workdir=opts["workdir"],
        discard_output=opts["discard_output"],
        ignore_args=opts["ignore_args"],
        max_output_bytes=opts["max_output_bytes"],
        exit_when_empty=opts["exit_when_empty"],
        backoff_s=opts["backoff_s"] if opts["backoff_s"] is not None else DEFAULT_BACKOFF_S,
        backoff_max_s=opts["backoff_max_s"] if opts["backoff_max_s"] is not None else DEFAULT_BACKOFF_MAX_S,
        poll_wait_s=opts["poll_wait_s"],
        request_timeout_s=opts["request_timeout_s"],
        concurrency=opts["concurrency"],
        node_name=opts["node_name"] or node,
        pod_name=opts["pod_name"] or pod,
        device_name=opts["device_name"],
        token=worker_token(opts["worker_token_file"], opts["cluster_token_file"]),
        engine=engine,
        engine_options={name: opts[name] for name in sorted(own)},
        max_tokens_limit=opts["max_tokens_limit"],
        log_level=opts["log_level"],
        log_format=opts["log_format"],
        health_addr=opts["health_addr"],
        **sections,
    )
    return config


def _serve(config: WorkerConfig) -> int:
    from inferno.errors import InfernoError
    from inferno.http.loop import run_loop
    from inferno.observability.logging import setup_logging
    from inferno.worker.run import run_worker

    setup_logging(config.log_level, config.log_format)
    codes: list[int] = []

    async def main() -> None:
        codes.append(await run_worker(config))

    try:
        run_loop(main(), server=False)
    except (InfernoError, OSError) as exc:
        logger.error("Worker failed to start: %s", exc)
        return 1
    return codes[0] if codes else 1
