"""Pull queues with real processes: a proxy, ``inferno worker``s, SIGKILL and SIGSTOP.

Each test checks what the issue promises: nothing accepted is lost, every result
reaches its client once, dead workers' jobs come back, and the metrics say what
really happened.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Proc
from tests.system.queue_cluster import QueueCluster, submit_all, wait_until

pytestmark = pytest.mark.slow


def test_thousand_jobs_while_busy_workers_are_killed(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """1,000 jobs of 0.5 s on 8 workers with a 2 s lease; every few seconds a worker
    that is mid-job is SIGKILLed and started again."""
    c = QueueCluster(spawn, tmp_path, "--queue", "sim", "--queue-lease-s", "2")
    pods = [f"w{i}-pod" for i in range(8)]
    for pod in pods:
        c.worker(pod)
    kills: list[str] = []
    stop = threading.Event()

    def killer() -> None:
        deadline = time.monotonic() + 150
        while not stop.wait(2.5) and time.monotonic() < deadline:
            running = [j for j in c.snapshot("sim")["running_jobs"] if 0.05 < j["running_s"] < 0.25]
            if not running:
                continue
            pod = running[0]["pod"]
            c.kill(pod)
            kills.append(pod)
            c.workers[pod].popen.wait(timeout=5)
            c.worker(pod)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        jobs = [{"args": ["0.5"]} for _ in range(1000)]
        responses = asyncio.run(submit_all(c.url, "sim", jobs, concurrency=64, timeout_s=240))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert {r.status_code for r in responses} == {200}
    results = [r.json() for r in responses]
    assert {r["outcome"] for r in results} == {"success"}
    ids = [r["job_id"] for r in results]
    assert len(set(ids)) == 1000  # one result per job, each to its own client
    assert len(kills) >= 5, kills
    # Every kill hit a running job: it came back once, and no other job did.
    assert sum(r["attempts"] - 1 for r in results) == len(kills)
    assert c.metric('inferno_jobqueue_redeliveries_total{queue="sim",reason="expired"}') == len(kills)
    assert c.metric('inferno_jobqueue_completed_total{outcome="success",queue="sim"}') == 1000
    assert c.metric('inferno_jobqueue_submitted_total{queue="sim"}') == 1000
    assert c.metric('inferno_jobqueue_backlog{queue="sim"}') == 0
    assert c.metric('inferno_jobqueue_stale_completions_total{queue="sim"}') == 0
    assert {r["node"] for r in results} == {f"node-w{i}" for i in range(8)}


def test_a_paused_worker_comes_back_to_a_409_and_the_client_sees_one_result(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    c = QueueCluster(spawn, tmp_path, "--queue", "sim", "--queue-lease-s", "1")
    c.worker("a-pod")
    with httpx.Client(timeout=30) as http:
        job_id = http.post(f"{c.url}/v1/queues/sim/jobs?wait=false", json={"args": ["2"]}).json()["job_id"]
        wait_until(lambda: any(j["pod"] == "a-pod" for j in c.snapshot("sim")["running_jobs"]), 10)
        c.kill("a-pod", signal.SIGSTOP)
        try:
            c.worker("b-pod")
            result = http.get(f"{c.url}/v1/jobs/{job_id}", params={"wait_s": 20}).json()
        finally:
            c.kill("a-pod", signal.SIGCONT)
        assert result["outcome"] == "success" and result["pod"] == "b-pod" and result["attempts"] == 2
        # The paused worker wakes, reports on its lost lease: 409, discarded.
        wait_until(lambda: c.metric('inferno_jobqueue_stale_completions_total{queue="sim"}') >= 1, 10)
        again = http.get(f"{c.url}/v1/jobs/{job_id}").json()
        assert again == result
    assert c.metric('inferno_jobqueue_completed_total{outcome="success",queue="sim"}') == 1


def test_a_poison_job_is_dead_lettered_while_others_flow(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    c = QueueCluster(spawn, tmp_path, "--queue", "sim", "--queue-lease-s", "1", "--queue-max-attempts", "3")
    pods = ["p0-pod", "p1-pod"]
    for pod in pods:
        c.worker(pod, workload=c.python_workload())
    stop = threading.Event()

    def restarter() -> None:  # whatever dies is started again, as an orchestrator would
        deadline = time.monotonic() + 60
        while not stop.wait(0.2) and time.monotonic() < deadline:
            for pod in pods:
                if c.workers[pod].popen.poll() is not None:
                    c.worker(pod, workload=c.python_workload())

    thread = threading.Thread(target=restarter, daemon=True)
    thread.start()
    try:
        jobs = [{"args": ["poison"]}] + [{"args": ["0.1"]} for _ in range(20)]
        responses = asyncio.run(submit_all(c.url, "sim", jobs, concurrency=4, timeout_s=60))
    finally:
        stop.set()
        thread.join(timeout=5)
    outcomes = [r.json()["outcome"] for r in responses]
    assert outcomes[0] == "dead_lettered" and responses[0].json()["attempts"] == 3
    assert outcomes[1:] == ["success"] * 20
    assert [d["job_id"] for d in c.dead("sim")] == [responses[0].json()["job_id"]]
    assert c.metric('inferno_jobqueue_dead{queue="sim"}') == 1


def test_twice_the_capacity_answers_only_200_or_429(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    c = QueueCluster(spawn, tmp_path, "--queue", "sim:8")
    for i in range(2):
        c.worker(f"o{i}-pod")
    statuses: list[int] = []

    async def burst() -> None:
        async with httpx.AsyncClient(timeout=30) as http:

            async def one() -> None:
                r = await http.post(f"{c.url}/v1/queues/sim/jobs", json={"args": ["0.2"]})
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "1"

            await asyncio.gather(*(one() for _ in range(16)))

    asyncio.run(burst())
    assert set(statuses) == {200, 429}, statuses
    assert c.metric('inferno_jobqueue_rejected_total{queue="sim",reason="full"}') == statuses.count(429)


def test_a_long_job_over_its_limit_is_killed_and_reported_as_a_timeout(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    import shutil

    sleep = shutil.which("sleep")
    assert sleep is not None
    c = QueueCluster(spawn, tmp_path, "--queue", "sim")
    c.worker("t-pod", "--kill-grace-s", "1", workload=(sleep,))
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{c.url}/v1/queues/sim/jobs", json={"args": ["10"], "limit_s": 1}).json()
    assert r["outcome"] == "timeout" and r["timed_out"] is True
    assert 1.0 <= r["run_s"] < 2.5, r  # the limit, within the grace
    assert r["total_s"] < 5


def test_a_client_that_leaves_while_its_job_waits_removes_it_unrun(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    c = QueueCluster(spawn, tmp_path, "--queue", "sim")
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.5) as impatient:
        impatient.post(f"{c.url}/v1/queues/sim/jobs", json={"args": ["0.1"]})
    wait_until(lambda: c.snapshot("sim")["backlog"] == 0, 5)
    c.worker("d-pod")
    with httpx.Client(timeout=30) as http:
        ok = http.post(f"{c.url}/v1/queues/sim/jobs", json={"args": ["0.1"]}).json()
    assert ok["outcome"] == "success"
    row = c.snapshot("sim")
    assert row["completed"] == {"cancelled": 1, "success": 1} and row["disconnects"]["waiting"] == 1


def test_a_flooded_queue_does_not_starve_another_on_shared_workers(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    c = QueueCluster(spawn, tmp_path, "--queue", "flood", "--queue", "calm")
    for i in range(3):
        c.worker(f"f{i}-pod", "--queue", "flood", "--queue", "calm")
    with httpx.Client(timeout=30) as http:
        for _ in range(60):
            assert (
                http.post(f"{c.url}/v1/queues/flood/jobs?wait=false", json={"args": ["0.5"]}).status_code
                == 202
            )
        wait_until(lambda: c.snapshot("flood")["running"] == 3, 10)
        waits = []
        for _ in range(3):
            r = http.post(f"{c.url}/v1/queues/calm/jobs", json={"args": ["0.05"]}).json()
            assert r["outcome"] == "success"
            waits.append(r["wait_s"])
        assert c.snapshot("flood")["waiting"] > 20  # still flooded while calm was served
    assert max(waits) <= 0.5 + 0.25, waits  # within one flood job's run time


def test_kill_9_of_the_proxy_loses_nothing(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    c = QueueCluster(spawn, tmp_path, "--queue", "sim", "--queue-lease-s", "2")
    for i in range(2):
        c.worker(f"k{i}-pod")
    with httpx.Client(timeout=30) as http:
        ids = [
            http.post(f"{c.url}/v1/queues/sim/jobs?wait=false", json={"args": ["0.2"]}).json()["job_id"]
            for _ in range(30)
        ]
        done_before = wait_until(
            lambda: [i for i in ids if http.get(f"{c.url}/v1/jobs/{i}").status_code == 200] or None, 10
        )
        c.proxy.popen.send_signal(signal.SIGKILL)
        c.proxy.popen.wait(timeout=5)
        c.start_proxy()
        # Results from before the kill are still there; the rest finish (the workers reconnect).
        for job_id in done_before:
            assert http.get(f"{c.url}/v1/jobs/{job_id}").json()["outcome"] == "success"

        def finished() -> list[dict[str, Any]] | None:
            rows = [http.get(f"{c.url}/v1/jobs/{i}").json() for i in ids]
            return rows if all(r.get("outcome") == "success" for r in rows) else None

        rows = wait_until(finished, 60, step_s=0.5)
    assert len(rows) == 30
    row = c.snapshot("sim")
    assert row["backlog"] == 0 and row["waiting"] == 0 and row["running"] == 0


def test_a_stopped_worker_idle_after_a_job_exits_at_once(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """After a job its completion long-polls for the next (``next``); SIGTERM cuts that
    poll short: the worker exits 0 at once, and its result stands."""
    c = QueueCluster(spawn, tmp_path, "--queue", "sim")
    worker = c.worker("s-pod")
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{c.url}/v1/queues/sim/jobs", json={"args": ["0.1"]}).json()
        assert r["outcome"] == "success"
        wait_until(lambda: c.snapshot("sim")["workers_polling"] == 1, 5)  # in the chained long poll
        started = time.monotonic()
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(timeout=10) == 0
        assert time.monotonic() - started < 3
        assert http.get(f"{c.url}/v1/jobs/{r['job_id']}").json() == r
    assert c.metric('inferno_jobqueue_stale_completions_total{queue="sim"}') == 0
    assert c.metric('inferno_jobqueue_completed_total{outcome="success",queue="sim"}') == 1
