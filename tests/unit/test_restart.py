"""A backend that restarts (a new process at a known address) starts with a closed
circuit and is routable at once; the same process heartbeating changes nothing.
Injected clock."""

from __future__ import annotations

import asyncio

from inferno.config import AdmissionConfig, HealthCheckConfig, OutlierConfig, RegistryConfig
from inferno.policies import LoadBalancingPolicy
from inferno.proxy.admission import AdmissionController
from inferno.registry.breaker import BreakerState
from inferno.registry.registry import WorkerRegistry
from inferno.registry.worker import WorkerStatus
from inferno.schemas.registration import RegistrationPayload
from inferno.schemas.routing import RequestContext
from tests.unit.test_registry import FakeClock

ADDR = "10.0.0.5:3000"


def make(clock: FakeClock) -> WorkerRegistry:
    return WorkerRegistry(
        RegistryConfig(),
        HealthCheckConfig(),
        clock=clock,
        wall_clock=clock,
        outlier_config=OutlierConfig(consecutive_failures=3, base_ejection_s=30.0),
    )


def payload(instance: str | None) -> RegistrationPayload:
    return RegistrationPayload(address=ADDR, node_id="n1", models=("m",), instance_id=instance)


def killed(reg: WorkerRegistry) -> None:
    """What a SIGKILL under load looks like: in-flight tries break, the next is refused."""
    worker = reg.get(ADDR)
    assert worker is not None
    for _ in range(3):
        reg.record_failure(worker, "connection_broken")
    reg.report_refused(ADDR)
    assert worker.breaker.state is BreakerState.OPEN and worker.status is WorkerStatus.UNHEALTHY


def test_a_new_process_at_the_address_gets_a_fresh_breaker_and_is_routable() -> None:
    clock = FakeClock()
    reg = make(clock)
    removed: list[str] = []
    reg.on_removed(removed.append)
    reg.register(payload("first"))
    killed(reg)
    clock.now += 1.0
    worker = reg.register(payload("second"))
    assert worker.status is WorkerStatus.HEALTHY and worker.status_reason == "re-registered"
    assert worker.breaker.state is BreakerState.CLOSED and worker.breaker.ejections == 0
    assert worker.has_capacity(1)
    assert reg.routable_for("m") == (worker,)
    assert worker.registered_at == clock.now and worker.to_json()["instance_id"] == "second"
    assert removed == [ADDR]  # the old process's connections and service times go
    assert [e.kind for e in reg.events.since(0)][-2:] == ["registered", "recovered"]


def test_the_same_process_heartbeating_keeps_its_open_circuit() -> None:
    clock = FakeClock()
    reg = make(clock)
    reg.register(payload("first"))
    killed(reg)
    for instance in ("first", None):  # the same process; or a backend that sends no id
        worker = reg.register(payload(instance))
        assert worker.breaker.state is BreakerState.OPEN
        assert worker.status is WorkerStatus.UNHEALTHY
        assert reg.routable() == ()


def test_a_restart_seen_healthy_by_probes_first_still_closes_its_circuit() -> None:
    clock = FakeClock()
    reg = make(clock)
    reg.register(payload("first"))
    killed(reg)
    reg.record_probe(ADDR, ok=True)  # the new process answered a probe before registering
    worker = reg.get(ADDR)
    assert worker is not None and worker.status is WorkerStatus.HEALTHY
    assert not worker.has_capacity(1)  # "healthy", but its circuit is open
    changes: list[int] = []
    reg.on_change(lambda: changes.append(1))
    reg.register(payload("second"))
    assert worker.has_capacity(1) and changes  # and the queue is told


async def test_a_migrating_stream_gets_the_backend_as_soon_as_it_re_registers() -> None:
    clock = FakeClock()
    reg = make(clock)
    reg.register(payload("first"))
    adm = AdmissionController(AdmissionConfig(), reg, LoadBalancingPolicy.create("round_robin"), clock=clock)
    killed(reg)
    urgent = asyncio.create_task(adm.acquire(RequestContext("s", model="m"), timeout_s=60, urgent=True))
    await asyncio.sleep(0)
    assert not urgent.done()  # waiting for the only backend to come back
    reg.register(payload("second"))
    await asyncio.sleep(0)
    assert urgent.done() and urgent.result().address == ADDR
