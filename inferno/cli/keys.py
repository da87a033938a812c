"""``inferno keys create|list|revoke``: API keys in the proxy's state database.

The proxy picks changes up within a second, without a restart. A key is printed
once, at creation; only its hash is stored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MODEL = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def _store(state_dir: str) -> Any:
    from inferno.errors import ConfigError
    from inferno.security import KeyStore, connect

    try:
        return KeyStore(connect(Path(state_dir)))
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None


state_dir_option = click.option(
    "--state-dir",
    default=".inferno",
    show_default=True,
    help="The proxy's state directory (the same as its --state-dir).",
)


@click.group()
def keys() -> None:
    """Manage API keys (the proxy's --require-api-key)."""


@keys.command()
@click.option("--name", required=True, help="A label for the key: 1-64 characters of [A-Za-z0-9_.@-].")
@click.option("--rpm", type=click.IntRange(1), default=None, help="Requests per minute (default: unlimited).")
@click.option("--tpm", type=click.IntRange(1), default=None, help="Tokens per minute (default: unlimited).")
@click.option("--models", default="", help="Comma-separated models this key may use (default: any).")
@state_dir_option
def create(name: str, rpm: int | None, tpm: int | None, models: str, state_dir: str) -> None:
    """Create a key and print it (once)."""
    if not NAME.fullmatch(name):
        raise click.BadParameter("1-64 characters of [A-Za-z0-9_.@-]", param_hint="--name")
    allowed = tuple(m.strip() for m in models.split(",") if m.strip())
    if any(not MODEL.fullmatch(m) for m in allowed):
        raise click.BadParameter("model ids are 1-128 characters of [A-Za-z0-9_.:@-]", param_hint="--models")
    key, record = _store(state_dir).create(name, rpm=rpm, tpm=tpm, models=allowed)
    click.echo(key)
    click.echo(f"created key {record.id} ({name}); it is shown only now", err=True)


@keys.command(name="list")
@state_dir_option
def list_keys(state_dir: str) -> None:
    """List keys (never the keys themselves), as JSON lines."""
    for record in _store(state_dir).all():
        click.echo(json.dumps(record.public()))


@keys.command()
@click.argument("key")
@state_dir_option
def revoke(key: str, state_dir: str) -> None:
    """Revoke a key by its id or name."""
    if _store(state_dir).revoke(key) == 0:
        raise click.ClickException("no active key with that id or name")
    click.echo("revoked", err=True)
