"""The worker against a fake frontend (the worker routes of docs/queues.md on a real
socket): in-process as an asyncio task, and as a real ``python -m inferno worker``."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from inferno.orchestrators.processes import free_port
from inferno.worker import (
    Backoff,
    DevicePool,
    ProcessRunner,
    RunnerSettings,
    Worker,
    WorkerClient,
    WorkerIdentity,
)
from inferno.worker.engine import EngineRunner
from inferno.worker.loop import ABORTED, DONE, GAVE_UP, NEXT_WAIT_S
from inferno.worker.runner import Runner
from inferno.worker.workloads import BuiltinWorkload
from tests.conftest import wait_for
from tests.integration.fake_frontend import TOKEN, FakeFrontend

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def frontend() -> AsyncIterator[FakeFrontend]:
    server = FakeFrontend(free_port())
    await server.start()
    yield server
    await server.stop()


def make_worker(
    frontend: FakeFrontend | str,
    runner: Runner,
    *,
    queues: tuple[str, ...] = ("a",),
    token: str = TOKEN,
    **kwargs: Any,
) -> Worker:
    address = frontend if isinstance(frontend, str) else frontend.address
    kwargs.setdefault("poll_wait_s", 0.3)
    kwargs.setdefault("backoff", Backoff(0.02, 0.1, random.Random(5)))
    return Worker(
        WorkerClient(address, token, timeout_s=2.0),
        runner,
        queues=queues,
        identity=WorkerIdentity("w-test", "node-a", "pod-1"),
        **kwargs,
    )


def sleeper(**settings: Any) -> Runner:
    cls = BuiltinWorkload.lookup("sleep")
    assert cls is not None
    return cls(RunnerSettings(workload=("sleep",), **settings))


def script(code: str, **settings: Any) -> ProcessRunner:
    return ProcessRunner(RunnerSettings(workload=(PY, "-c", code), **settings))


async def finish(worker: Worker, task: asyncio.Task[int], timeout_s: float = 10.0) -> int:
    worker.stop()
    code = await asyncio.wait_for(task, timeout_s)
    await worker.aclose()
    return code


async def test_jobs_are_leased_run_and_completed_chaining_with_next(frontend: FakeFrontend) -> None:
    ids = [await frontend.push("a", ["0.01"]) for _ in range(3)]
    worker = make_worker(frontend, sleeper(), exit_when_empty=True)
    code = await asyncio.wait_for(worker.run(), 10)
    await worker.aclose()
    assert code == DONE
    assert set(frontend.results) == set(ids)
    for job_id in ids:
        result = frontend.results[job_id]
        assert (result["exit_code"], result["error"], result["timed_out"]) == (0, None, False)
        assert result["output"] == "slept 0.01s" and result["run_s"] >= 0.01
        assert result["worker"] == {"id": "w-test", "node": "node-a", "pod": "pod-1", "device": ""}
    # One lease call, then each completion leased the next; the last one's next was empty.
    assert len(frontend.lease_requests) == 4
    assert worker.leases == 3 and worker.outcomes == {"success": 3}


async def test_a_real_process_reports_its_exit_code_and_output(frontend: FakeFrontend) -> None:
    job = await frontend.push("a", ["3"])
    worker = make_worker(
        frontend, script("import sys; print('out', sys.argv[1]); sys.exit(int(sys.argv[1]))")
    )
    task = asyncio.create_task(worker.run())
    await wait_for(lambda: job in frontend.results)
    assert await finish(worker, task) == DONE
    result = frontend.results[job]
    assert (result["exit_code"], result["error"]) == (3, "exit status 3")
    assert result["output"].strip() == "out 3"


async def test_leases_rotate_the_queues_so_none_starves(frontend: FakeFrontend) -> None:
    for _ in range(4):
        await frontend.push("a", ["0"])
        await frontend.push("b", ["0"])
    worker = make_worker(frontend, sleeper(), queues=("a", "b"), exit_when_empty=True)
    assert await asyncio.wait_for(worker.run(), 10) == DONE
    await worker.aclose()
    orders = [tuple(r["queues"]) for r in frontend.lease_requests]
    assert orders[:4] == [("a", "b"), ("b", "a"), ("a", "b"), ("b", "a")]
    # Both queues were served in turn, not "a" to the end first.
    served = [frontend.jobs[j].queue for j in frontend.results]
    assert served[:4] == ["a", "b", "a", "b"]


async def test_a_short_lease_is_kept_alive_by_heartbeats() -> None:
    frontend = FakeFrontend(free_port(), lease_s=0.3)
    await frontend.start()
    try:
        job = await frontend.push("a", ["1.0"])
        worker = make_worker(frontend, sleeper())
        task = asyncio.create_task(worker.run())
        await wait_for(lambda: job in frontend.results, timeout_s=10)
        assert await finish(worker, task) == DONE
    finally:
        await frontend.stop()
    # 1 s of work on a 0.3 s lease: every 0.1 s a heartbeat, and the lease never lapsed.
    assert len(frontend.heartbeats) >= 5
    assert frontend.results[job]["exit_code"] == 0 and not frontend.refused_completions


async def test_409_on_heartbeat_kills_the_workload_and_drops_the_result(tmp_path: Path) -> None:
    frontend = FakeFrontend(free_port(), lease_s=0.3)
    await frontend.start()
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    try:
        job = await frontend.push("a")
        worker = make_worker(frontend, script(code, kill_grace_s=0.5))
        task = asyncio.create_task(worker.run())
        # Bounded waits with room for a loaded machine (a Python start can take seconds then).
        await wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout_s=20)
        pid = int(pidfile.read_text())
        frontend.cancel(job)
        await wait_for(lambda: worker.outcomes.get("lease_lost") == 1, timeout_s=15)
        await wait_for(lambda: not _alive(pid), timeout_s=10)
        assert await finish(worker, task) == DONE
    finally:
        await frontend.stop()
    assert job not in frontend.results and not frontend.refused_completions


async def test_an_empty_queue_with_exit_when_empty_exits_0(frontend: FakeFrontend) -> None:
    worker = make_worker(frontend, sleeper(), exit_when_empty=True)
    started = time.monotonic()
    assert await asyncio.wait_for(worker.run(), 5) == DONE
    await worker.aclose()
    assert time.monotonic() - started < 2 and len(frontend.lease_requests) == 1


async def test_stop_finishes_the_running_job_reports_it_and_leases_no_more(frontend: FakeFrontend) -> None:
    first = await frontend.push("a", ["0.5"])
    worker = make_worker(frontend, sleeper())
    task = asyncio.create_task(worker.run())
    await wait_for(lambda: frontend.lease_of(first) is not None)
    second = await frontend.push("a", ["0"])
    worker.signal()  # the first SIGTERM
    assert await asyncio.wait_for(task, 5) == DONE
    await worker.aclose()
    assert frontend.results[first]["exit_code"] == 0
    # The completion asked for no next job, and nothing else was leased.
    assert second not in frontend.results and frontend.jobs[second].state == "waiting"
    assert len(frontend.lease_requests) == 1


async def test_an_idle_worker_stops_at_once_after_its_last_completion(frontend: FakeFrontend) -> None:
    # The last completion's ``next`` cannot be closed on stop (it carries the result): its
    # wait is short, and the worker's own long poll that follows is closed on stop.
    job = await frontend.push("a", ["0"])
    worker = make_worker(frontend, sleeper(), poll_wait_s=30.0)
    task = asyncio.create_task(worker.run())
    await wait_for(lambda: job in frontend.results)
    assert frontend.lease_requests[1]["wait_s"] <= NEXT_WAIT_S < 30.0
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert await finish(worker, task, timeout_s=5) == DONE
    assert time.monotonic() - started < NEXT_WAIT_S + 1.0
    assert worker.outcomes == {"success": 1}


async def test_with_exit_when_empty_the_next_lease_waits_the_whole_poll(frontend: FakeFrontend) -> None:
    await frontend.push("a", ["0"])
    worker = make_worker(frontend, sleeper(), poll_wait_s=0.3, exit_when_empty=True)
    assert await asyncio.wait_for(worker.run(), 5) == DONE
    await worker.aclose()
    assert [r["wait_s"] for r in frontend.lease_requests] == [0.3, 0.3]


async def test_a_second_signal_releases_the_lease_and_kills_the_workload(
    frontend: FakeFrontend, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    job = await frontend.push("a")
    worker = make_worker(frontend, script(code, kill_grace_s=0.5))
    task = asyncio.create_task(worker.run())
    await wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout_s=20)
    worker.signal()
    worker.signal()
    assert await asyncio.wait_for(task, 5) == ABORTED
    await worker.aclose()
    assert len(frontend.releases) == 1
    assert frontend.jobs[job].state == "waiting"  # back in its queue at once
    assert not _alive(int(pidfile.read_text())) and job not in frontend.results


async def test_an_unreachable_frontend_is_retried_with_backoff_then_leased_from() -> None:
    port = free_port()
    delays: list[float] = []
    started = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 6:
            started.set()
        await asyncio.sleep(0.01)

    worker = make_worker(
        f"127.0.0.1:{port}", sleeper(), backoff=Backoff(0.5, 4.0, random.Random(2)), sleep=sleep
    )
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    # Each delay within [min, min * 2**n] capped at the max: backing off, never a busy loop.
    for n, delay in enumerate(delays[:6]):
        assert 0.5 <= delay <= min(4.0, 0.5 * 2**n), (n, delay)
    frontend = FakeFrontend(port)
    await frontend.start()
    try:
        job = await frontend.push("a", ["0"])
        await wait_for(lambda: job in frontend.results, timeout_s=5)
        assert await finish(worker, task) == DONE
    finally:
        await frontend.stop()


async def test_exit_when_empty_gives_up_on_a_frontend_that_stays_away() -> None:
    worker = make_worker(f"127.0.0.1:{free_port()}", sleeper(), exit_when_empty=True)
    assert await asyncio.wait_for(worker.run(), 10) == GAVE_UP
    await worker.aclose()


async def test_a_wrong_token_is_refused_and_backed_off(frontend: FakeFrontend) -> None:
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0.01)

    worker = make_worker(frontend, sleeper(), token="wrong-token-0123456789", sleep=sleep)
    task = asyncio.create_task(worker.run())
    await wait_for(lambda: len(delays) >= 3)
    assert await finish(worker, task) == DONE
    assert frontend.unauthorized >= 3 and not frontend.leases


async def test_a_result_over_the_frontends_limit_is_cut_to_fit(frontend: FakeFrontend) -> None:
    job = await frontend.push("a")
    worker = make_worker(frontend, script("print('y' * 200000)", max_output_bytes=200000))
    task = asyncio.create_task(worker.run())
    await wait_for(lambda: job in frontend.results)
    assert await finish(worker, task) == DONE
    assert frontend.refused_completions and frontend.refused_completions[0][1] == 413
    output = frontend.results[job]["output"]
    assert output.startswith("yyyy") and output.endswith("[output cut to fit the proxy's result limit]")


async def test_devices_from_the_glob_are_reported_and_substituted(
    frontend: FakeFrontend, tmp_path: Path
) -> None:
    (tmp_path / "fake0").touch()
    (tmp_path / "fake1").touch()
    cls = BuiltinWorkload.lookup("fake-device")
    assert cls is not None
    runner = cls(RunnerSettings(workload=("fake-device",)))
    ids = [await frontend.push("a", ["0", "seed"]) for _ in range(2)]
    worker = make_worker(frontend, runner, devices=DevicePool(str(tmp_path / "fake*")), exit_when_empty=True)
    assert await asyncio.wait_for(worker.run(), 10) == DONE
    await worker.aclose()
    devices = [frontend.results[j]["device"] for j in ids]
    assert devices == [str(tmp_path / "fake0"), str(tmp_path / "fake1")]
    assert [frontend.results[j]["worker"]["device"] for j in ids] == devices
    assert all(set(frontend.results[j]["device_metrics"]) == {"temp_c", "util"} for j in ids)


async def test_engine_mode_answers_chat_jobs(frontend: FakeFrontend) -> None:
    runner = EngineRunner.create("fake", {"fake_tokens_per_s": 5000.0}, node="pod-1")
    await runner.start()
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
    job = await frontend.push("chat", input=body)
    worker = make_worker(frontend, runner, queues=("chat",), exit_when_empty=True)
    assert await asyncio.wait_for(worker.run(), 10) == DONE
    await worker.aclose()
    answer = frontend.results[job]["answer"]
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] == 3


# -- the real command -------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def start_cli(frontend: FakeFrontend, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "INFERNO_WORKER_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            PY,
            "-m",
            "inferno",
            "worker",
            "--discovery-lb",
            frontend.address,
            "--queue",
            "a",
            "--poll-wait-s",
            "0.5",
            *args,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the worker did not exit")
        await asyncio.sleep(0.05)
    assert proc.stdout is not None
    return proc.returncode, proc.stdout.read().decode()


async def test_the_command_runs_jobs_and_exits_0_when_empty(frontend: FakeFrontend) -> None:
    job = await frontend.push("a", ["hidden-arg-1"])
    proc = start_cli(
        frontend, "--exit-when-empty", "--node-name", "n1", "--", PY, "-c", "import sys; print(sys.argv[1:])"
    )
    code, log = await wait_exit(proc)
    assert code == 0, log
    assert frontend.results[job]["output"].strip() == "['hidden-arg-1']"
    assert frontend.results[job]["worker"]["node"] == "n1"
    assert f"Job '{job}' of queue 'a': success" in log
    assert "hidden-arg-1" not in log and TOKEN not in log  # args and the token stay out of the log


async def test_the_command_finishes_its_job_on_sigterm_and_releases_on_a_second(
    frontend: FakeFrontend,
) -> None:
    first = await frontend.push("a", ["1.0"])
    proc = start_cli(frontend, "--", "sleep")
    await wait_for(lambda: frontend.lease_of(first) is not None, timeout_s=15)
    proc.send_signal(signal.SIGTERM)
    code, log = await wait_exit(proc)
    assert code == 0, log
    assert frontend.results[first]["exit_code"] == 0

    second = await frontend.push("a", ["30"])
    proc = start_cli(frontend, "--", "sleep")
    await wait_for(lambda: frontend.lease_of(second) is not None, timeout_s=15)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    code, log = await wait_exit(proc)
    assert code == 1, log
    assert len(frontend.releases) == 1 and frontend.jobs[second].state == "waiting"
    assert second not in frontend.results


async def test_a_workload_dies_with_its_worker_killed_by_sigkill(
    frontend: FakeFrontend, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    await frontend.push("a")
    proc = start_cli(frontend, "--", PY, "-c", code)
    await wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout_s=15)
    proc.kill()
    await wait_exit(proc)
    await wait_for(lambda: not _alive(int(pidfile.read_text())), timeout_s=5)


async def test_a_job_with_malformed_args_is_reported_as_a_failure_not_run(
    frontend: FakeFrontend, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    job = await frontend.push("a", ["ok", "nul\0byte"])
    worker = make_worker(frontend, script(f"open({str(marker)!r}, 'w')"), exit_when_empty=True)
    assert await asyncio.wait_for(worker.run(), 10) == DONE
    await worker.aclose()
    result = frontend.results[job]
    assert result["exit_code"] is None and result["error"].startswith("bad job: args")
    assert not marker.exists()


async def test_concurrency_runs_jobs_at_once_one_per_device(frontend: FakeFrontend, tmp_path: Path) -> None:
    for name in ("dev0", "dev1"):
        (tmp_path / name).touch()
    log = tmp_path / "log"
    code = (
        "import sys, time\n"
        f"open({str(log)!r}, 'a').write(f'start {{sys.argv[1]}} {{time.monotonic()}}\\n')\n"
        "time.sleep(0.5)\n"
        f"open({str(log)!r}, 'a').write(f'end {{sys.argv[1]}} {{time.monotonic()}}\\n')\n"
    )
    runner = ProcessRunner(RunnerSettings(workload=(PY, "-c", code, "FILENAME")))
    ids = [await frontend.push("a") for _ in range(4)]
    worker = make_worker(frontend, runner, devices=DevicePool(str(tmp_path / "dev*")), concurrency=2)
    task = asyncio.create_task(worker.run())
    await wait_for(lambda: all(j in frontend.results for j in ids), timeout_s=10)
    assert await finish(worker, task) == DONE
    events = [line.split() for line in log.read_text().splitlines()]
    # At most one job per device at any time, and two ran side by side.
    busy: dict[str, bool] = {}
    overlap = 0
    for kind, device, _ in sorted(events, key=lambda e: float(e[2])):
        if kind == "start":
            assert not busy.get(device), events
            busy[device] = True
            overlap = max(overlap, sum(busy.values()))
        else:
            busy[device] = False
    assert overlap == 2
    assert {frontend.results[j]["device"] for j in ids} == {str(tmp_path / "dev0"), str(tmp_path / "dev1")}


async def test_an_empty_queue_answered_at_once_is_no_busy_loop() -> None:
    frontend = FakeFrontend(free_port(), max_wait_s=0.0)  # every empty lease: 204 at once
    await frontend.start()
    try:
        worker = make_worker(frontend, sleeper(), poll_wait_s=20.0)
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(1.2)
        assert await finish(worker, task) == DONE
    finally:
        await frontend.stop()
    # One lease per FAST_EMPTY_S (0.5 s) at most, not thousands.
    assert 1 <= len(frontend.lease_requests) <= 4, len(frontend.lease_requests)
