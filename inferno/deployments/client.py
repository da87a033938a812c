"""A small client of the proxy's admin API (what ``inferno deploy`` and ``inferno up`` use).

Synchronous (``urllib``), one deadline per call; a 4xx/5xx answer raises
``AdminError`` with the server's own message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from inferno.errors import AdminError


class AdminClient:
    def __init__(self, ops: str, token: str | None, *, timeout_s: float = 10.0) -> None:
        self.base = ops if ops.startswith("http") else f"http://{ops}"
        self._token = token
        self._timeout_s = timeout_s

    def call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace")[:500] or exc.reason
            raise AdminError(f"{method} {path}: {exc.code} {message}", status=exc.code) from None
        except (OSError, urllib.error.URLError) as exc:
            raise AdminError(
                f"{method} {path}: cannot reach the proxy's ops port at {self.base}: {exc}"
            ) from None
        return json.loads(raw) if raw else None

    def list(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.call("GET", "/v1/deployments")["data"]
        return data


def plan_apply(
    current: list[dict[str, Any]], wanted: list[dict[str, Any]], *, prune: bool
) -> list[tuple[str, str, dict[str, Any] | None]]:
    """The calls that make ``current`` (GET views) match ``wanted`` (specs from a file):
    ("create", id, spec), ("update", id, spec) or ("delete", id, None). A spec equal to
    the current one once defaults are filled in needs nothing. Deployments being
    deleted are recreated once gone; a later apply does it."""
    from inferno.deployments.spec import DeploymentSpec

    have = {view["id"]: view for view in current}
    actions: list[tuple[str, str, dict[str, Any] | None]] = []
    names = set()
    for spec in wanted:
        full = DeploymentSpec.model_validate(spec).model_dump(mode="json")
        ident = full["model"]
        if ident in names:
            raise ValueError(f"the file names the deployment {ident!r} twice")
        names.add(ident)
        view = have.get(ident)
        if view is None:
            actions.append(("create", ident, spec))
        elif view["spec"] != full:
            # a merge patch keeps what it does not name: options the file dropped are nulled
            dropped = set(view["spec"].get("backend_config", {})) - set(full["backend_config"])
            patch = {**full, "backend_config": {**full["backend_config"], **dict.fromkeys(dropped)}}
            actions.append(("update", ident, patch))
    if prune:
        actions += [
            ("delete", ident, None)
            for ident, view in have.items()
            if ident not in names and view["state"] != "deleting"
        ]
    return actions


def read_file(path: Path) -> list[dict[str, Any]]:
    """The ``deployments:`` list of a YAML (or JSON) file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    items = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"{path}: expected a top-level 'deployments:' list of deployment specs")
    return items


def apply(client: AdminClient, wanted: list[dict[str, Any]], *, prune: bool = False) -> list[str]:
    """Apply ``wanted``; returns one line per change made."""
    done = []
    for action, ident, spec in plan_apply(client.list(), wanted, prune=prune):
        if action == "create":
            client.call("POST", "/v1/deployments", spec)
        elif action == "update":
            client.call("PATCH", f"/v1/deployments/{ident}", spec)
        else:
            client.call("DELETE", f"/v1/deployments/{ident}")
        done.append(f"{action}d {ident}")
    return done
