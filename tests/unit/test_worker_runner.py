"""The worker's runners on real processes: argv (never a shell), output bounds, FILENAME
and the glob, time limits that kill the whole process group, the built-in workloads
and the engine mode (fake engine)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from inferno.engines import EmbeddingEngine, Engine
from inferno.engines.base import Embeddings
from inferno.errors import ConfigError
from inferno.worker.engine import EngineRunner
from inferno.worker.runner import (
    DevicePool,
    JobSpec,
    OutputCapture,
    ProcessRunner,
    RunnerSettings,
    effective_limit,
    substitute,
)
from inferno.worker.workloads import BuiltinWorkload, fake_device_metrics

PY = sys.executable


def python(code: str, **settings: object) -> ProcessRunner:
    """A runner whose workload is this Python script (the job's args follow it)."""
    return ProcessRunner(RunnerSettings(workload=(PY, "-c", code), **settings))  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by its parent, init here) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def test_exit_codes_and_output_are_reported() -> None:
    ok = await python("import sys; print('hello'); sys.stderr.write('err\\n')").run(JobSpec("j"))
    assert (ok.exit_code, ok.error, ok.timed_out, ok.outcome) == (0, None, False, "success")
    assert "hello" in ok.output and "err" in ok.output
    assert ok.run_s > 0
    failed = await python("import sys; sys.exit(3)").run(JobSpec("j"))
    assert (failed.exit_code, failed.error, failed.outcome) == (3, "exit status 3", "failure")
    killed = await python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)").run(JobSpec("j"))
    assert (killed.exit_code, killed.error) == (-9, "killed by signal 9")


async def test_a_missing_workload_or_workdir_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = await ProcessRunner(RunnerSettings(workload=(str(missing),))).run(JobSpec("j"))
    assert (result.exit_code, result.error) == (None, f"not found: {missing}")
    result = await ProcessRunner(RunnerSettings(workload=(PY, "-c", "0"), workdir=str(missing))).run(
        JobSpec("j")
    )
    assert result.error == f"not found: {missing}"


async def test_output_is_capped_the_rest_drained_and_marked() -> None:
    # 1 MiB written: the workload must not block on a full pipe, and only 100 bytes are kept.
    runner = python("import sys; sys.stdout.write('x' * (1 << 20))", max_output_bytes=100)
    result = await runner.run(JobSpec("j"))
    assert result.exit_code == 0
    assert result.output.startswith("x" * 100)
    assert result.output[100:] == f"\n[output truncated: {(1 << 20) - 100} more bytes dropped]"


async def test_discard_output_keeps_nothing() -> None:
    result = await python("print('secret')", discard_output=True).run(JobSpec("j"))
    assert (result.exit_code, result.output) == (0, "")


def test_output_capture_counts_across_chunks() -> None:
    capture = OutputCapture(5)
    for chunk in (b"abc", b"defg", b"hi"):
        capture.feed(chunk)
    assert capture.text() == "abcde\n[output truncated: 4 more bytes dropped]"
    assert OutputCapture(0).text() == ""


async def test_args_are_argv_never_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    runner = python("import sys, json; print(json.dumps(sys.argv[1:]))")
    evil = f"; touch {marker}"
    result = await runner.run(JobSpec("j", args=(evil, "$(touch x)", "`id`")))
    assert result.exit_code == 0
    assert result.output.strip() == '["; touch ' + str(marker) + '", "$(touch x)", "`id`"]'
    assert not marker.exists() and not (tmp_path / "x").exists()


async def test_ignore_args_drops_the_jobs_args_only() -> None:
    runner = ProcessRunner(
        RunnerSettings(workload=(PY, "-c", "import sys; print(sys.argv[1:])", "mine"), ignore_args=True)
    )
    result = await runner.run(JobSpec("j", args=("theirs",)))
    assert result.output.strip() == "['mine']"


async def test_filename_is_replaced_in_worker_and_job_args(tmp_path: Path) -> None:
    for name in ("dev1", "dev0"):
        (tmp_path / name).touch()
    devices = DevicePool(str(tmp_path / "dev*"))
    runner = ProcessRunner(
        RunnerSettings(workload=(PY, "-c", "import sys; print(sys.argv[1:])", "--on=FILENAME"))
    )
    first, second = devices.acquire(), devices.acquire()
    assert (first, second) == (str(tmp_path / "dev0"), str(tmp_path / "dev1"))
    result = await runner.run(JobSpec("j", args=("FILENAME",), device=first))
    assert result.output.strip() == str([f"--on={first}", first])
    assert result.device == first
    assert substitute(("FILENAME",), None) == ("FILENAME",)


def test_devices_go_round_robin_and_skip_held_ones(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).touch()
    pool = DevicePool(str(tmp_path / "*"))
    a, b, c = (str(tmp_path / n) for n in "abc")
    # One at a time: a, b, c, a (each released before the next job).
    picks = []
    for _ in range(4):
        picks.append(pool.acquire())
        pool.release(picks[-1])
    assert picks == [a, b, c, a]
    # Held ones are skipped while a free one exists; when all are held they are shared.
    held = [pool.acquire(), pool.acquire(), pool.acquire()]
    assert sorted(held) == [a, b, c]  # type: ignore[type-var]
    pool.release(b)
    # b is the only free one now, wherever the rotation stands.
    assert pool.acquire() == b
    # All held: the next job shares one rather than waiting.
    assert pool.acquire() in (a, b, c)
    assert DevicePool(None).acquire() is None
    with pytest.raises(LookupError, match="not found"):
        DevicePool(str(tmp_path / "none*")).acquire()


def test_the_limit_is_the_smaller_of_those_set() -> None:
    assert effective_limit(0, 0) is None
    assert effective_limit(5, 0) == 5
    assert effective_limit(0, 3) == 3
    assert effective_limit(5, 3) == 3
    assert effective_limit(2, 3) == 2


async def test_a_long_job_is_killed_at_its_limit_within_the_grace() -> None:
    runner = python("import time; time.sleep(10)", kill_grace_s=1.0)
    started = time.monotonic()
    result = await runner.run(JobSpec("j", limit_s=1.0))
    elapsed = time.monotonic() - started
    assert result.timed_out and result.outcome == "timeout"
    assert result.error == "timed out after 1s (killed by signal 15)"  # SIGTERM was enough
    assert 1.0 <= elapsed < 2.5, elapsed


async def test_the_worker_limit_applies_when_smaller_than_the_jobs() -> None:
    result = await python("import time; time.sleep(10)", limit_s=0.5).run(JobSpec("j", limit_s=10))
    assert result.timed_out and result.run_s < 2.0


async def test_a_child_ignoring_sigterm_gets_sigkill_and_its_grandchildren_die(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    runner = python(code, kill_grace_s=0.5)
    started = time.monotonic()
    result = await runner.run(JobSpec("j", limit_s=1.0))
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert "killed by signal 9" in (result.error or "")
    assert "started" in result.output
    assert 1.5 <= elapsed < 4.0, elapsed  # the limit, then the grace, then SIGKILL
    parent, child = (int(p) for p in pids.read_text().split())
    await asyncio.sleep(0.2)
    assert not alive(parent) and not alive(child)


async def test_what_a_finished_workload_leaves_in_its_group_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
    )
    started = time.monotonic()
    result = await python(code).run(JobSpec("j"))
    # The grandchild holds the output pipe, yet the job ends when the workload does.
    assert result.exit_code == 0 and time.monotonic() - started < 5
    await asyncio.sleep(0.2)
    assert not alive(int(pidfile.read_text()))


async def test_cancelling_a_run_kills_the_workload(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    task = asyncio.create_task(python(code, kill_grace_s=0.5).run(JobSpec("j")))
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert not alive(int(pidfile.read_text()))


def builtin(word: str, *args: str, **settings: object) -> BuiltinWorkload:
    cls = BuiltinWorkload.lookup(word)
    assert cls is not None
    return cls(RunnerSettings(workload=(word, *args), **settings))  # type: ignore[arg-type]


async def test_builtin_sleep_sleeps_and_honours_the_limit() -> None:
    assert BuiltinWorkload.names() == ["fake-device", "sleep"]
    ok = await builtin("sleep").run(JobSpec("j", args=("0.05",)))
    assert (ok.exit_code, ok.error, ok.timed_out) == (0, None, False)
    assert ok.run_s >= 0.05
    started = time.monotonic()
    late = await builtin("sleep", limit_s=0.1).run(JobSpec("j", args=("10",)))
    assert late.timed_out and late.outcome == "timeout"
    assert late.output == "slept 0.1s"  # what it did, cut at the limit: not the 10 s asked
    assert time.monotonic() - started < 1.0
    bad = await builtin("sleep").run(JobSpec("j", args=("soon",)))
    assert bad.outcome == "failure" and "seconds" in (bad.error or "")


async def test_fake_device_reports_its_device_and_seeded_metrics(tmp_path: Path) -> None:
    (tmp_path / "fake0").touch()
    device = DevicePool(str(tmp_path / "fake*")).acquire()
    result = await builtin("fake-device").run(JobSpec("j", args=("0.01", "7"), device=device))
    assert result.exit_code == 0 and result.device == device
    assert result.device_metrics == fake_device_metrics("7", str(device))
    assert set(result.device_metrics) == {"temp_c", "util"}
    assert 30 <= result.device_metrics["temp_c"] <= 85 and 0 <= result.device_metrics["util"] <= 1
    # Deterministic from the seed, and the seed matters.
    assert fake_device_metrics("7", "x") == fake_device_metrics("7", "x") != fake_device_metrics("8", "x")


async def test_engine_mode_answers_a_chat_request_with_the_fake_engine() -> None:
    runner = EngineRunner.create("fake", {"fake_tokens_per_s": 5000.0}, node="pod-1")
    await runner.start()
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    result = await runner.run(JobSpec("j-1", input=body))
    assert (result.exit_code, result.error) == (0, None)
    answer = result.answer
    assert answer["object"] == "chat.completion" and answer["id"] == "chatcmpl-j-1"
    assert answer["usage"]["completion_tokens"] == 4
    assert len(answer["choices"][0]["message"]["content"].split()) == 4
    bad = await runner.run(JobSpec("j-2", input={"messages": "not a list"}))
    assert bad.outcome == "failure" and (bad.error or "").startswith("bad input:")
    too_many = await runner.run(JobSpec("j-3", input={**body, "max_tokens": 5000}))
    assert too_many.outcome == "failure" and "max_tokens" in (too_many.error or "")
    await runner.aclose()


async def test_engine_mode_times_out_and_refuses_other_tasks() -> None:
    slow = EngineRunner(Engine.create("fake", {"fake_latency_ms": 5000.0}), node="p", limit_s=0.1)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    result = await slow.run(JobSpec("j", input=body))
    assert result.timed_out and result.run_s < 1.0
    with pytest.raises(ConfigError, match="does not generate text"):
        EngineRunner(Embedder(), node="p")


class Embedder(EmbeddingEngine):
    """Not a text-generation engine (unregistered: no name)."""

    model_id = "embedder"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    @classmethod
    def from_options(cls, options: object) -> Embedder:
        return cls()

    async def embed(self, texts: object) -> Embeddings:
        return Embeddings([], 0)


async def test_the_workload_never_sees_the_workers_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERNO_WORKER_TOKEN", "worker-token-0123456789abcdef")
    monkeypatch.setenv("INFERNO_CLUSTER_TOKEN", "cluster-token-0123456789abcdef")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    result = await python("import os, json; print(json.dumps(dict(os.environ)))").run(JobSpec("j"))
    assert "token-0123456789abcdef" not in result.output
    assert '"SOMETHING_ELSE": "kept"' in result.output
