"""What a hostile review of serverless deployments found, each now a regression test:
a cold start must not hold up other models, nor fill the queue; one admin request, or
a PATCH storm, must not fork the machine; validated values are what instances get;
no symlink leads out of --model-dir; a drain sends SIGTERM at once."""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from inferno.config import AdmissionConfig, HealthCheckConfig, RegistryConfig
from inferno.deployments.spec import AutoScalingConfig, DeploymentSpec, parse_spec
from inferno.errors import BadRequest
from inferno.orchestrators import DesiredDeployment, LocalOrchestrator
from inferno.policies import LoadBalancingPolicy
from inferno.proxy.admission import AdmissionController
from inferno.registry.registry import WorkerRegistry
from inferno.schemas.registration import ModelSpec, RegistrationPayload
from inferno.schemas.routing import RequestContext
from tests.unit.test_registry import FakeClock


@dataclass(frozen=True)
class _Limits:
    cold_start_timeout_s: float = 20.0
    max_pending: int = 64


class _ColdStarts:
    """One deployment, "cold", at zero instances (its start takes long or fails)."""

    def lookup(self, model: str | None) -> _Limits | None:
        return _Limits() if model == "cold" else None

    def default_for(self, task: str) -> str | None:
        return None

    def wake(self, model: str) -> None:
        pass

    def refused(self, model: str) -> None:
        pass

    def starting(self, model: str) -> bool:
        return model == "cold"

    def observe_cold_start(self, model: str, seconds: float) -> None:
        pass


async def test_a_cold_start_waiter_does_not_stall_requests_for_other_ready_models() -> None:
    """Found by review: while any request waits for a cold start, a request for a
    *different* model whose backend is idle and ready skips the fast path
    (``if not self._waiters``), is queued, and nothing dispatches it: it waits the whole
    queue timeout and gets 429. Live repro: one request to a deployment at zero whose
    start is slow/fails, then a request to a ready deployment -> 30 s then 429."""
    clock = FakeClock()
    reg = WorkerRegistry(RegistryConfig(), HealthCheckConfig(), clock=clock, wall_clock=clock)
    reg.register(RegistrationPayload(address="h:1", node_id="n", models=(ModelSpec(id="warm"),)))
    adm = AdmissionController(
        AdmissionConfig(max_in_flight_per_backend=4, queue_timeout_s=2.0),
        reg,
        LoadBalancingPolicy.create("round_robin"),
        clock=clock,
        cold_starts=_ColdStarts(),
    )
    cold = asyncio.create_task(adm.acquire(RequestContext("c", model="cold"), timeout_s=20))
    await asyncio.sleep(0)
    try:
        worker = await asyncio.wait_for(adm.acquire(RequestContext("w", model="warm"), timeout_s=20), 1.0)
    finally:
        cold.cancel()
    assert worker.address == "h:1"


async def test_cold_start_waiters_do_not_fill_the_queue_for_everyone() -> None:
    """Found by review: cold-start waiters count in ``_waiters`` but are admitted past
    ``max_queue``; ``max_queue`` of them (e.g. 4 deployments x the default max_pending
    64 = 256, from one anonymous client) make every other model's request 429
    "the request queue is full" although its backend is idle."""
    clock = FakeClock()
    reg = WorkerRegistry(RegistryConfig(), HealthCheckConfig(), clock=clock, wall_clock=clock)
    reg.register(RegistrationPayload(address="h:1", node_id="n", models=(ModelSpec(id="warm"),)))
    adm = AdmissionController(
        AdmissionConfig(max_in_flight_per_backend=4, max_queue=8),
        reg,
        LoadBalancingPolicy.create("round_robin"),
        clock=clock,
        cold_starts=_ColdStarts(),
    )
    cold = [
        asyncio.create_task(adm.acquire(RequestContext(f"c{i}", model="cold"), timeout_s=20))
        for i in range(8)
    ]
    await asyncio.sleep(0)
    try:
        worker = await asyncio.wait_for(adm.acquire(RequestContext("w", model="warm"), timeout_s=20), 1.0)
    finally:
        for task in cold:
            task.cancel()
    assert worker.address == "h:1"


def _fake_python(tmp_path: Path) -> str:
    """Stands in for ``python -m inferno backend``: a process that never gets ready."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\nexec sleep 20\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def _desired(replicas: int, generation: int = 1, model: str = "dep") -> DesiredDeployment:
    spec = DeploymentSpec(
        model=model,
        backend="fake",
        backend_config={"fake_tokens_per_s": float(1000 + generation)},
        auto_scaling_config=AutoScalingConfig(min_instances=replicas, max_instances=64, drain_timeout_s=0),
    )
    return DesiredDeployment(spec, generation, replicas)


async def _spawned(tmp_path: Path, steps: list[list[DesiredDeployment]]) -> int:
    from inferno.orchestrators.processes import stop_all

    state = tmp_path / "state"
    orch = LocalOrchestrator(str(state), "127.0.0.1:1", python=_fake_python(tmp_path), probe_interval_s=5)
    await orch.start()
    try:
        for desired in steps:
            await orch.reconcile(desired)
            await asyncio.sleep(0)
        return len(list((state / "instances" / "logs").glob("*.log")))
    finally:
        await orch.aclose()
        await asyncio.to_thread(stop_all, str(state), 5.0)


async def test_one_admin_request_does_not_fork_max_instances_processes_at_once(tmp_path: Path) -> None:
    """Found by review: nothing bounds how many ``inferno backend`` processes start at
    once, nor in total: one POST with min_instances=64 forks 64 Python processes in one
    step; 256 deployments x 64 = 16384 may be asked for. Suggest a global
    --max-instances budget and a cap on concurrent starts (e.g. 2-4 per step)."""
    started = await _spawned(tmp_path, [[_desired(64)]])
    assert started <= 8, f"{started} processes forked by one reconcile"


async def test_a_patch_storm_is_not_a_fork_storm(tmp_path: Path) -> None:
    """Found by review: every PATCH that changes backend_config bumps the generation
    and starts a whole new generation at once, stopping the previous still-starting
    one; 15 PATCHes at 2 instances forked ~30 processes within a second (live repro).
    Nothing limits the roll rate. Suggest: at most one roll in flight per deployment
    (queue the latest spec), and count starts against a budget."""
    started = await _spawned(tmp_path, [[_desired(4, generation)] for generation in range(1, 11)])
    assert started <= 8, f"{started} processes forked by 10 rolls"


@pytest.mark.parametrize(("config", "value"), [({"n_parallel": 2.0}, 2), ({"n_parallel": "3"}, 3)])
def test_instances_get_the_validated_values(config: dict[str, object], value: int) -> None:
    """Found by review: backend_config was validated in pydantic's lax mode but the raw
    values went on the command line, where 2.0 is no integer: the deployment could never
    start. Instances get the validated values; infinities are refused."""
    from inferno.cli.backend import backend
    from inferno.orchestrators.processes import backend_argv

    spec = parse_spec({"model": "m", "backend": "fake", "backend_config": config}, model_dir=None)
    assert spec.backend_config == {"n_parallel": value}
    argv = backend_argv("/py", spec, "m-1", (1, 2), "127.0.0.1:6100", None)
    assert backend.make_context("backend", argv[4:]).params["n_parallel"] == value
    with pytest.raises(BadRequest, match="fake_latency_ms"):
        parse_spec(
            {"model": "m", "backend": "fake", "backend_config": {"fake_latency_ms": "inf"}}, model_dir=None
        )


def test_no_symlink_leads_out_of_the_model_dir(tmp_path: Path) -> None:
    """Found by review: check_paths uses normpath, not realpath: a symlink inside
    --model-dir (e.g. models/etc -> /etc) lets model_path / cache_dir name any file or
    directory (efficientnet's cache_dir is *written* to). Suggest os.path.realpath on
    both sides (and at start time too: the link may change after the check)."""
    models = tmp_path / "models"
    models.mkdir()
    os.symlink("/etc", models / "etc")
    with pytest.raises(BadRequest):
        parse_spec(
            {"model": "m", "backend": "llamacpp", "backend_config": {"model_path": "etc/passwd"}},
            model_dir=str(models),
        )


async def test_a_drain_sends_sigterm_without_waiting_for_before_stop(
    tmp_path: Path,
) -> None:
    """Found by review: ``_drain`` sends SIGTERM only after ``before_stop`` (which waits
    up to drain_timeout_s for in-flight requests). Live repro: DELETE a deployment with a
    stream in flight, ``kill -9`` the proxy: the instance never got SIGTERM and ran on
    for 27 minutes (deleted deployment, proxy gone) until a proxy restarted on the same
    --state-dir. Suggest: SIGTERM at once (the backend deregisters and drains itself),
    and/or instances that exit when their proxy stays unreachable for a lease period."""
    from inferno.orchestrators.processes import stop_all

    marker = tmp_path / "termed"
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\ntrap 'touch {marker}; exit 0' TERM\nwhile :; do sleep 0.1; done\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    gate = asyncio.Event()

    async def before_stop(_: object) -> None:
        await gate.wait()  # in-flight requests still finishing

    state = tmp_path / "state"
    orch = LocalOrchestrator(
        str(state), "127.0.0.1:1", python=str(script), probe_interval_s=5, before_stop=before_stop
    )
    await orch.start()
    try:
        spec = DesiredDeployment(
            DeploymentSpec(
                model="dep",
                backend="fake",
                auto_scaling_config=AutoScalingConfig(min_instances=1, drain_timeout_s=20),
            ),
            1,
            1,
        )
        await orch.reconcile([spec])
        await asyncio.sleep(0.3)
        await orch.reconcile([DesiredDeployment(spec.spec, 1, 0, True)])
        for _ in range(20):
            await asyncio.sleep(0.1)
            if marker.exists():
                break
        termed = marker.exists()
    finally:
        gate.set()
        await orch.aclose()
        await asyncio.to_thread(stop_all, str(state), 5.0)
    assert termed, "the instance got no SIGTERM while before_stop waited"
