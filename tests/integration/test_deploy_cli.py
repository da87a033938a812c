"""``inferno deploy`` over real sockets, against a small stand-in of the proxy's admin API
(the contract: POST/GET/PATCH/DELETE /v1/deployments, GET /status, bearer token).
The end-to-end test against the real proxy lives with the proxy's admin API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from inferno.cli import main
from inferno.deployments.spec import merged, parse_spec
from inferno.errors import BadRequest

TOKEN = "admin-token-for-tests-0123456789"


class AdminApi(BaseHTTPRequestHandler):
    """In-memory deployments, validated as the proxy validates them."""

    views: dict[str, dict[str, Any]]
    calls: list[tuple[str, str]]

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

    def _body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"null")

    def _handle(self) -> None:
        self.calls.append((self.command, self.path))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._error(401, "this needs the admin token")
            return
        parts = self.path.strip("/").split("/")
        try:
            if self.path == "/status":
                self._send(200, {"deployments": len(self.views)})
            elif parts == ["v1", "deployments"] and self.command == "GET":
                self._send(200, {"object": "list", "data": list(self.views.values())})
            elif parts == ["v1", "deployments"] and self.command == "POST":
                spec = parse_spec(self._body(), model_dir=None)
                if spec.model in self.views:
                    self._error(409, f"deployment {spec.model!r} exists")
                    return
                self.views[spec.model] = self._view(spec.with_defaults(), 1)
                self._send(201, self.views[spec.model])
            elif len(parts) == 3 and parts[:2] == ["v1", "deployments"]:
                self._one(parts[2])
            else:
                self._error(404, "no such route")
        except BadRequest as exc:
            self._error(400, exc.message)

    def _one(self, name: str) -> None:
        view = self.views.get(name)
        if view is None:
            self._error(404, f"no deployment {name!r}")
        elif self.command == "GET":
            self._send(200, view)
        elif self.command == "PATCH":
            from inferno.deployments.spec import DeploymentSpec

            spec = merged(DeploymentSpec.model_validate(view["spec"]), self._body(), model_dir=None)
            self.views[name] = self._view(spec.with_defaults(), view["generation"] + 1)
            self._send(200, self.views[name])
        elif self.command == "DELETE":
            del self.views[name]
            self._send(202, {**view, "state": "deleting"})

    @staticmethod
    def _view(spec: dict[str, Any], generation: int) -> dict[str, Any]:
        return {
            "id": spec["model"],
            "spec": spec,
            "generation": generation,
            "desired": 0,
            "state": "active",
            "instances": [],
            "last_request": None,
            "created": 0,
            "updated": 0,
        }

    do_GET = do_POST = do_PATCH = do_DELETE = _handle


@pytest.fixture
def api() -> Iterator[tuple[str, type[AdminApi]]]:
    handler = type("Handler", (AdminApi,), {"views": {}, "calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run(addr: str, tmp_path: Path, *args: str, token: str = TOKEN) -> Any:
    token_file = tmp_path / "admin-token"
    token_file.write_text(token)
    result = CliRunner().invoke(
        main,
        ["deploy", "--proxy-ops", addr, "--admin-token-file", str(token_file), "--timeout-s", "5", *args],
    )
    return result


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "deployments.yaml"
    path.write_text(text)
    return str(path)


FILE = """
deployments:
  - model: chat
    backend: fake
    backend_config: {fake_tokens_per_s: 100}
    auto_scaling_config: {max_instances: 2}
  - model: other
    backend: fake
"""


def test_apply_creates_then_is_idempotent_then_updates_and_prunes(
    api: tuple[str, type[AdminApi]], tmp_path: Path
) -> None:
    addr, handler = api
    path = write(tmp_path, FILE)
    first = run(addr, tmp_path, "apply", "-f", path)
    assert first.exit_code == 0, first.output
    assert first.output.splitlines() == ["created chat", "created other"]
    again = run(addr, tmp_path, "apply", "-f", path)
    assert again.output.splitlines() == ["unchanged chat", "unchanged other"]
    assert [c for c in handler.calls if c[0] != "GET"] == [
        ("POST", "/v1/deployments"),
        ("POST", "/v1/deployments"),
    ]
    changed = write(
        tmp_path, FILE.replace("max_instances: 2", "max_instances: 3").split("  - model: other")[0]
    )
    dry = run(addr, tmp_path, "apply", "-f", changed, "--prune", "--dry-run")
    assert dry.output.splitlines() == [
        "would update chat: auto_scaling_config.max_instances",
        "would delete other",
    ]
    assert handler.views["chat"]["spec"]["auto_scaling_config"]["max_instances"] == 2
    done = run(addr, tmp_path, "apply", "-f", changed, "--prune")
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == ["updated chat: auto_scaling_config.max_instances", "deleted other"]
    assert set(handler.views) == {"chat"}
    assert handler.views["chat"]["spec"]["auto_scaling_config"]["max_instances"] == 3
    listed = run(addr, tmp_path, "list")
    assert listed.output.splitlines()[0].split()[:3] == ["ID", "BACKEND", "STATE"]
    assert listed.output.splitlines()[1].split()[:3] == ["chat", "fake", "active"]


def test_each_command_makes_its_call_and_server_errors_exit_non_zero(
    api: tuple[str, type[AdminApi]], tmp_path: Path
) -> None:
    addr, _ = api
    spec = json.dumps({"model": "m", "backend": "fake"})
    created = run(addr, tmp_path, "create", "--json", spec)
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["spec"]["auto_scaling_config"]["max_instances"] == 1
    duplicate = run(addr, tmp_path, "create", "--json", spec)
    assert duplicate.exit_code == 1 and "409 deployment 'm' exists" in duplicate.output
    bad = run(addr, tmp_path, "create", "--json", json.dumps({"model": "n", "backend": "fake", "x": 1}))
    assert bad.exit_code == 1 and "400 x: unknown key" in bad.output
    updated = run(addr, tmp_path, "update", "m", "--min", "1", "--max", "3")
    assert updated.exit_code == 0, updated.output
    scaling = json.loads(updated.output)["spec"]["auto_scaling_config"]
    assert (scaling["min_instances"], scaling["max_instances"]) == (1, 3)
    assert json.loads(run(addr, tmp_path, "get", "m").output)["generation"] == 2
    assert json.loads(run(addr, tmp_path, "status").output) == {"deployments": 1}
    deleted = run(addr, tmp_path, "delete", "m")
    assert json.loads(deleted.output)["state"] == "deleting"
    missing = run(addr, tmp_path, "get", "m")
    assert missing.exit_code == 1 and "404 no deployment 'm'" in missing.output
    refused = run(addr, tmp_path, "list", token="wrong")
    assert refused.exit_code == 1 and "401 this needs the admin token" in refused.output


def test_an_unreachable_proxy_or_a_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    from inferno.launcher import free_port

    addr = f"127.0.0.1:{free_port()}"
    down = run(addr, tmp_path, "list")
    assert down.exit_code == 1 and "cannot reach the proxy" in down.output
    bad = run(addr, tmp_path, "apply", "-f", write(tmp_path, "deployments: {model: a}"))
    assert bad.exit_code == 2 and "must be a list" in bad.output
