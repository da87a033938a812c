"""A busy backend is not a dead one: overload queues at the proxy, answers 200 or 429.

Backends with one slot and a fixed 0.4 s generation, and a tight per-try budget
(0.1 s + 1 x the expected 0.4 s generation of 8 tokens at the assumed 20 tokens/s): a try that counted time spent waiting
inside the backend would time out and eject healthy backends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.conftest import start_process_cluster

pytestmark = pytest.mark.slow


def test_twice_the_capacity_gets_200_or_429_and_ejects_nobody(spawn: Any) -> None:
    cluster = start_process_cluster(
        spawn,
        2,
        proxy_args=(
            "--deadline-per-try-base-s",
            "0.1",
            "--deadline-per-try-safety-factor",
            "1",
            "--admission-queue-timeout-s",
            "3",
        ),
        backend_args=("--n-parallel", "1", "--fake-latency-ms", "400", "--fake-tokens-per-s", "1e6"),
    )
    # Teach the proxy each backend's speed (vitals travel with heartbeats).
    with httpx.Client(timeout=10) as http:
        for _ in range(4):
            assert (
                http.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 8}).status_code
                == 200
            )
    # Capacity: 2 backends x 1 slot / 0.4 s = 5 req/s. Offer 10 req/s for 8 s.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferno",
            "bench",
            cluster.url,
            "--rate",
            "10",
            "-d",
            "8",
            "--max-tokens",
            "8",
            "--output",
            "json",
            "--quiet",
            "--timeout-s",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    summary = json.loads(out.stdout)["summary"]
    statuses = {int(k): v for k, v in summary["statuses"].items()}
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.get(200, 0) >= 30, statuses  # capacity was used, not wasted on retries
    assert not summary["errors"] or set(summary["errors"]) <= {"http_429"}, summary["errors"]
    workers = cluster.workers()
    assert all(w["ejections"] == 0 and w["status"] == "healthy" for w in workers.values()), workers
    assert "Backend ejected" not in cluster.proxy.output()
    print(f"2x capacity: statuses {statuses}")
