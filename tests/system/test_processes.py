"""Real processes: `inferno proxy`, `inferno backend` and `inferno up`, killed for real."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import HOST, free_port, wait_http

pytestmark = pytest.mark.slow


def _workers(ops: str) -> dict[str, dict[str, Any]]:
    return {w["node_id"]: w for w in httpx.get(f"{ops}/workers", timeout=2).json()["workers"]}


def test_sigkilled_backend_is_dropped_at_once(spawn: Any) -> None:
    port, ops_port = free_port(), free_port()
    ops = f"http://{HOST}:{ops_port}"
    # The proxy's listen address comes from the documented alias INFERNO_LISTEN_ADDR.
    spawn(
        ["proxy", "--ops-addr", f"{HOST}:{ops_port}", "--health-interval-s", "1.0"],
        "proxy",
        env={"INFERNO_LISTEN_ADDR": f"{HOST}:{port}"},
    )
    wait_http(f"{ops}/livez")
    backends = {}
    for i in (1, 2):
        data = free_port()
        backends[f"b{i}"] = spawn(
            [
                "backend",
                "--ops-addr",
                f"{HOST}:{free_port()}",
                "--engine",
                "fake",
                "--discovery-lb",
                f"{HOST}:{ops_port}",
                "--node-id",
                f"b{i}",
                "--advertise-addr",
                f"{HOST}:{data}",
            ],
            f"b{i}",
            env={"INFERNO_BACKEND_LISTEN_ADDR": f"{HOST}:{data}"},
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(_workers(ops)) < 2:
        time.sleep(0.1)
    assert {w["status"] for w in _workers(ops).values()} == {"healthy"}

    victim = backends["b1"]
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait(timeout=5)
    killed_at = time.monotonic()
    while _workers(ops)["b1"]["status"] != "unhealthy":
        assert time.monotonic() - killed_at < 1.0 + 0.5, "not marked unhealthy within the interval"
        time.sleep(0.05)
    detected_s = time.monotonic() - killed_at
    url = f"http://{HOST}:{port}/inference"
    with httpx.Client(timeout=5) as http:
        answers = [http.post(url, json={"prompt": "x", "max_tokens": 1}) for _ in range(10)]
    assert [r.status_code for r in answers] == [200] * 10
    assert {r.headers["x-inferno-backend"] for r in answers} == {"b2"}
    print(f"backend marked unhealthy {detected_s:.2f}s after SIGKILL")


def test_sigkill_under_traffic_is_seen_on_first_refusal(spawn: Any) -> None:
    port, ops_port = free_port(), free_port()
    ops = f"http://{HOST}:{ops_port}"
    # Probes every 60 s: only the first refused connection can take it out of routing.
    spawn(
        [
            "proxy",
            "--listen-addr",
            f"{HOST}:{port}",
            "--ops-addr",
            f"{HOST}:{ops_port}",
            "--health-interval-s",
            "60",
        ],
        "proxy",
    )
    wait_http(f"{ops}/livez")
    procs = []
    for i in (1, 2):
        data = free_port()
        procs.append(
            spawn(
                [
                    "backend",
                    "--listen-addr",
                    f"{HOST}:{data}",
                    "--ops-addr",
                    f"{HOST}:{free_port()}",
                    "--engine",
                    "fake",
                    "--discovery-lb",
                    f"{HOST}:{ops_port}",
                    "--node-id",
                    f"b{i}",
                ],
                f"b{i}",
            )
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(_workers(ops)) < 2:
        time.sleep(0.1)
    url = f"http://{HOST}:{port}/inference"
    with httpx.Client(timeout=5) as http:
        assert http.post(url, json={"prompt": "x"}).status_code == 200
        procs[0].popen.send_signal(signal.SIGKILL)
        procs[0].popen.wait(timeout=5)
        codes = [http.post(url, json={"prompt": "x", "max_tokens": 1}).status_code for _ in range(6)]
    assert codes == [200] * 6
    assert _workers(ops)["b1"]["status"] == "unhealthy"
    assert _workers(ops)["b1"]["status_reason"] == "connection_refused"


def test_missing_model_file_fails_fast_with_a_clear_message(spawn: Any) -> None:
    proc = spawn(
        [
            "backend",
            "--listen-addr",
            f"{HOST}:{free_port()}",
            "--ops-addr",
            f"{HOST}:{free_port()}",
            "--model-path",
            "/nonexistent/model.gguf",
        ],
        "missing",
    )
    assert proc.popen.wait(timeout=30) == 1
    assert "model file not found: /nonexistent/model.gguf" in proc.output()


def test_up_stops_every_child_on_sigterm(spawn: Any) -> None:
    up = spawn(["up", "--engine", "fake", "--free-ports", "--backends", "2"], "up")
    deadline = time.monotonic() + 30
    while "INFERNO_READY" not in up.output():
        assert time.monotonic() < deadline and up.popen.poll() is None, up.output()
        time.sleep(0.1)
    children = psutil.Process(up.pid).children(recursive=True)
    assert len(children) == 3
    up.popen.send_signal(signal.SIGTERM)
    assert up.popen.wait(timeout=30) == 0
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, alive
    output = up.output()
    assert "Starting proxy server on" in output and output.count("Backend registered:") == 2
    assert "inferno up: stopped" in output
