"""``inferno deploy`` over real sockets, against a real proxy process
(``inferno proxy --orchestrator external``: nothing runs the instances, which this
test does not need; the CLI and the admin API are what is tested)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from inferno.cli import main
from inferno.orchestrators.processes import free_port
from tests.conftest import HOST, Proc, wait_http

TOKEN = "admin-token-for-tests-0123456789"


@pytest.fixture
def api(spawn: Callable[..., Proc], tmp_path: Path) -> Iterator[str]:
    ops = free_port()
    (tmp_path / "proxy-token").write_text(TOKEN)
    spawn(
        [
            "proxy",
            "--listen-addr",
            f"{HOST}:{free_port()}",
            "--ops-addr",
            f"{HOST}:{ops}",
            "--orchestrator",
            "external",
            "--admin-token-file",
            str(tmp_path / "proxy-token"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        "proxy",
    )
    wait_http(f"http://{HOST}:{ops}/livez")
    yield f"{HOST}:{ops}"


def views(addr: str) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"http://{addr}/v1/deployments", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    return {v["id"]: v for v in body["data"]}


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


def test_apply_creates_then_is_idempotent_then_updates_and_prunes(api: str, tmp_path: Path) -> None:
    addr = api
    path = write(tmp_path, FILE)
    first = run(addr, tmp_path, "apply", "-f", path)
    assert first.exit_code == 0, first.output
    assert first.output.splitlines() == ["created chat", "created other"]
    again = run(addr, tmp_path, "apply", "-f", path)
    assert again.output.splitlines() == ["unchanged chat", "unchanged other"]
    assert {ident: v["updated"] for ident, v in views(addr).items()} == {
        ident: v["created"] for ident, v in views(addr).items()
    }  # the second apply changed nothing
    changed = write(
        tmp_path, FILE.replace("max_instances: 2", "max_instances: 3").split("  - model: other")[0]
    )
    dry = run(addr, tmp_path, "apply", "-f", changed, "--prune", "--dry-run")
    assert dry.output.splitlines() == [
        "would update chat: auto_scaling_config.max_instances",
        "would delete other",
    ]
    assert views(addr)["chat"]["spec"]["auto_scaling_config"]["max_instances"] == 2
    done = run(addr, tmp_path, "apply", "-f", changed, "--prune")
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == ["updated chat: auto_scaling_config.max_instances", "deleted other"]
    assert views(addr)["other"]["state"] == "deleting"  # drains, then is forgotten
    assert views(addr)["chat"]["spec"]["auto_scaling_config"]["max_instances"] == 3
    listed = run(addr, tmp_path, "list")
    assert listed.output.splitlines()[0].split()[:3] == ["ID", "BACKEND", "STATE"]
    assert listed.output.splitlines()[1].split()[:3] == ["chat", "fake", "active"]


def test_each_command_makes_its_call_and_server_errors_exit_non_zero(api: str, tmp_path: Path) -> None:
    addr = api
    spec = json.dumps({"model": "m", "backend": "fake"})
    created = run(addr, tmp_path, "create", "--json", spec)
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["spec"]["auto_scaling_config"]["max_instances"] == 1
    duplicate = run(addr, tmp_path, "create", "--json", spec)
    assert duplicate.exit_code == 1 and "409 the deployment 'm' exists" in duplicate.output
    bad = run(addr, tmp_path, "create", "--json", json.dumps({"model": "n", "backend": "fake", "x": 1}))
    assert bad.exit_code == 1 and "400 x: unknown key" in bad.output
    updated = run(addr, tmp_path, "update", "m", "--min", "1", "--max", "3")
    assert updated.exit_code == 0, updated.output
    scaling = json.loads(updated.output)["spec"]["auto_scaling_config"]
    assert (scaling["min_instances"], scaling["max_instances"]) == (1, 3)
    patched = run(addr, tmp_path, "update", "m", "--json", json.dumps({"backend_config": {"n_parallel": 3}}))
    assert json.loads(patched.output)["generation"] == 2  # an engine option change rolls
    assert json.loads(run(addr, tmp_path, "get", "m").output)["generation"] == 2
    status = json.loads(run(addr, tmp_path, "status").output)
    assert status["deployments"]["m"]["desired"] == 1  # min_instances 1
    assert status["orchestrator"]["connected"] is False  # no controller reports here
    deleted = run(addr, tmp_path, "delete", "m")
    assert json.loads(deleted.output)["state"] == "deleting"
    missing = run(addr, tmp_path, "get", "nope")
    assert missing.exit_code == 1 and "404 no deployment 'nope'" in missing.output
    refused = run(addr, tmp_path, "list", token="wrong-token-0123456789")
    assert refused.exit_code == 1 and "401 this needs the admin token" in refused.output


def test_an_unreachable_proxy_or_a_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    down = run(addr, tmp_path, "list")
    assert down.exit_code == 1 and "cannot reach the proxy" in down.output
    bad = run(addr, tmp_path, "apply", "-f", write(tmp_path, "deployments: {model: a}"))
    assert bad.exit_code == 2 and "must be a list" in bad.output
