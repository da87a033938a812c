"""The cluster token against real processes: registration, heartbeats and
deregistration without it are refused and change nothing; a backend with the right
token registers, one with a wrong token never does; the proxy will not start
without a token unless told --insecure."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferno.orchestrators.processes import free_port
from tests.conftest import HOST, TEST_TOKEN, start_process_cluster, wait_http

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


def test_registration_without_the_token_is_refused_and_changes_nothing(spawn: Any) -> None:
    cluster = start_process_cluster(spawn, 1)  # the backend registered with the token
    url = f"{cluster.ops}/registration"
    before = cluster.workers()
    (address,) = [w["address"] for w in before.values()]
    intruder = {"address": f"{HOST}:{free_port()}", "node_id": "intruder"}
    heartbeat = {"address": address, "node_id": "b1", "state": "draining"}
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TEST_TOKEN}):
        r = httpx.post(url, json=intruder, headers=headers, timeout=5)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
        assert r.headers["www-authenticate"] == "Bearer"
        # a forged heartbeat for the real backend cannot drain it
        assert httpx.post(url, json=heartbeat, headers=headers, timeout=5).status_code == 401
        r = httpx.delete(url, params={"address": address}, headers=headers, timeout=5)
        assert r.status_code == 401
    after = cluster.workers()
    assert set(after) == set(before) and after["b1"]["status"] == "healthy"
    r = httpx.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1}, timeout=10)
    assert r.status_code == 200
    # With the token, the same calls work.
    assert httpx.post(url, json=intruder, headers=AUTH, timeout=5).status_code == 200
    assert httpx.delete(url, params={"node_id": "intruder"}, headers=AUTH, timeout=5).status_code == 200
    log = cluster.proxy.output()
    assert "Refused POST /registration from 127.0.0.1: no cluster token" in log
    # The next refusals in the same 10 s are not a line each (anyone can send them); the
    # counter has them all: 3 calls without a token, 6 with a wrong one.
    assert "Refused DELETE /registration" not in log
    metrics = httpx.get(f"{cluster.ops}/metrics", timeout=5).text
    assert 'inferno_cluster_token_refusals_total{endpoint="registration",reason="missing"} 3.0' in metrics
    assert 'inferno_cluster_token_refusals_total{endpoint="registration",reason="wrong"} 6.0' in metrics
    assert TEST_TOKEN not in log and "wrong-token" not in log


def test_a_backend_with_a_wrong_token_never_registers(spawn: Any) -> None:
    cluster = start_process_cluster(spawn, 1)
    data = f"{HOST}:{free_port()}"
    rogue = spawn(
        [
            "backend",
            "--engine",
            "fake",
            "--listen-addr",
            data,
            "--ops-addr",
            f"{HOST}:{free_port()}",
            "--discovery-lb",
            cluster.ops.removeprefix("http://"),
            "--node-id",
            "rogue",
        ],
        "rogue",
        env={"INFERNO_CLUSTER_TOKEN": "another-token-0123456789abcdef"},
    )
    wait_http(f"http://{data}/health")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "cluster token" not in rogue.output():
        time.sleep(0.1)
    assert "the proxy wants the cluster token" in rogue.output()
    assert "rogue" not in cluster.workers()


def test_the_proxy_needs_a_token_or_insecure(spawn: Any, tmp_path: Path) -> None:
    base = ["proxy", "--listen-addr", f"{HOST}:0", "--ops-addr", f"{HOST}:{free_port()}"]
    no_token = {"INFERNO_CLUSTER_TOKEN": ""}
    refused = spawn(base, "no-token", env=no_token)
    assert refused.popen.wait(timeout=30) == 2
    assert "no cluster token" in refused.output()
    short = tmp_path / "short"
    short.write_text("abc\n")
    bad = spawn([*base, "--cluster-token-file", str(short)], "short-token", env=no_token)
    assert bad.popen.wait(timeout=30) == 2 and "16-512 characters" in bad.output()
    ops = f"{HOST}:{free_port()}"
    insecure = spawn(
        ["proxy", "--listen-addr", f"{HOST}:0", "--ops-addr", ops, "--insecure"], "insecure", env=no_token
    )
    health = wait_http(f"http://{ops}/health", status=None).json()
    assert "insecure" in health["warning"]
    assert "No cluster token: anyone who reaches the ops port" in insecure.output()
    # A token file (a Docker secret, say) works like the variable.
    good = tmp_path / "token"
    good.write_text(TEST_TOKEN + "\n")
    ops = f"{HOST}:{free_port()}"
    spawn(
        ["proxy", "--listen-addr", f"{HOST}:0", "--ops-addr", ops, "--cluster-token-file", str(good)],
        "file",
        env=no_token,
    )
    wait_http(f"http://{ops}/livez")
    body = {"address": f"{HOST}:{free_port()}", "node_id": "x"}
    assert httpx.post(f"http://{ops}/registration", json=body, timeout=5).status_code == 401
    assert httpx.post(f"http://{ops}/registration", json=body, headers=AUTH, timeout=5).status_code == 200


def test_chaos_hooks_need_the_token_too(spawn: Any) -> None:
    cluster = start_process_cluster(spawn, 1, backend_args=("--chaos",))
    data = "http://" + cluster.workers()["b1"]["address"]
    r = httpx.post(f"{data}/simulate/error", json={"duration_s": 1}, timeout=5)
    assert r.status_code == 401
    r = httpx.post(f"{data}/simulate/error", json={"duration_s": 1}, headers=AUTH, timeout=5)
    assert r.status_code == 200, r.text
