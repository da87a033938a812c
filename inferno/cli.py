"""The ``inferno`` command: ``proxy``, ``backend`` and ``up``.

Every flag can be set from the environment as ``INFERNO_<COMMAND>_<FLAG>``
(click's ``auto_envvar_prefix``), e.g. ``INFERNO_PROXY_POLICY``. Two aliases
from existing deployment docs are honoured as well: ``INFERNO_LISTEN_ADDR`` for
the proxy's listen address and ``INFERNO_BACKEND_LISTEN_ADDR`` for the backend's.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, cast

import click
from pydantic import BaseModel, ValidationError

from inferno.config import (
    BACKEND_OPS_PORT,
    AdmissionConfig,
    BackendConfig,
    DeadlineConfig,
    FakeEngineConfig,
    HealthCheckConfig,
    HttpConfig,
    OutlierConfig,
    ProxyConfig,
    RegistryConfig,
    RetryConfig,
    UpstreamConfig,
    split_hostport,
)
from inferno.engines import available_engines
from inferno.errors import ConfigError, InfernoError
from inferno.observability.logging import setup_logging
from inferno.policies import available_policies

logger = logging.getLogger(__name__)

LOG_FORMATS = click.Choice(["text", "json"])


def _run(coro: Coroutine[Any, Any, None]) -> None:
    # Long-lived servers: move start-up objects out of the collector's sight and let
    # the young generation grow, so per-request garbage does not trigger full passes.
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    except ImportError:
        asyncio.run(coro)


def _build(factory: Any, **kwargs: Any) -> Any:
    try:
        return factory(**kwargs)
    except (ValidationError, ConfigError) as exc:
        raise click.UsageError(str(exc)) from exc


def _hostport(value: str, flag: str) -> tuple[str, int]:
    try:
        return split_hostport(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from exc


@click.group(context_settings={"auto_envvar_prefix": "INFERNO", "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="inferno-serve")
def main() -> None:
    """Inferno: a load-balancing proxy and inference backends for language models."""


def _logging_options(fn: Any) -> Any:
    fn = click.option(
        "--log-prompts", is_flag=True, help="Log full prompt text at DEBUG (off: lengths only)."
    )(fn)
    fn = click.option("--log-level", default="INFO", show_default=True)(fn)
    fn = click.option("--log-format", type=LOG_FORMATS, default="text", show_default=True)(fn)
    return fn


# Each proxy setting group becomes flags named --<section>-<field>, with the model's
# default and description, so the CLI, the env vars and the config never drift apart.
PROXY_SECTIONS: dict[str, type[BaseModel]] = {
    "health": HealthCheckConfig,
    "registry": RegistryConfig,
    "upstream": UpstreamConfig,
    "retry": RetryConfig,
    "deadline": DeadlineConfig,
    "outlier": OutlierConfig,
    "admission": AdmissionConfig,
    "http": HttpConfig,
}
BACKEND_SECTIONS: dict[str, type[BaseModel]] = {"http": HttpConfig}


def _section_options(sections: dict[str, type[BaseModel]]) -> Callable[[Any], Any]:
    def decorate(fn: Any) -> Any:
        for section, model in reversed(sections.items()):
            for name, field in reversed(model.model_fields.items()):
                fn = click.option(
                    f"--{section}-{name}".replace("_", "-"),
                    f"{section}_{name}",
                    type=type(field.default),
                    default=field.default,
                    show_default=True,
                    help=field.description,
                )(fn)
        return fn

    return decorate


def _sections(opts: dict[str, Any], sections: dict[str, type[BaseModel]]) -> dict[str, Any]:
    built = {}
    for section, model in sections.items():
        values = {name: opts.pop(f"{section}_{name}") for name in model.model_fields}
        built[section] = _build(model, **values)
    return built


@main.command()
@click.option(
    "--listen-addr",
    default="0.0.0.0:8080",
    show_default=True,
    envvar=["INFERNO_PROXY_LISTEN_ADDR", "INFERNO_LISTEN_ADDR"],
    help="Data port.",
)
@click.option(
    "--ops-addr",
    default="0.0.0.0:6100",
    show_default=True,
    help="Ops port: /health /livez /metrics /workers /registration /queue/status.",
)
@click.option("--backend-servers", default="", help="Static backends: host:port[=weight],...")
@click.option("--policy", type=click.Choice(available_policies()), default="round_robin", show_default=True)
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True)
@click.option("--max-tokens-limit", type=int, default=4096, show_default=True)
@click.option(
    "--grace-s",
    type=float,
    default=30.0,
    show_default=True,
    help="On SIGTERM, time to finish in-flight requests.",
)
@click.option("--seed", type=int, default=None, help="Seed for randomised policies.")
@_section_options(PROXY_SECTIONS)
@_logging_options
def proxy(**opts: Any) -> None:
    """Run the load-balancing proxy."""
    listen = _hostport(opts["listen_addr"], "--listen-addr")
    ops = _hostport(opts["ops_addr"], "--ops-addr")
    sections = _sections(opts, PROXY_SECTIONS)
    config: ProxyConfig = _build(
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
        seed=opts["seed"],
        **sections,
    )
    setup_logging(config.log_level, config.log_format)
    from inferno.proxy.server import run_proxy

    try:
        _run(run_proxy(config, grace_s=opts["grace_s"]))
    except (InfernoError, OSError) as exc:
        logger.error("Proxy failed to start: %s", exc)
        sys.exit(1)


@main.command()
@click.option("--listen-addr", default="0.0.0.0:3000", show_default=True, help="Data port.")
@click.option(
    "--ops-addr",
    default=f"0.0.0.0:{BACKEND_OPS_PORT}",
    show_default=True,
    help="Ops port (/health /livez /metrics); not the proxy's 6100, so both fit on one host.",
)
@click.option(
    "--discovery-lb",
    default=None,
    help="Proxy ops address to register with (host:port); without it the backend registers nowhere.",
)
@click.option(
    "--advertise-addr",
    default=None,
    help="Address the proxy should use (default: this host's reachable address).",
)
@click.option("--node-id", default=None, help="Stable name (default: hostname-port).")
@click.option(
    "--engine",
    type=click.Choice(available_engines()),
    default="smollm2",
    show_default=True,
    help="Model runtime; 'fake' is a deterministic TEST engine.",
)
@click.option("--model-path", default=None, help="Any GGUF file for the smollm2 engine.")
@click.option("--n-parallel", type=int, default=2, show_default=True, help="Concurrent generations.")
@click.option(
    "--n-ctx",
    type=int,
    default=4096,
    show_default=True,
    help="Context tokens, split across the parallel slots.",
)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--heartbeat-interval-s", type=float, default=2.0, show_default=True)
@click.option("--drain-grace-s", type=float, default=30.0, show_default=True)
@click.option("--max-tokens-limit", type=int, default=4096, show_default=True)
@click.option("--chaos", is_flag=True, help="Enable /simulate/* fault injection (tests only).")
@click.option("--fake-tokens-per-s", type=float, default=2000.0, show_default=True)
@click.option("--fake-latency-ms", type=float, default=0.0, show_default=True)
@_section_options(BACKEND_SECTIONS)
@_logging_options
def backend(**opts: Any) -> None:
    """Run an inference backend."""
    listen = _hostport(opts["listen_addr"], "--listen-addr")
    ops = _hostport(opts["ops_addr"], "--ops-addr")
    for flag in ("discovery_lb", "advertise_addr"):
        if opts[flag]:
            _hostport(opts[flag], "--" + flag.replace("_", "-"))
    if listen[1] and listen[1] == ops[1] and listen[0] == ops[0]:
        raise click.BadParameter("the data and ops ports must differ", param_hint="--ops-addr")
    sections = _sections(opts, BACKEND_SECTIONS)
    config: BackendConfig = _build(
        BackendConfig,
        listen_host=listen[0],
        listen_port=listen[1],
        ops_host=ops[0],
        ops_port=ops[1],
        discovery_lb=opts["discovery_lb"],
        advertise_addr=opts["advertise_addr"],
        node_id=opts["node_id"],
        engine=opts["engine"],
        model_path=opts["model_path"],
        n_parallel=opts["n_parallel"],
        n_ctx=opts["n_ctx"],
        n_threads=opts["threads"],
        heartbeat_interval_s=opts["heartbeat_interval_s"],
        drain_grace_s=opts["drain_grace_s"],
        max_tokens_limit=opts["max_tokens_limit"],
        chaos=opts["chaos"],
        fake=_build(
            FakeEngineConfig,
            tokens_per_s=opts["fake_tokens_per_s"],
            latency_ms=opts["fake_latency_ms"],
        ),
        log_format=opts["log_format"],
        log_level=opts["log_level"],
        log_prompts=opts["log_prompts"],
        **sections,
    )
    setup_logging(config.log_level, config.log_format)
    from inferno.backend.server import run_backend

    try:
        _run(run_backend(config))
    except (InfernoError, OSError) as exc:
        logger.error("Backend failed to start: %s", exc)
        sys.exit(1)


@main.command()
@click.option("--backends", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--engine", type=click.Choice(available_engines()), default="smollm2", show_default=True)
@click.option("--policy", type=click.Choice(available_policies()), default="round_robin", show_default=True)
@click.option("--free-ports", is_flag=True, help="Pick free ports instead of 8080/6100/300N/620N.")
@click.option("--ready-timeout-s", type=float, default=180.0, show_default=True)
@click.option("--log-format", type=LOG_FORMATS, default="text", show_default=True)
def up(**opts: Any) -> None:
    """Start a local cluster: one proxy and N backends on 127.0.0.1."""
    from inferno.cluster import make_plan, run_up

    plan = make_plan(
        opts["backends"],
        free_ports=opts["free_ports"],
        engine=opts["engine"],
        policy=opts["policy"],
        log_format=opts["log_format"],
    )
    sys.exit(run_up(plan, ready_timeout_s=opts["ready_timeout_s"]))


@main.command()
@click.argument("url")
@click.option(
    "--kind",
    type=click.Choice(["inference", "chat", "chat-stream", "batch"]),
    default="inference",
    show_default=True,
    help="Request kind.",
)
@click.option(
    "--mode",
    type=click.Choice(["closed", "open", "burst", "ramp"]),
    default=None,
    help="Load shape (default: open with --rate, burst with --burst-size, ramp with --ramp-to, else closed).",
)
@click.option("-c", "--concurrency", type=click.IntRange(1, 100_000), default=8, show_default=True)
@click.option("--rate", type=float, default=None, help="Open loop: target requests/s.")
@click.option("--arrival", type=click.Choice(["constant", "poisson"]), default="constant", show_default=True)
@click.option("--burst-size", type=click.IntRange(1), default=None)
@click.option(
    "--burst-interval",
    "burst_interval_s",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between bursts.",
)
@click.option("--ramp-to", type=click.IntRange(1), default=None, help="Ramp concurrency up to this.")
@click.option("--ramp-by", type=click.IntRange(1), default=1, show_default=True)
@click.option("--ramp-step", "ramp_step_s", type=float, default=1.0, show_default=True)
@click.option("-n", "--requests", type=click.IntRange(1), default=None, help="Stop after this many.")
@click.option("-d", "--duration", "duration_s", type=float, default=None, help="Stop after seconds.")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Spread the load over processes so the client is not the bottleneck.",
)
@click.option(
    "--prompts",
    "prompts_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help='JSONL file of {"prompt": ...} or {"messages": [...]} (default: built-in set).',
)
@click.option("--max-tokens", type=click.IntRange(1), default=32, show_default=True)
@click.option("--model", default=None)
@click.option("--timeout-s", type=float, default=120.0, show_default=True)
@click.option("--output", type=click.Choice(["text", "json", "html"]), default="text", show_default=True)
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the report here instead of stdout.",
)
@click.option(
    "--control-addr",
    default=None,
    help="host:port for GET /stats /nodes /fails, POST /reset /parallelism?value=N.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No live progress line.")
def bench(**opts: Any) -> None:
    """Load-test a proxy or backend at URL (e.g. http://127.0.0.1:8080)."""
    from inferno.bench import report as reports
    from inferno.bench.main import BenchConfig, parse_target, run_bench
    from inferno.bench.runner import LoadShape, Mode

    try:
        target = parse_target(opts["url"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from exc
    if opts["requests"] is None and opts["duration_s"] is None:
        raise click.UsageError("bound the run with --requests and/or --duration")
    mode = opts["mode"] or (
        "open" if opts["rate"] else "burst" if opts["burst_size"] else "ramp" if opts["ramp_to"] else "closed"
    )
    if mode == "open" and not opts["rate"]:
        raise click.UsageError("--mode open needs --rate")
    if opts["control_addr"]:
        _hostport(opts["control_addr"], "--control-addr")
    shape = LoadShape(
        mode=cast(Mode, mode),
        concurrency=opts["concurrency"],
        rate=opts["rate"] or 1.0,
        arrival=opts["arrival"],
        burst_size=opts["burst_size"] or 10,
        burst_interval_s=opts["burst_interval_s"],
        ramp_to=opts["ramp_to"] or opts["concurrency"],
        ramp_by=opts["ramp_by"],
        ramp_step_s=opts["ramp_step_s"],
        requests=opts["requests"],
        duration_s=opts["duration_s"],
        timeout_s=opts["timeout_s"],
    )
    config = BenchConfig(
        target=target,
        kind=opts["kind"],
        shape=shape,
        processes=opts["processes"],
        prompts_path=opts["prompts_path"],
        max_tokens=opts["max_tokens"],
        model=opts["model"],
        control_addr=opts["control_addr"],
        progress=not opts["quiet"],
        seed=opts["seed"],
    )
    result: dict[str, Any] = {}

    async def go() -> None:
        result["report"], result["samples"] = await run_bench(config)

    _run(go())
    report = result["report"]
    if opts["output"] == "json":
        out = reports.as_json(report)
    elif opts["output"] == "html":
        out = reports.html_page(report, result["samples"])
    else:
        out = reports.text(report)
    if opts["output_file"]:
        with open(opts["output_file"], "w", encoding="utf-8") as fh:
            fh.write(out)
        click.echo(reports.text(report), err=True)
    else:
        click.echo(out)
    sys.exit(0 if report["summary"]["succeeded"] else 1)


# Every option's help shows the environment variable that sets it.
for _command in main.commands.values():
    for _param in _command.params:
        if isinstance(_param, click.Option):
            _param.show_envvar = True


if __name__ == "__main__":
    main()
