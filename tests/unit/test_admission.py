"""Admission queue: priority order, aging (bounded starvation), bounds. Injected clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from inferno.config import AdmissionConfig, HealthCheckConfig, RegistryConfig
from inferno.errors import NoBackendAvailable, Overloaded
from inferno.policies import LoadBalancingPolicy
from inferno.proxy.admission import AdmissionController
from inferno.registry.registry import WorkerRegistry
from inferno.schemas.registration import RegistrationPayload
from inferno.schemas.routing import Priority, RequestContext
from tests.unit.test_registry import FakeClock


def setup(clock: FakeClock, **cfg: float) -> tuple[AdmissionController, WorkerRegistry]:
    reg = WorkerRegistry(RegistryConfig(), HealthCheckConfig(), clock=clock, wall_clock=clock)
    reg.register(RegistrationPayload(address="h:1", node_id="n"))
    config = AdmissionConfig(max_in_flight_per_backend=1, **cfg)
    return AdmissionController(config, reg, LoadBalancingPolicy.create("round_robin"), clock=clock), reg


def rc(name: str, priority: Priority) -> RequestContext:
    return RequestContext(name, priority=priority)


async def test_priority_order_then_arrival_order() -> None:
    clock = FakeClock()
    adm, _ = setup(clock, aging_s=100.0)
    holder = await adm.acquire(rc("first", Priority.NORMAL), timeout_s=5)
    order: list[str] = []

    async def queued(name: str, priority: Priority) -> None:
        worker = await adm.acquire(rc(name, priority), timeout_s=5)
        order.append(name)
        adm.release(worker)

    tasks = []
    for name, priority in [
        ("low1", Priority.LOW),
        ("normal1", Priority.NORMAL),
        ("high1", Priority.HIGH),
        ("high2", Priority.HIGH),
    ]:
        tasks.append(asyncio.create_task(queued(name, priority)))
        await asyncio.sleep(0)
        clock.now += 0.01
    assert adm.status()["by_priority"] == {"high": 2, "normal": 1, "low": 1}
    adm.release(holder)
    await asyncio.gather(*tasks)
    assert order == ["high1", "high2", "normal1", "low1"]


async def test_aging_bounds_starvation_of_low() -> None:
    clock = FakeClock()
    adm, _ = setup(clock, aging_s=1.0)
    holder = await adm.acquire(rc("busy", Priority.HIGH), timeout_s=5)
    low = asyncio.create_task(adm.acquire(rc("low", Priority.LOW), timeout_s=60))
    await asyncio.sleep(0)
    # sustained high load: a new high request arrives every 0.5 s, one is served per 0.5 s
    served: list[str] = []
    for i in range(10):
        clock.now += 0.5
        high = asyncio.create_task(adm.acquire(rc(f"high{i}", Priority.HIGH), timeout_s=60))
        await asyncio.sleep(0)
        adm.release(holder)
        await asyncio.sleep(0)
        if low.done():
            served.append("low")
            break
        holder = await high
        served.append(f"high{i}")
    # low (class 2) competes as high after 2 aging periods and then beats later highs
    assert "low" in served
    assert served.index("low") <= 4, served


async def test_queue_full_is_overloaded() -> None:
    clock = FakeClock()
    adm, _ = setup(clock, max_queue=2)
    await adm.acquire(rc("a", Priority.NORMAL), timeout_s=5)
    w1 = asyncio.create_task(adm.acquire(rc("b", Priority.NORMAL), timeout_s=5))
    w2 = asyncio.create_task(adm.acquire(rc("c", Priority.NORMAL), timeout_s=5))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="queue is full"):
        await adm.acquire(rc("d", Priority.NORMAL), timeout_s=5)
    w1.cancel()
    w2.cancel()
    await asyncio.gather(w1, w2, return_exceptions=True)
    assert adm.status()["size"] == 0


async def test_queue_wait_has_its_own_deadline() -> None:
    adm, _ = setup(FakeClock(), queue_timeout_s=0.05)
    await adm.acquire(rc("a", Priority.NORMAL), timeout_s=5)
    with pytest.raises(Overloaded, match="no backend capacity"):
        await adm.acquire(rc("b", Priority.NORMAL), timeout_s=5)
    assert adm.status()["size"] == 0


async def test_cancelled_waiter_leaves_no_trace_and_capacity_is_not_lost() -> None:
    adm, reg = setup(FakeClock())
    holder = await adm.acquire(rc("a", Priority.NORMAL), timeout_s=5)
    waiter = asyncio.create_task(adm.acquire(rc("b", Priority.NORMAL), timeout_s=5))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    adm.release(holder)
    worker = reg.routable()[0]
    assert worker.in_flight == 0
    again = await adm.acquire(rc("c", Priority.NORMAL), timeout_s=5)
    assert again is worker and worker.in_flight == 1


async def test_no_backend_at_all_is_503_not_a_queue() -> None:
    clock = FakeClock()
    adm, reg = setup(clock)
    reg.deregister("h:1")
    with pytest.raises(NoBackendAvailable):
        await adm.acquire(rc("a", Priority.NORMAL), timeout_s=5)


def make_forwarder(clock: FakeClock, retry: object = None, rng: object = None) -> object:
    import random

    from inferno.config import DeadlineConfig, RetryConfig, UpstreamConfig
    from inferno.http.client import UpstreamPool
    from inferno.observability.metrics import ProxyStats
    from inferno.proxy.forward import Forwarder

    adm, reg = setup(clock)
    return Forwarder(
        reg,
        adm,
        UpstreamPool(),
        ProxyStats(),
        UpstreamConfig(),
        retry if isinstance(retry, RetryConfig) else RetryConfig(),
        DeadlineConfig(),
        clock=clock,
        rng=rng if isinstance(rng, random.Random) else random.Random(5),
    )


def test_retry_backoff_is_full_jitter_capped() -> None:
    from inferno.config import RetryConfig

    fwd: Any = make_forwarder(FakeClock(), RetryConfig(backoff_base_ms=20, backoff_max_ms=100))
    for attempt, ceiling in [(1, 0.02), (2, 0.04), (3, 0.08), (4, 0.1), (9, 0.1)]:
        samples = [fwd._backoff_s(attempt) for _ in range(500)]
        assert min(samples) >= 0 and max(samples) <= ceiling
        assert max(samples) > 0.9 * ceiling and min(samples) < 0.1 * ceiling  # spread: jitter


def test_per_try_timeout_rule() -> None:
    from inferno.proxy.forward import Job
    from inferno.registry.worker import WorkerInfo
    from inferno.schemas.registration import NodeVitals

    clock = FakeClock()
    fwd: Any = make_forwarder(clock)
    worker = WorkerInfo("h:1", node_id="n")
    job = Job(RequestContext("r"), b"/inference", b"{}", 256, clock.now, clock.now + 120)
    # unknown speed: 2 + 3 * 256 / 20
    assert fwd.per_try_timeout(worker, job, can_retry=True) == pytest.approx(2 + 3 * 256 / 20)
    worker.vitals = NodeVitals(decode_tokens_per_s=64.0)
    assert fwd.per_try_timeout(worker, job, can_retry=True) == pytest.approx(2 + 3 * 256 / 64)
    # capped below the deadline while a retry is possible, at the deadline otherwise
    short = Job(RequestContext("r"), b"/inference", b"{}", 256, clock.now, clock.now + 5)
    assert fwd.per_try_timeout(worker, short, can_retry=True) == pytest.approx(4.0)
    assert fwd.per_try_timeout(worker, short, can_retry=False) == pytest.approx(5.0)


async def test_affinity_waits_a_bounded_time_for_a_busy_home_backend() -> None:
    """prefix_affinity: a request whose home backend is at its slot limit waits for it
    (its prefix is cached there) rather than going cold to a free backend; after
    --affinity-max-wait-s it takes any free one."""
    clock = FakeClock()
    reg = WorkerRegistry(RegistryConfig(), HealthCheckConfig(), clock=clock, wall_clock=clock)
    for i in range(2):
        reg.register(RegistrationPayload(address=f"h:{i + 1}", node_id=f"n{i}"))
    policy = LoadBalancingPolicy.create("prefix_affinity")
    adm = AdmissionController(
        AdmissionConfig(max_in_flight_per_backend=1), reg, policy, clock=clock, affinity_wait_s=2.0
    )
    shared = RequestContext("a", prompt_prefix="the same long document prefix")
    home = await adm.acquire(shared, timeout_s=5)
    waiting = asyncio.create_task(
        adm.acquire(RequestContext("b", prompt_prefix=shared.prompt_prefix), timeout_s=5)
    )
    await asyncio.sleep(0)
    assert not waiting.done()  # the other backend is free, but this one is its home
    adm.release(home)
    assert await waiting is home  # handed its home as soon as it freed (and holds it)
    # Home busy again: after the wait bound the next one takes the free backend.
    late = asyncio.create_task(
        adm.acquire(RequestContext("d", prompt_prefix=shared.prompt_prefix), timeout_s=5)
    )
    await asyncio.sleep(0)
    assert not late.done()
    clock.now += 2.1
    adm.dispatch()  # what the wait's timer does when it fires
    other = await late
    assert other is not home
    assert adm._home_waiting == {}  # bookkeeping returns to zero


async def test_round_robin_never_waits_for_a_home() -> None:
    clock = FakeClock()
    adm, reg = setup(clock)
    reg.register(RegistrationPayload(address="h:2", node_id="n2"))
    first = await adm.acquire(rc("a", Priority.NORMAL), timeout_s=5)
    second = await adm.acquire(rc("b", Priority.NORMAL), timeout_s=5)
    assert first is not second
