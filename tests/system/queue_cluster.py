"""A proxy with pull queues and ``inferno worker`` processes, for the system tests."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from inferno.orchestrators.processes import free_port
from tests.conftest import HOST, TEST_TOKEN, Proc, wait_http

WORKER_TOKEN = "system-worker-token-0123456789abcdef"
#: a workload that sleeps its first argument, and kills its own worker when told "poison"
SCRIPT = """
import os, signal, sys, time
if sys.argv[1] == "poison":
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(5)
time.sleep(float(sys.argv[1]))
print("slept", sys.argv[1])
"""


class QueueCluster:
    def __init__(self, spawn: Callable[..., Proc], tmp: Path, *proxy_args: str) -> None:
        self._spawn = spawn
        self.tmp = tmp
        self.port, self.ops_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ops = f"http://{HOST}:{self.ops_port}"
        self.token_file = tmp / "worker.token"
        self.token_file.write_text(WORKER_TOKEN + "\n")
        self.script = tmp / "workload.py"
        self.script.write_text(SCRIPT)
        self.proxy_args = proxy_args
        self.starts = 0
        self.workers: dict[str, Proc] = {}
        self.proxy = self.start_proxy()

    def start_proxy(self) -> Proc:
        self.starts += 1
        proc = self._spawn(
            [
                "proxy",
                "--listen-addr",
                f"{HOST}:{self.port}",
                "--ops-addr",
                f"{HOST}:{self.ops_port}",
                "--state-dir",
                str(self.tmp / "state"),
                "--worker-token-file",
                str(self.token_file),
                *self.proxy_args,
            ],
            f"proxy-{self.starts}",
        )
        wait_http(f"{self.ops}/livez")
        return proc

    def worker(self, pod: str, *args: str, workload: tuple[str, ...] = ("sleep",)) -> Proc:
        """An ``inferno worker`` named ``pod`` (a new process each call)."""
        argv = [
            "worker",
            "--discovery-lb",
            f"{HOST}:{self.ops_port}",
            "--worker-token-file",
            str(self.token_file),
            "--node-name",
            "node-" + pod.split("-", maxsplit=1)[0],
            "--pod-name",
            pod,
            "--backoff-s",
            "0.05",
            "--backoff-max-s",
            "0.5",
            *(args if "--queue" in args else ("--queue", "sim", *args)),
            *(("--", *workload) if workload else ()),  # none: engine mode
        ]
        proc = self._spawn(argv, f"{pod}-{time.monotonic_ns()}")
        self.workers[pod] = proc
        return proc

    def python_workload(self) -> tuple[str, ...]:
        import sys

        return (sys.executable, str(self.script))

    def kill(self, pod: str, sig: int = signal.SIGKILL) -> None:
        os.kill(self.workers[pod].pid, sig)

    def snapshot(self, queue: str) -> dict[str, Any]:
        row: dict[str, Any] = httpx.get(f"{self.ops}/queues", timeout=5).json()["queues"][queue]
        return row

    def dead(self, queue: str) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{self.ops}/v1/queues/{queue}/dead", headers={"Authorization": f"Bearer {TEST_TOKEN}"}, timeout=5
        )
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = r.json()["data"]
        return data

    def metric(self, name: str) -> float:
        """One sample of the proxy's /metrics, by its full name with labels."""
        for line in httpx.get(f"{self.ops}/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} is not in /metrics")


async def submit_all(
    url: str, queue: str, jobs: list[dict[str, Any]], concurrency: int, timeout_s: float = 120.0
) -> list[httpx.Response]:
    """Submit every job and wait for its result, ``concurrency`` at a time (bounded)."""
    pending = list(enumerate(jobs))
    out: list[httpx.Response | None] = [None] * len(jobs)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:

        async def lane() -> None:
            while pending:
                index, body = pending.pop()
                out[index] = await http.post(f"{url}/v1/queues/{queue}/jobs", json=body)

        await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(concurrency))), timeout_s)
    assert all(r is not None for r in out)
    return [r for r in out if r is not None]


def wait_until(predicate: Callable[[], Any], timeout_s: float, step_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"not true within {timeout_s}s")
