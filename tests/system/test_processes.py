"""Real processes: `inferno proxy`, `inferno backend` and `inferno up`, killed for real."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from typing import Any

import httpx
import psutil
import pytest

from inferno.orchestrators.processes import free_port
from tests.conftest import HOST, start_process_cluster

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


def _wait_ready(up: Any, timeout_s: float = 30) -> tuple[str, str]:
    deadline = time.monotonic() + timeout_s
    while "INFERNO_READY" not in up.output():
        assert time.monotonic() < deadline and up.popen.poll() is None, up.output()
        time.sleep(0.1)
    match = re.search(r"INFERNO_READY proxy=(\S+) ops=(\S+)", up.output())
    assert match
    return match.group(1), match.group(2)


def _child(up: Any, name: str) -> psutil.Process:
    for proc in psutil.Process(up.pid).children():
        if name in proc.cmdline():
            return proc
    raise AssertionError(f"no child {name}")


def test_up_restarts_a_killed_backend_and_no_request_fails(spawn: Any) -> None:
    up = spawn(["up", "--engine", "fake", "--free-ports", "--backends", "2"], "up")
    url, ops = _wait_ready(up)
    victim = _child(up, "backend-1")
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as http:
            for _ in range(3000):  # bounded; the test stops it much sooner
                if stop.is_set():
                    return
                r = http.post(f"{url}/inference", json={"prompt": "x", "max_tokens": 2})
                results.append(r.status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for thread in workers:
        thread.start()
    try:
        time.sleep(0.5)
        victim.kill()
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, up.output()[-2000:]
            nodes = {w["node_id"]: w for w in httpx.get(f"{ops}/workers", timeout=2).json()["workers"]}
            if "backend-1 restarted" in up.output() and nodes["backend-1"]["status"] == "healthy":
                break
            time.sleep(0.1)
        served_before = nodes["backend-1"]["vitals"]["requests_served"]
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in workers:
            thread.join(timeout=15)
    assert results and set(results) == {200}, {code: results.count(code) for code in set(results)}
    assert _child(up, "backend-1").pid != victim.pid
    nodes = {w["node_id"]: w for w in httpx.get(f"{ops}/workers", timeout=2).json()["workers"]}
    assert nodes["backend-1"]["status"] == "healthy"
    assert nodes["backend-1"]["vitals"]["requests_served"] >= served_before
    output = up.output()
    assert "backend-1 (pid" in output and "restarting in" in output
    # Ctrl-C still stops everything cleanly.
    up.popen.send_signal(signal.SIGINT)
    assert up.popen.wait(timeout=30) == 0
    print(f"{len(results)} requests through the kill and restart, all 200")


def test_backend_ops_port_default_and_port_clash_fail_before_the_model_loads(spawn: Any) -> None:
    # The backend's default ops port is not the proxy's 6100.
    from inferno.config import BACKEND_OPS_PORT, BackendConfig, ProxyConfig

    assert BackendConfig().ops_port == BACKEND_OPS_PORT != ProxyConfig().ops_port
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = spawn(
            ["backend", "--listen-addr", f"{HOST}:{free_port()}", "--ops-addr", f"{HOST}:{port}"],
            "clash",
        )
        assert proc.popen.wait(timeout=30) == 1
        elapsed = time.monotonic() - started
    output = proc.output()
    assert "Backend failed to start" in output and "Model loaded" not in output, output
    assert elapsed < 10, elapsed


def test_backend_without_discovery_lb_says_it_will_not_register(spawn: Any) -> None:
    port = free_port()
    proc = spawn(
        [
            "backend",
            "--engine",
            "fake",
            "--listen-addr",
            f"{HOST}:{port}",
            "--ops-addr",
            f"{HOST}:{free_port()}",
        ],
        "alone",
    )
    deadline = time.monotonic() + 15
    while "will not register" not in proc.output():
        assert time.monotonic() < deadline and proc.popen.poll() is None, proc.output()
        time.sleep(0.1)
