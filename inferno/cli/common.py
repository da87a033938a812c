"""What the commands share: the event-loop runner, option groups and error translation."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click
from pydantic import BaseModel, SecretStr, ValidationError

from inferno.config import split_hostport
from inferno.errors import ConfigError, InfernoError
from inferno.http.loop import run_loop
from inferno.observability.logging import setup_logging

__all__ = [
    "LOG_FORMATS",
    "build",
    "build_sections",
    "env_rules",
    "hostport",
    "logging_options",
    "model_options",
    "run_loop",
    "section_options",
    "serve",
]

logger = logging.getLogger(__name__)

LOG_FORMATS = click.Choice(["text", "json"])


def env_rules(command: click.Command) -> click.Command:
    """Apply the environment-variable rule to a command's options (a decorator).

    Every option's help shows the environment variable that sets it, and an option
    with aliases (INFERNO_LISTEN_ADDR, OTEL_EXPORTER_OTLP_ENDPOINT) still answers to
    the rule's name, ``INFERNO_<COMMAND>_<FLAG>``, first. Done where the command is
    defined, so it holds however the command is reached (``inferno.cli`` loads each
    subcommand's module only when that subcommand runs).
    """
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        param.show_envvar = True
        if param.envvar:
            flag = next(o for o in param.opts if o.startswith("--"))
            rule = f"INFERNO_{command.name}_{flag[2:]}".upper().replace("-", "_")
            aliases = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
            param.envvar = [rule, *(a for a in aliases if a != rule)]
    return command


def serve(run: Callable[[], Coroutine[Any, Any, None]], log_level: str, log_format: str, what: str) -> None:
    """Configure logging, run a server to its end; a failure to start exits 1 with the reason."""
    setup_logging(log_level, log_format)
    try:
        run_loop(run())
    except (InfernoError, OSError) as exc:
        logger.error("%s failed to start: %s", what, exc)
        sys.exit(1)


def build(factory: Any, **kwargs: Any) -> Any:
    """A config object, or a usage error naming the bad value."""
    try:
        return factory(**kwargs)
    except (ValidationError, ConfigError) as exc:
        raise click.UsageError(str(exc)) from exc


def hostport(value: str, flag: str) -> tuple[str, int]:
    try:
        return split_hostport(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from exc


def cluster_token_option(fn: Any) -> Any:
    return click.option(
        "--cluster-token-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="File holding the cluster token (e.g. a Docker secret); without it the token comes "
        "from INFERNO_CLUSTER_TOKEN.",
    )(fn)


def _token(path: str | None, env: str, what: str, flag: str) -> SecretStr | None:
    """A token from its file (``flag``) or the environment variable ``env``; a bad one is
    a usage error naming the flag."""
    from inferno.errors import ConfigError
    from inferno.security import read_token

    try:
        token = read_token(path, env=env, what=what)
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint=flag) from None
    return SecretStr(token) if token else None


def cluster_token(path: str | None) -> SecretStr | None:
    """The cluster token from ``--cluster-token-file`` or ``INFERNO_CLUSTER_TOKEN``."""
    from inferno.security import TOKEN_ENV

    return _token(path, TOKEN_ENV, "cluster token", "--cluster-token-file")


def admin_token(path: str | None) -> SecretStr | None:
    """The admin token from ``--admin-token-file`` or ``INFERNO_ADMIN_TOKEN``."""
    from inferno.security import ADMIN_TOKEN_ENV

    return _token(path, ADMIN_TOKEN_ENV, "admin token", "--admin-token-file")


def worker_token(path: str | None) -> SecretStr | None:
    """The worker token from ``--worker-token-file`` or ``INFERNO_WORKER_TOKEN``."""
    from inferno.security import WORKER_TOKEN_ENV

    return _token(path, WORKER_TOKEN_ENV, "worker token", "--worker-token-file")


def logging_options(fn: Any) -> Any:
    fn = click.option(
        "--otlp-endpoint",
        default=None,
        envvar=["INFERNO_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"],
        help="Send OpenTelemetry traces over OTLP/HTTP to this URL (e.g. http://collector:4318); "
        "off by default.",
    )(fn)
    fn = click.option(
        "--log-prompts", is_flag=True, help="Log full prompt text at DEBUG (off: lengths only)."
    )(fn)
    fn = click.option(
        "--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR."
    )(fn)
    fn = click.option(
        "--log-format",
        type=LOG_FORMATS,
        default="text",
        show_default=True,
        help="text, or json: one object per line, request lines with their facts as keys.",
    )(fn)
    return fn


def model_options(fields: dict[str, Any], prefix: str = "") -> Callable[[Any], Any]:
    """One flag per pydantic field, with its default and description, so the CLI,
    the environment variables and the config never drift apart."""

    def decorate(fn: Any) -> Any:
        for name, field in reversed(fields.items()):
            default = field.default
            fn = click.option(
                f"--{prefix}{name}".replace("_", "-"),
                f"{prefix}{name}".replace("-", "_"),
                type=str if default is None else type(default),
                default=default,
                show_default=default is not None,
                help=field.description,
            )(fn)
        return fn

    return decorate


def section_options(sections: dict[str, type[BaseModel]]) -> Callable[[Any], Any]:
    """Flags named ``--<section>-<field>`` for each config section."""

    def decorate(fn: Any) -> Any:
        for section, model in reversed(sections.items()):
            fn = model_options(dict(model.model_fields), prefix=f"{section}-")(fn)
        return fn

    return decorate


def build_sections(opts: dict[str, Any], sections: dict[str, type[BaseModel]]) -> dict[str, Any]:
    built = {}
    for section, model in sections.items():
        values = {name: opts.pop(f"{section}_{name}") for name in model.model_fields}
        built[section] = build(model, **values)
    return built
