"""Real processes under continuous load: SIGKILL and SIGTERM a backend, lose nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.conftest import start_process_cluster

pytestmark = pytest.mark.slow
HEALTH_INTERVAL_S = 1.0
PROXY_ARGS = ("--health-interval-s", str(HEALTH_INTERVAL_S))
BACKEND_ARGS = ("--fake-tokens-per-s", "400", "--n-parallel", "8", "--heartbeat-interval-s", "0.5")


async def load(
    url: str, *, concurrency: int, duration_s: float, action: Any, at_s: float, max_requests: int = 20000
) -> tuple[Counter[int], Counter[str], float]:
    """Closed-loop load, bounded by time and count; runs ``action`` once at ``at_s``."""
    codes: Counter[int] = Counter()
    served: Counter[str] = Counter()
    sent = 0
    started = time.monotonic()
    acted_at = 0.0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while time.monotonic() - started < duration_s and sent < max_requests:
            sent += 1
            try:
                r = await http.post(url, json={"prompt": "load", "max_tokens": 8})
                codes[r.status_code] += 1
                served[r.headers.get("x-inferno-backend", "-")] += 1
            except httpx.HTTPError as exc:
                codes[-1] += 1
                served[type(exc).__name__] += 1

    async def trigger() -> None:
        nonlocal acted_at
        await asyncio.sleep(at_s)
        acted_at = time.monotonic()
        await asyncio.to_thread(action)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(trigger(), *(worker(http) for _ in range(concurrency)))
    return codes, served, acted_at


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

    codes, served, _ = asyncio.run(
        load(f"{url}/inference", concurrency=16, duration_s=4.0, action=kill, at_s=1.5)
    )
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

    codes, served, _ = asyncio.run(
        load(f"{url}/inference", concurrency=16, duration_s=4.0, action=terminate, at_s=1.5)
    )
    print(f"codes={dict(codes)} served={dict(served)}")
    assert set(codes) == {200}, codes
    assert victim.popen.wait(timeout=30) == 0
    log = victim.output()
    assert "Draining:" in log and "Deregistered from proxy" in log and "Backend stopped" in log
    # every request it accepted, it finished
    accepted = log.count("Processing inference request")
    assert accepted == log.count("Inference completed in") and accepted > 0
    assert set(cluster.workers()) == {"b2", "b3"}
