"""Admission by expected wait: the service-time estimator and the refusals it drives.

Injected clock throughout: a request "holds a slot" for as long as the test moves
the clock between acquire and release.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from inferno.config import AdmissionConfig, HealthCheckConfig, RegistryConfig
from inferno.errors import Overloaded
from inferno.policies import LoadBalancingPolicy
from inferno.proxy.admission import AdmissionController
from inferno.proxy.waits import ServiceTimes, expected_wait_s, retry_after_s
from inferno.registry.registry import WorkerRegistry
from inferno.schemas.registration import RegistrationPayload
from inferno.schemas.routing import Priority, RequestContext
from tests.unit.test_registry import FakeClock


# -- the estimator alone -------------------------------------------------------------------
def test_no_estimate_until_warmed_up_then_the_mean_hold_time() -> None:
    clock = FakeClock()
    times = ServiceTimes(alpha=0.2, min_samples=3, clock=clock)
    for n in range(3):
        assert times.service_s("a") is None and times.rate([("a", 2)]) is None
        times.started("a")
        clock.now += 1.0 + n  # held 1 s, 2 s, 3 s
        times.finished("a")
    assert times.service_s("a") == pytest.approx(2.0)  # a plain mean while warming up
    assert times.rate([("a", 2)]) == pytest.approx((1.0, 2.0))  # 2 slots / 2 s, 2 s each
    # Then an EWMA: the newest request weighs alpha.
    times.started("a")
    clock.now += 12.0
    times.finished("a")
    assert times.service_s("a") == pytest.approx(2.0 + 0.2 * 10.0)


def test_a_pool_has_no_rate_while_one_backend_is_unmeasured_and_forget_restarts() -> None:
    clock = FakeClock()
    times = ServiceTimes(alpha=0.5, min_samples=1, clock=clock)
    times.started("a")
    clock.now += 0.5
    times.finished("a")
    assert times.rate([("a", 1)]) == pytest.approx((2.0, 0.5))
    assert times.rate([("a", 1), ("b", 4)]) is None
    times.forget("a")
    assert times.rate([("a", 1)]) is None
    times.finished("a")  # released after being forgotten: no sample, no error
    assert times.service_s("a") is None


def test_overlapping_requests_pair_in_fifo_order_without_bias() -> None:
    clock = FakeClock()
    times = ServiceTimes(alpha=0.2, min_samples=2, clock=clock)
    t0 = clock.now
    times.started("a")  # the long one, at t0
    clock.now = t0 + 1.0
    times.started("a")  # the short one, at t0 + 1
    clock.now = t0 + 2.0
    times.finished("a")  # the short one (held 1 s), paired with t0: 2 s
    clock.now = t0 + 5.0
    times.finished("a")  # the long one (held 5 s), paired with t0 + 1: 4 s
    # The samples swapped, the mean did not: (1 + 5) / 2 = (2 + 4) / 2.
    assert times.service_s("a") == pytest.approx(3.0)


def test_answers_that_vary_are_planned_for_their_slow_ones() -> None:
    clock = FakeClock()
    steady = ServiceTimes(alpha=0.2, min_samples=4, clock=clock, deviations=2.0)
    varied = ServiceTimes(alpha=0.2, min_samples=4, clock=clock, deviations=2.0)
    for held_steady, held_varied in ((2.0, 1.0), (2.0, 3.0), (2.0, 1.0), (2.0, 3.0)):
        for times, held in ((steady, held_steady), (varied, held_varied)):
            times.started("a")
            clock.now += held
            times.finished("a")
    assert steady.service_s("a") == pytest.approx(2.0)  # no deviation: the mean
    # The same mean (2 s); the deviations from the running mean (1, 1.5, 0.33, 1.25 s)
    # average about 1 s: planned for about 2 + 2 * 1 s.
    service = varied.service_s("a")
    assert service is not None and 3.7 < service < 4.5


def test_a_failed_try_is_no_sample() -> None:
    clock = FakeClock()
    times = ServiceTimes(alpha=0.5, min_samples=1, clock=clock)
    times.started("a")
    clock.now += 2.0
    times.finished("a")
    times.started("a")  # cut short by its deadline after 0.1 s: says nothing of answers
    clock.now += 0.1
    times.finished("a", failed=True)
    assert times.service_s("a") == pytest.approx(2.0)


def test_expected_wait_and_retry_after() -> None:
    assert expected_wait_s(0, 2.0) == pytest.approx(0.5)
    assert expected_wait_s(3, 2.0) == pytest.approx(2.0)
    assert retry_after_s(4.0, 2.0, 30.0) == 2
    assert retry_after_s(2.1, 2.0, 30.0) == 1  # never 0
    assert retry_after_s(500.0, 30.0, 30.0) == 30  # capped


# -- admission driven by it ----------------------------------------------------------------
class CountingTimes(ServiceTimes):
    """The real estimator, counting how often admission asks it for a rate."""

    asked = 0

    def rate(self, pool: Iterable[tuple[str, int]]) -> tuple[float, float] | None:
        self.asked += 1
        return super().rate(pool)


def setup(clock: FakeClock, *, slots: int = 1, **cfg: float) -> AdmissionController:
    reg = WorkerRegistry(RegistryConfig(), HealthCheckConfig(), clock=clock, wall_clock=clock)
    reg.register(RegistrationPayload(address="h:1", node_id="n"))
    config = AdmissionConfig(max_in_flight_per_backend=slots, **cfg)
    adm = AdmissionController(config, reg, LoadBalancingPolicy.create("round_robin"), clock=clock)
    assert adm.service_times is not None
    adm.service_times = CountingTimes(
        config.service_time_alpha,
        config.wait_estimate_min_samples,
        clock,
        deviations=config.wait_estimate_deviations,
    )
    return adm


def rc(name: str, priority: Priority = Priority.NORMAL) -> RequestContext:
    return RequestContext(name, priority=priority)


async def serve(adm: AdmissionController, clock: FakeClock, n: int, hold_s: float) -> None:
    """``n`` requests one after another, each holding the slot ``hold_s``."""
    for i in range(n):
        worker = await adm.acquire(rc(f"warm{i}"), timeout_s=60)
        clock.now += hold_s
        adm.release(worker)


async def queue(adm: AdmissionController, ctx: RequestContext, timeout_s: float) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.create_task(adm.acquire(ctx, timeout_s=timeout_s))
    await asyncio.sleep(0)
    return task


async def cancel(tasks: list[asyncio.Task[object]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_without_a_measurement_nothing_is_refused_for_its_wait() -> None:
    clock = FakeClock()
    adm = setup(clock, wait_estimate_min_samples=5, queue_timeout_s=30.0)
    await serve(adm, clock, 4, hold_s=10.0)  # one short of warmed up
    holder = await adm.acquire(rc("holder"), timeout_s=60)
    waiters = [await queue(adm, rc(f"w{i}"), timeout_s=0.5) for i in range(5)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in waiters)  # all queued, none refused blindly
    assert adm.rejected["expected_wait"] == 0
    await cancel(waiters)
    adm.release(holder)


async def test_a_burst_fills_the_queue_up_to_what_can_start_in_time() -> None:
    clock = FakeClock()
    adm = setup(clock, wait_estimate_min_samples=5, queue_timeout_s=10.0)
    await serve(adm, clock, 5, hold_s=1.0)  # 1 slot, 1 s per request: 1 request/s
    holder = await adm.acquire(rc("holder"), timeout_s=60)
    # Waiter k starts after (k + 1) s: ten fit within the 10 s queue timeout.
    waiters = [await queue(adm, rc(f"w{i}"), timeout_s=60) for i in range(10)]
    assert not any(t.done() for t in waiters)
    with pytest.raises(Overloaded, match="expected wait") as refused:
        await adm.acquire(rc("eleventh"), timeout_s=60)
    assert refused.value.reason == "expected_wait"
    assert refused.value.headers() == b"Retry-After: 1\r\n"  # ceil(11 s - 10 s)
    assert adm.status()["rejected"] == {
        "queue_full": 0,
        "expected_wait": 1,
        "deadline": 0,
        "queue_timeout": 0,
        "cold_start_pending": 0,
        "cold_start_timeout": 0,
    }
    await cancel(waiters)
    adm.release(holder)


async def test_a_short_deadline_is_refused_at_once_while_a_long_one_is_admitted() -> None:
    clock = FakeClock()
    adm = setup(clock, wait_estimate_min_samples=5, queue_timeout_s=30.0)
    await serve(adm, clock, 5, hold_s=2.0)
    holder = await adm.acquire(rc("holder"), timeout_s=60)
    waiters = [await queue(adm, rc(f"w{i}"), timeout_s=60) for i in range(3)]
    # Three ahead at 2 s each: this one starts after 8 s and is done after 10 s.
    t0 = clock.now
    with pytest.raises(Overloaded) as refused:
        await adm.acquire(rc("short"), timeout_s=9.0)  # X-Inferno-Timeout-Ms: 9000
    assert clock.now == t0  # decided at arrival, not after waiting
    # It would fit once the wait is down to 9 - 2 = 7 s: retry after 1 s.
    assert refused.value.headers() == b"Retry-After: 1\r\n"
    with pytest.raises(Overloaded) as refused:
        await adm.acquire(rc("shorter"), timeout_s=3.0)
    assert refused.value.headers() == b"Retry-After: 7\r\n"  # 8 s expected - (3 - 2) s
    admitted = await queue(adm, rc("long"), timeout_s=10.5)
    assert not admitted.done()
    # A high-priority request has nobody ahead of it: 2 s + 2 s fits its 5 s.
    high = await queue(adm, rc("high", Priority.HIGH), timeout_s=5.0)
    assert not high.done()
    adm.release(holder)
    await asyncio.sleep(0)
    assert high.done() and high.result().address == "h:1"  # type: ignore[attr-defined]
    await cancel([*waiters, admitted])


async def test_a_waiter_that_can_no_longer_finish_is_refused_and_its_slot_goes_on() -> None:
    clock = FakeClock()
    adm = setup(clock, wait_estimate_min_samples=5, queue_timeout_s=30.0)
    await serve(adm, clock, 5, hold_s=2.0)
    holder = await adm.acquire(rc("holder"), timeout_s=60)
    short = await queue(adm, rc("short"), timeout_s=5.0)  # expected: start at 2 s, done at 4 s
    long = await queue(adm, rc("long"), timeout_s=60.0)
    clock.now += 3.5  # a stall: the holder takes 3.5 s instead of 2
    adm.release(holder)
    await asyncio.sleep(0)
    # 1.5 s left, 2 s needed: its try would be cut short and waste the slot.
    with pytest.raises(Overloaded, match="before this request's deadline") as refused:
        short.result()
    assert refused.value.reason == "deadline" and adm.rejected["deadline"] == 1
    assert long.done() and long.result().address == "h:1"  # type: ignore[attr-defined]


async def test_urgent_is_never_refused_for_its_expected_wait() -> None:
    clock = FakeClock()
    adm = setup(clock, wait_estimate_min_samples=1, queue_timeout_s=30.0)
    await serve(adm, clock, 1, hold_s=100.0)
    holder = await adm.acquire(rc("holder"), timeout_s=60)
    with pytest.raises(Overloaded):
        await adm.acquire(rc("normal"), timeout_s=1.0)
    urgent = asyncio.create_task(adm.acquire(rc("migrating"), timeout_s=1.0, urgent=True))
    await asyncio.sleep(0)
    assert not urgent.done()
    adm.release(holder)
    await asyncio.sleep(0)
    assert urgent.done() and urgent.result().address == "h:1"


async def test_a_free_slot_skips_the_estimate_and_zero_min_samples_turns_it_off() -> None:
    clock = FakeClock()
    adm = setup(clock, slots=2, wait_estimate_min_samples=1)
    await serve(adm, clock, 3, hold_s=5.0)
    times = adm.service_times
    assert isinstance(times, CountingTimes)
    before = times.asked
    for _ in range(50):
        adm.release(await adm.acquire(rc("fast"), timeout_s=0.001))
    assert times.asked == before  # a slot was free every time: no estimate was made
    off = AdmissionController(
        AdmissionConfig(wait_estimate_min_samples=0),
        WorkerRegistry(RegistryConfig(), HealthCheckConfig(), clock=clock),
        LoadBalancingPolicy.create("round_robin"),
        clock=clock,
    )
    assert off.service_times is None


async def test_a_removed_backend_is_measured_afresh() -> None:
    clock = FakeClock()
    adm = setup(clock, wait_estimate_min_samples=1)
    await serve(adm, clock, 1, hold_s=100.0)
    times = adm.service_times
    assert times is not None and times.service_s("h:1") == pytest.approx(100.0)
    adm._registry.deregister("h:1")
    assert times.service_s("h:1") is None
