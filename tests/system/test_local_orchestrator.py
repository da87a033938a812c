"""The ``local`` orchestrator against real ``inferno backend`` processes (the fake engine)
registering with a real in-process proxy: starts, readiness, drains that finish
in-flight work, rolls that start the new generation first, adoption by a new
orchestrator over the same state directory, stale records and backoff."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferno.deployments.spec import AutoScalingConfig, DeploymentSpec
from inferno.orchestrators import DesiredDeployment, InstanceInfo, LocalOrchestrator, Orchestrator
from inferno.orchestrators.base import OrchestratorContext
from inferno.orchestrators.processes import pid_start_time, proc_stat
from tests.conftest import TEST_TOKEN, Cluster, wait_for

pytestmark = pytest.mark.slow

MODEL = "team-model"


def desired(
    replicas: int,
    generation: int = 1,
    *,
    backend: str = "fake",
    model: str = MODEL,
    cold_start_timeout_s: float = 30.0,
    **backend_config: Any,
) -> DesiredDeployment:
    config = {"fake_tokens_per_s": 5000.0, **backend_config} if backend == "fake" else backend_config
    spec = DeploymentSpec(
        model=model,
        backend=backend,
        backend_config=config,
        auto_scaling_config=AutoScalingConfig(
            max_instances=8, drain_timeout_s=10.0, cold_start_timeout_s=cold_start_timeout_s
        ),
    )
    return DesiredDeployment(spec, generation, replicas)


def _kill(pid: int, start: int | None) -> None:
    """SIGKILL ``pid`` if it is still the process started at ``start``, then reap it if ours."""
    if start is not None and pid_start_time(pid) == start:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not our child (or already reaped)
        if done:
            return
        time.sleep(0.02)


class Harness:
    """Orchestrators over one state directory; every pid they started is killed at the end."""

    def __init__(self, cluster: Cluster, state_dir: Path) -> None:
        self.cluster = cluster
        self.state_dir = state_dir
        self.orchestrators: list[LocalOrchestrator] = []
        self.pids: dict[int, int | None] = {}
        self.stopped: list[InstanceInfo] = []

    def context(self, **kw: Any) -> OrchestratorContext:
        return OrchestratorContext(
            state_dir=str(self.state_dir), discovery_lb=self.cluster.ops_addr, cluster_token=TEST_TOKEN, **kw
        )

    async def new(self, **kw: Any) -> LocalOrchestrator:
        async def before_stop(info: InstanceInfo) -> None:
            self.stopped.append(info)

        orch = LocalOrchestrator(
            str(self.state_dir),
            self.cluster.ops_addr,
            cluster_token=TEST_TOKEN,
            before_stop=before_stop,
            probe_interval_s=0.1,
            **kw,
        )
        self.orchestrators.append(orch)
        await orch.start()
        return orch

    def records(self) -> dict[str, dict[str, Any]]:
        out = {}
        for path in (self.state_dir / "instances").glob("*.json"):
            record = json.loads(path.read_text())
            self.pids.setdefault(record["pid"], record["pid_start"])
            out[record["id"]] = record
        return out

    def remember(self) -> None:
        """Note every pid on record (called often, so none escapes the finalizer)."""
        self.records()
        for orch in self.orchestrators:
            for inst in orch._instances.values():
                self.pids.setdefault(inst.process.pid, inst.process.pid_start)

    async def ready(self, orch: LocalOrchestrator, count: int, timeout_s: float = 30.0) -> list[InstanceInfo]:
        def check() -> list[InstanceInfo] | None:
            self.remember()
            infos = orch.instances()
            ready = [i for i in infos if i.state == "ready"]
            return ready if len(ready) == count and len(infos) == count else None

        result: list[InstanceInfo] = await wait_for(check, timeout_s, step_s=0.05)
        return result

    async def aclose(self) -> None:
        self.remember()
        for orch in self.orchestrators:
            await orch.aclose()
        for pid, start in self.pids.items():
            _kill(pid, start)


@pytest.fixture
async def harness(make_cluster: Callable[..., Any], tmp_path: Path) -> AsyncIterator[Harness]:
    cluster = await make_cluster(0)
    h = Harness(cluster, tmp_path / "state")
    try:
        yield h
    finally:
        await h.aclose()


def _alive(pid: int, start: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[1] == start and stat[0] != "Z"


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read()


def _chat(address: str, max_tokens: int = 4, timeout_s: float = 20.0) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    return httpx.post(f"http://{address}/v1/chat/completions", json=body, timeout=timeout_s)


async def test_registered_by_name_and_built_from_context(harness: Harness) -> None:
    orch = Orchestrator.create("local", harness.context(options=(("probe_interval_s", "0.5"),)))
    assert isinstance(orch, LocalOrchestrator)
    with pytest.raises(Exception, match="no option"):
        Orchestrator.create("local", harness.context(options=(("image", "x"),)))


async def test_starts_n_instances_that_register_under_the_model_id(harness: Harness) -> None:
    orch = await harness.new()
    await orch.reconcile([desired(2)])
    assert {i.state for i in orch.instances()} == {"starting"}
    ready = await harness.ready(orch, 2)
    records = harness.records()
    assert set(records) == {i.id for i in ready}
    for record in records.values():
        assert record["pid_start"] == pid_start_time(record["pid"])
        assert record["address"] == f"127.0.0.1:{record['data_port']}"
        log = harness.state_dir / "instances" / "logs" / f"{record['id']}.log"
        assert log.is_file()
        assert TEST_TOKEN.encode() not in _cmdline(record["pid"])  # the token is in the environment only
        assert os.getsid(record["pid"]) == record["pid"]  # its own session: it outlives us
    await harness.cluster.wait_healthy(2, timeout_s=10)
    response = await asyncio.to_thread(_chat, f"127.0.0.1:{harness.cluster.proxy.data_address[1]}")
    assert response.status_code == 200, response.text
    assert response.json()["model"] == MODEL
    status = orch.status()
    assert status["ready"] == 2 and status["deployments"][MODEL]["ready"] == 2
    # Idempotent: reconciling the same state again starts nothing.
    await orch.reconcile([desired(2)])
    assert {i.id for i in orch.instances()} == {i.id for i in ready}


async def test_scale_down_drains_the_newest_and_its_in_flight_request_completes(harness: Harness) -> None:
    orch = await harness.new()
    # 20 tokens at 10/s: two seconds in flight.
    await orch.reconcile([desired(2, fake_tokens_per_s=10.0)])
    ready = await harness.ready(orch, 2)
    newest = max(ready, key=lambda i: i.started)
    pid = harness.records()[newest.id]["pid"]
    start = pid_start_time(pid)
    assert start is not None
    request = asyncio.create_task(asyncio.to_thread(_chat, newest.address, 20))
    await asyncio.sleep(0.5)
    await orch.reconcile([desired(1, fake_tokens_per_s=10.0)])
    assert {i.id: i.state for i in orch.instances()}[newest.id] == "draining"
    response = await asyncio.wait_for(request, 20)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 20
    left = await harness.ready(orch, 1)
    assert newest.id not in {i.id for i in left}
    assert [i.id for i in harness.stopped] == [newest.id]  # before_stop ran first
    await wait_for(lambda: not _alive(pid, start), 5)
    assert newest.id not in harness.records()
    # The log is kept after the instance is gone.
    assert (harness.state_dir / "instances" / "logs" / f"{newest.id}.log").is_file()


async def test_a_new_generation_is_ready_before_the_old_one_drains(harness: Harness) -> None:
    orch = await harness.new()
    await orch.reconcile([desired(1)])
    (old,) = await harness.ready(orch, 1)
    seen_at_stop: list[list[InstanceInfo]] = []

    async def before_stop(info: InstanceInfo) -> None:
        seen_at_stop.append(orch.instances())

    orch._before_stop = before_stop
    proxy = f"127.0.0.1:{harness.cluster.proxy.data_address[1]}"
    failures: list[int] = []
    done = asyncio.Event()

    async def traffic() -> None:
        while not done.is_set():
            response = await asyncio.to_thread(_chat, proxy)
            if response.status_code != 200:
                failures.append(response.status_code)

    client = asyncio.create_task(traffic())
    await orch.reconcile([desired(1, generation=2, fake_latency_ms=1.0)])
    await wait_for(lambda: [i.generation for i in orch.instances()] == [2] and _ready(orch), 30, 0.05)
    harness.remember()
    done.set()
    await asyncio.wait_for(client, 20)
    assert len(seen_at_stop) == 1
    states = {(i.generation, i.state) for i in seen_at_stop[0]}
    assert (2, "ready") in states and (1, "draining") in states
    assert old.id not in {i.id for i in orch.instances()}
    assert failures == []


def _ready(orch: LocalOrchestrator) -> bool:
    return all(i.state == "ready" for i in orch.instances())


async def test_a_new_orchestrator_adopts_running_instances_without_duplicates(harness: Harness) -> None:
    first = await harness.new()
    await first.reconcile([desired(2)])
    before = await harness.ready(first, 2)
    pids = {r["id"]: r["pid"] for r in harness.records().values()}
    await first.aclose()  # the driver goes away; its instances keep running
    second = await harness.new()
    adopted = second.instances()
    assert {i.id for i in adopted} == {i.id for i in before}
    assert {i.state for i in adopted} == {"ready"}  # start() probed them once
    await second.reconcile([desired(2)])
    await asyncio.sleep(0.5)
    assert {i.id for i in second.instances()} == {i.id for i in before}
    assert {r["id"]: r["pid"] for r in harness.records().values()} == pids
    assert second.status()["deployments"][MODEL].get("starts", 0) == 0


async def test_instances_of_a_deployment_absent_after_a_restart_are_stopped(harness: Harness) -> None:
    first = await harness.new()
    await first.reconcile([desired(1, model="gone")])
    (inst,) = await harness.ready(first, 1)
    record = harness.records()[inst.id]
    await first.aclose()
    second = await harness.new()
    assert [i.id for i in second.instances()] == [inst.id]
    await second.reconcile([])
    await wait_for(lambda: not second.instances(), 20, 0.05)
    assert not _alive(record["pid"], record["pid_start"])
    assert harness.records() == {}


async def test_records_of_dead_or_reused_pids_are_dropped(harness: Harness) -> None:
    root = harness.state_dir / "instances"
    root.mkdir(parents=True)
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()
    me = os.getpid()

    def record(name: str, pid: int, pid_start: int) -> dict[str, Any]:
        return {
            "id": name,
            "deployment": MODEL,
            "generation": 1,
            "pid": pid,
            "pid_start": pid_start,
            "data_port": 1,
            "ops_port": 2,
            "address": "127.0.0.1:1",
            "started": time.time(),
        }

    (root / "dead.json").write_text(json.dumps(record("dead", proc.pid, 1)))
    # This very process, under a start time it does not have: a reused pid, not ours.
    reused_start = (pid_start_time(me) or 0) + 1
    (root / "reused.json").write_text(json.dumps(record("reused", me, reused_start)))
    (root / "broken.json").write_text("{not json")
    orch = await harness.new()
    assert orch.instances() == []
    assert list(root.glob("*.json")) == []
    await orch.reconcile([desired(0)])
    assert orch.instances() == []


async def test_a_spec_that_cannot_start_backs_off(harness: Harness, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    orch = await harness.new(model_dir=str(models))
    began = time.monotonic()
    await orch.reconcile([desired(1, backend="llamacpp", model_path="missing.gguf")])

    def failures() -> bool:
        harness.remember()
        return int(orch.status()["deployments"][MODEL].get("failures", 0)) >= 3

    await wait_for(failures, 30, 0.05)
    elapsed = time.monotonic() - began
    entry = orch.status()["deployments"][MODEL]
    # 1 s, then 2 s, then 4 s between starts: no fork bomb.
    assert entry["starts"] <= 4, entry
    assert elapsed >= 3.0, elapsed
    assert entry["backoff_s"] > 1.0, entry
    logs = list((harness.state_dir / "instances" / "logs").glob("*.log"))
    assert any("model file not found" in p.read_text() for p in logs)
    assert str(models / "missing.gguf") in "".join(p.read_text() for p in logs)


async def test_an_instance_not_ready_in_time_is_killed(harness: Harness) -> None:
    orch = await harness.new()
    # No Python backend loads in 50 ms: each start times out, is killed and backs off.
    await orch.reconcile([desired(1, cold_start_timeout_s=0.05)])
    await wait_for(orch.instances, 5)
    harness.remember()
    first = orch.instances()[0].id
    pid = next(p for p in harness.pids)
    start = harness.pids[pid]
    assert start is not None

    def gone() -> bool:
        harness.remember()
        return first not in {i.id for i in orch.instances()}

    await wait_for(gone, 10, 0.05)
    await wait_for(lambda: not _alive(pid, start), 5)
    assert orch.status()["deployments"][MODEL]["failures"] >= 1
