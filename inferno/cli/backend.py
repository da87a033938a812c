"""``inferno backend``: an inference backend.

The engine's flags come from every registered engine's options model (one flag per
field); the chosen engine receives the values of its own fields.
"""

from __future__ import annotations

import logging
from typing import Any

import click
from pydantic import BaseModel

from inferno.cli.common import (
    build,
    build_sections,
    cluster_token,
    cluster_token_option,
    env_rules,
    hostport,
    logging_options,
    model_options,
    section_options,
    serve,
)
from inferno.config import BACKEND_OPS_PORT, BackendConfig, HttpConfig, RequestLimits
from inferno.engines import Engine, available_engines

logger = logging.getLogger(__name__)


def engine_list(value: str) -> tuple[str, ...]:
    """``--engine a,b``: registered engine names, each at most once."""
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    known = available_engines()
    for name in names:
        if name not in known:
            raise click.BadParameter(f"unknown engine {name!r}; choose from {', '.join(known)}")
    if not names or len(set(names)) != len(names):
        raise click.BadParameter("name one or more engines, each once", param_hint="--engine")
    return names


BACKEND_SECTIONS: dict[str, type[BaseModel]] = {"http": HttpConfig, "request": RequestLimits}


def _engine_fields() -> dict[str, Any]:
    """Every engine option, by name; engines that share a name share the flag."""
    fields: dict[str, Any] = {}
    for model in Engine.options_models().values():
        for name, field in model.model_fields.items():
            fields.setdefault(name, field)
    return dict(sorted(fields.items()))


ENGINE_FIELDS = _engine_fields()
#: BackendConfig fields offered as flags as they are, generated from the config
TUNABLES = (
    "heartbeat_interval_s",
    "register_timeout_s",
    "drain_grace_s",
    "max_body_bytes",
    "max_tokens_limit",
)


@env_rules
@click.command()
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
    "--model-id",
    default=None,
    help="Register and answer as this model id, whatever the engine's model is called (one engine only).",
)
@click.option(
    "--engine",
    default="llamacpp",
    show_default=True,
    callback=lambda ctx, param, value: engine_list(value),
    help=(
        "Model runtimes, comma-separated, one model each: "
        + ", ".join(available_engines())
        + " ('smollm2': the llamacpp engine's old name; 'fake' is a TEST engine)."
    ),
)
@model_options(ENGINE_FIELDS)
@model_options({name: BackendConfig.model_fields[name] for name in TUNABLES})
@click.option("--chaos", is_flag=True, help="Enable /simulate/* fault injection (tests only).")
@section_options(BACKEND_SECTIONS)
@cluster_token_option
@logging_options
def backend(**opts: Any) -> None:
    """Run an inference backend."""
    listen = hostport(opts["listen_addr"], "--listen-addr")
    ops = hostport(opts["ops_addr"], "--ops-addr")
    for flag in ("discovery_lb", "advertise_addr"):
        if opts[flag]:
            hostport(opts[flag], "--" + flag.replace("_", "-"))
    if listen[1] and listen[1] == ops[1] and listen[0] == ops[0]:
        raise click.BadParameter("the data and ops ports must differ", param_hint="--ops-addr")
    sections = build_sections(opts, BACKEND_SECTIONS)
    models = Engine.options_models()
    own = {name for engine in opts["engine"] for name in models[engine].model_fields}
    config: BackendConfig = build(
        BackendConfig,
        listen_host=listen[0],
        listen_port=listen[1],
        ops_host=ops[0],
        ops_port=ops[1],
        discovery_lb=opts["discovery_lb"],
        advertise_addr=opts["advertise_addr"],
        node_id=opts["node_id"],
        model_id=opts["model_id"],
        engine=opts["engine"],
        engine_options={name: opts[name] for name in sorted(own)},
        chaos=opts["chaos"],
        cluster_token=cluster_token(opts["cluster_token_file"]),
        **{name: opts[name] for name in TUNABLES},
        log_format=opts["log_format"],
        log_level=opts["log_level"],
        log_prompts=opts["log_prompts"],
        otlp_endpoint=opts["otlp_endpoint"],
        **sections,
    )
    from inferno.backend.server import run_backend

    serve(lambda: run_backend(config), config.log_level, config.log_format, "Backend")
