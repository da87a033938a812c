"""Real processes under continuous load: SIGKILL and SIGTERM a backend, lose nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from tests.conftest import start_process_cluster
from tests.loadgen import load

pytestmark = pytest.mark.slow
HEALTH_INTERVAL_S = 1.0
PROXY_ARGS = ("--health-interval-s", str(HEALTH_INTERVAL_S))
BACKEND_ARGS = ("--fake-tokens-per-s", "400", "--n-parallel", "8", "--heartbeat-interval-s", "0.5")


def test_sigkill_one_of_three_under_load_loses_no_request(spawn: Any) -> None:
    cluster = start_process_cluster(spawn, 3, proxy_args=PROXY_ARGS, backend_args=BACKEND_ARGS)
    url, victim = cluster.url, cluster.backends["b1"]
    seen_down: list[float] = []

    def kill() -> None:
        victim.popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 5
        while time.monotonic() < deadline:
            if cluster.workers()["b1"]["status"] != "healthy":
                seen_down.append(time.monotonic() - killed)
                return
            time.sleep(0.02)

    result = asyncio.run(
        load(
            f"{url}/inference", concurrency=16, action=kill, at_s=1.5, min_duration_s=4.0, max_duration_s=10.0
        )
    )
    codes, served = result.codes, result.served
    print(f"codes={dict(codes)} served={dict(served)} down_after={seen_down}")
    assert set(codes) == {200}, codes
    assert sum(codes.values()) > 200
    assert set(served) == {"b1", "b2", "b3"}
    assert seen_down and seen_down[0] <= HEALTH_INTERVAL_S, seen_down
    health = httpx.get(f"{cluster.ops}/health", timeout=2).json()
    assert health["status"] == "degraded" and health["healthy"] == 2


def test_sigterm_drains_under_load_and_loses_nothing(spawn: Any) -> None:
    cluster = start_process_cluster(spawn, 3, proxy_args=PROXY_ARGS, backend_args=BACKEND_ARGS)
    url, victim = cluster.url, cluster.backends["b1"]

    def terminate() -> None:
        victim.popen.send_signal(signal.SIGTERM)

    result = asyncio.run(
        load(
            f"{url}/inference",
            concurrency=16,
            action=terminate,
            at_s=1.5,
            min_duration_s=4.0,
            max_duration_s=10.0,
        )
    )
    codes, served = result.codes, result.served
    print(f"codes={dict(codes)} served={dict(served)}")
    assert set(codes) == {200}, codes
    assert victim.popen.wait(timeout=30) == 0
    log = victim.output()
    assert "Draining:" in log and "Deregistered from proxy" in log and "Backend stopped" in log
    # every request it accepted, it finished
    accepted = log.count("Processing inference request")
    assert accepted == log.count("Inference completed in") and accepted > 0
    assert set(cluster.workers()) == {"b2", "b3"}
