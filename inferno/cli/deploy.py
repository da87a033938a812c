"""``inferno deploy``: serverless deployments through the proxy's admin API.

``create``, ``list``, ``get``, ``update``, ``delete`` and ``status`` are one call each;
``apply -f deployments.yaml`` makes the proxy match a file (see ``inferno.deployments.apply``). Every
call has a deadline, sends the admin token as ``Authorization: Bearer``, and a 4xx or
5xx answer exits non-zero with the server's own message.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from inferno.cli.common import hostport
from inferno.deployments.apply import done, execute, load_specs, normalize, parse_document, plan
from inferno.deployments.client import AdminClient, deployment_path
from inferno.errors import AdminError

ADMIN_TOKEN_ENV = "INFERNO_ADMIN_TOKEN"
DEFAULT_TOKEN_FILE = Path(".inferno") / "admin-token"


def admin_token(
    path: str | None, environ: Mapping[str, str], default_file: Path = DEFAULT_TOKEN_FILE
) -> str | None:
    """``--admin-token-file``, else ``INFERNO_ADMIN_TOKEN``, else ``.inferno/admin-token`` if it exists."""
    if path is not None:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {path}: {exc.strerror}", param_hint="--admin-token-file"
            ) from None
        if not token:
            raise click.BadParameter(f"{path} is empty", param_hint="--admin-token-file")
        return token
    token = environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        return token
    if default_file.is_file():
        return default_file.read_text(encoding="utf-8").strip() or None
    return None


def _client(ctx: click.Context) -> AdminClient:
    return ctx.ensure_object(dict)["client"]  # type: ignore[no-any-return]


def _read_document(path: str) -> object:
    """A YAML or JSON file, or stdin for ``-``."""
    try:
        with click.open_file(path, encoding="utf-8") as handle:
            return parse_document(handle.read(), path)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="-f") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-f") from None


def _json_option(value: str, flag: str) -> dict[str, Any]:
    try:
        body = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=flag) from None
    if not isinstance(body, dict):
        raise click.BadParameter("must be a JSON object", param_hint=flag)
    return body


def _ago(wall: object) -> str:
    if not isinstance(wall, (int, float)):
        return "-"
    return f"{max(0.0, time.time() - wall):.0f}s ago"


def _echo_json(body: object) -> None:
    click.echo(json.dumps(body, indent=2, sort_keys=True))


def _table(views: list[dict[str, Any]]) -> str:
    header = ("ID", "BACKEND", "STATE", "GEN", "DESIRED", "READY", "MIN-MAX", "LAST REQUEST")
    rows = [header]
    for view in views:
        spec = view.get("spec") or {}
        scaling = spec.get("auto_scaling_config") or {}
        instances = view.get("instances") or []
        ready = sum(1 for i in instances if isinstance(i, dict) and i.get("state") == "ready")
        rows.append(
            (
                str(view.get("id", "")),
                str(spec.get("backend", "")),
                str(view.get("state", "")),
                str(view.get("generation", "")),
                str(view.get("desired", "")),
                f"{ready}/{len(instances)}",
                f"{scaling.get('min_instances', '?')}-{scaling.get('max_instances', '?')}",
                _ago(view.get("last_request")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


class _AdminGroup(click.Group):
    """Translates the admin client's errors into a clean exit at one boundary."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdminError as exc:
            raise click.ClickException(exc.message) from None


@click.group(cls=_AdminGroup)
@click.option(
    "--proxy-ops",
    default="127.0.0.1:6100",
    show_default=True,
    envvar="INFERNO_DEPLOY_PROXY_OPS",
    help="The proxy's ops address (host:port), where the admin API is.",
)
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"File holding the admin token (else {ADMIN_TOKEN_ENV}, else {DEFAULT_TOKEN_FILE} if it exists).",
)
@click.option(
    "--timeout-s", type=click.FloatRange(0.1, 600), default=30.0, show_default=True, help="Per call."
)
@click.pass_context
def deploy(ctx: click.Context, proxy_ops: str, admin_token_file: str | None, timeout_s: float) -> None:
    """Manage serverless deployments (the proxy's /v1/deployments)."""
    hostport(proxy_ops, "--proxy-ops")
    token = admin_token(admin_token_file, os.environ)
    if token is None:
        click.echo(
            f"inferno deploy: no admin token: give --admin-token-file, set {ADMIN_TOKEN_ENV}, or run from "
            f"where {DEFAULT_TOKEN_FILE} is (inferno up writes it there); the proxy will refuse the call",
            err=True,
        )
    ctx.ensure_object(dict)["client"] = AdminClient(proxy_ops, token, timeout_s)


@deploy.command()
@click.option("-f", "--file", "path", default=None, help="A YAML or JSON file holding one spec ('-': stdin).")
@click.option("--json", "body", default=None, help="The spec as a JSON object.")
@click.pass_context
def create(ctx: click.Context, path: str | None, body: str | None) -> None:
    """Create a deployment; prints it."""
    if (path is None) == (body is None):
        raise click.UsageError("give the spec with either -f FILE or --json")
    spec = _read_document(path) if path is not None else _json_option(str(body), "--json")
    if isinstance(spec, dict) and set(spec) == {"deployments"}:
        raise click.BadParameter("this is a deployments file: use inferno deploy apply -f", param_hint="-f")
    if not isinstance(spec, dict):
        raise click.BadParameter("the file must hold one deployment spec (a mapping)", param_hint="-f")
    _echo_json(_client(ctx).call("POST", "/v1/deployments", spec))


@deploy.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the proxy's JSON instead of a table.")
@click.pass_context
def list_deployments(ctx: click.Context, as_json: bool) -> None:
    """List deployments."""
    views = _client(ctx).views()
    if as_json:
        _echo_json(views)
    else:
        click.echo(_table(views))


@deploy.command()
@click.argument("deployment_id")
@click.pass_context
def get(ctx: click.Context, deployment_id: str) -> None:
    """Show one deployment."""
    _echo_json(_client(ctx).call("GET", _path(deployment_id)))


@deploy.command()
@click.argument("deployment_id")
@click.option("--json", "patch", default=None, help="A JSON merge patch, e.g. '{\"backend_config\": {...}}'.")
@click.option(
    "--min", "min_instances", type=click.IntRange(0), default=None, help="auto_scaling_config.min_instances"
)
@click.option(
    "--max", "max_instances", type=click.IntRange(1), default=None, help="auto_scaling_config.max_instances"
)
@click.pass_context
def update(
    ctx: click.Context,
    deployment_id: str,
    patch: str | None,
    min_instances: int | None,
    max_instances: int | None,
) -> None:
    """Change a deployment (a JSON merge patch); prints it."""
    body = _json_option(patch, "--json") if patch is not None else {}
    scaling = {
        k: v for k, v in (("min_instances", min_instances), ("max_instances", max_instances)) if v is not None
    }
    if scaling:
        existing = body.get("auto_scaling_config")
        body["auto_scaling_config"] = {**(existing if isinstance(existing, dict) else {}), **scaling}
    if not body:
        raise click.UsageError("nothing to change: give --json PATCH, --min or --max")
    _echo_json(_client(ctx).call("PATCH", _path(deployment_id), body))


@deploy.command()
@click.argument("deployment_id")
@click.pass_context
def delete(ctx: click.Context, deployment_id: str) -> None:
    """Delete a deployment: its instances drain, then stop."""
    _echo_json(_client(ctx).call("DELETE", _path(deployment_id)))


@deploy.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """The proxy's /status (deployments and the orchestrator)."""
    _echo_json(_client(ctx).call("GET", "/status"))


@deploy.command()
@click.option("-f", "--file", "path", required=True, help="A YAML file with a top-level `deployments:` list.")
@click.option("--prune", is_flag=True, help="Delete the deployments the file does not name.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.pass_context
def apply(ctx: click.Context, path: str, prune: bool, dry_run: bool) -> None:
    """Make the proxy's deployments match a file: create missing, update changed (idempotent)."""
    try:
        specs = load_specs(_read_document(path))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-f") from None
    client = _client(ctx)
    try:
        actions = plan(client.views(), specs, normalize=normalize, prune=prune)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    blocked = False
    for action in actions:
        if dry_run or action.kind in ("unchanged", "blocked"):
            click.echo(
                ("would " if dry_run and action.kind not in ("unchanged", "blocked") else "")
                + action.describe()
            )
            blocked |= action.kind == "blocked"
            continue
        execute(client, action)
        click.echo(done(action))
    if blocked:
        raise click.ClickException("some deployments could not be applied (see above)")


_path = deployment_path
