"""Real processes: `inferno proxy`, `inferno backend` and `inferno up`, killed for real."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import HOST, free_port, start_process_cluster

pytestmark = pytest.mark.slow


def test_sigkilled_backend_is_dropped_at_once(spawn: Any) -> None:
    # Listen addresses come from the documented aliases INFERNO_LISTEN_ADDR and
    # INFERNO_BACKEND_LISTEN_ADDR here.
    cluster = start_process_cluster(spawn, 2, proxy_args=("--health-interval-s", "1.0"), env_aliases=True)
    assert {w["status"] for w in cluster.workers().values()} == {"healthy"}
    victim = cluster.backends["b1"]
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait(timeout=5)
    killed_at = time.monotonic()
    while cluster.workers()["b1"]["status"] != "unhealthy":
        assert time.monotonic() - killed_at < 1.0 + 0.5, "not marked unhealthy within the interval"
        time.sleep(0.05)
    detected_s = time.monotonic() - killed_at
    with httpx.Client(timeout=5) as http:
        answers = [
            http.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1}) for _ in range(10)
        ]
    assert [r.status_code for r in answers] == [200] * 10
    assert {r.headers["x-inferno-backend"] for r in answers} == {"b2"}
    print(f"backend marked unhealthy {detected_s:.2f}s after SIGKILL")


def test_sigkill_under_traffic_is_seen_on_first_refusal(spawn: Any) -> None:
    # Probes every 60 s: only the first refused connection can take it out of routing.
    cluster = start_process_cluster(spawn, 2, proxy_args=("--health-interval-s", "60"))
    url = f"{cluster.url}/inference"
    with httpx.Client(timeout=5) as http:
        assert http.post(url, json={"prompt": "x"}).status_code == 200
        cluster.backends["b1"].popen.send_signal(signal.SIGKILL)
        cluster.backends["b1"].popen.wait(timeout=5)
        codes = [http.post(url, json={"prompt": "x", "max_tokens": 1}).status_code for _ in range(6)]
    assert codes == [200] * 6
    assert cluster.workers()["b1"]["status"] == "unhealthy"
    assert cluster.workers()["b1"]["status_reason"] == "connection_refused"


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


def test_proxy_sigterm_finishes_in_flight_then_exits(spawn: Any) -> None:
    cluster = start_process_cluster(
        spawn, 1, proxy_args=("--grace-s", "10"), backend_args=("--fake-tokens-per-s", "4")
    )
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            httpx.post, f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 6}, timeout=20
        )
        deadline = time.monotonic() + 5
        while cluster.workers()["b1"]["in_flight"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cluster.proxy.popen.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # no longer accepting...
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{cluster.url}/inference", json={"prompt": "y"}, timeout=2)
        # ...but the request in flight completes
        response = slow.result(timeout=20)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 6
    assert cluster.proxy.popen.wait(timeout=15) == 0
    assert "Proxy stopped" in cluster.proxy.output()
