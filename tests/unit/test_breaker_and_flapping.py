"""Circuit breaker, ejection backoff and flapping, driven by an injected clock."""

from __future__ import annotations

from inferno.config import HealthCheckConfig, OutlierConfig, RegistryConfig
from inferno.registry.breaker import BreakerState, CircuitBreaker
from inferno.registry.registry import WorkerRegistry
from inferno.registry.worker import WorkerStatus
from inferno.schemas.registration import RegistrationPayload
from tests.unit.test_registry import FakeClock

OUTLIER = OutlierConfig(consecutive_failures=3, base_ejection_s=5.0, max_ejection_s=30.0)


def registry(clock: FakeClock, k: int = 2, m: int = 2) -> WorkerRegistry:
    return WorkerRegistry(
        RegistryConfig(heartbeat_timeout_s=1e6, ttl_s=1e7),
        HealthCheckConfig(unhealthy_threshold=k, healthy_threshold=m),
        clock=clock,
        wall_clock=clock,
        outlier_config=OUTLIER,
    )


def test_breaker_opens_after_n_failures_and_backoff_doubles_capped() -> None:
    breaker = CircuitBreaker(OUTLIER)
    assert not breaker.on_failure(0.0) and not breaker.on_failure(0.0)
    assert breaker.on_failure(0.0) and breaker.state is BreakerState.OPEN
    assert breaker.open_until == 5.0
    assert not breaker.poll(4.9) and breaker.poll(5.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allows(0) and not breaker.allows(1)  # one trial at a time
    assert breaker.on_failure(5.0)  # the trial failed: open again, twice as long
    assert breaker.open_until == 15.0
    breaker.poll(15.0)
    breaker.on_failure(15.0)
    assert breaker.open_until == 15.0 + 20.0
    breaker.poll(35.0)
    breaker.on_failure(35.0)
    assert breaker.open_until == 35.0 + 30.0  # capped at max_ejection_s
    breaker.poll(65.0)
    assert breaker.on_success() and breaker.state is BreakerState.CLOSED
    assert breaker.ejections == 0 and breaker.ejection_s() == 5.0


def test_a_success_resets_the_failure_streak() -> None:
    breaker = CircuitBreaker(OUTLIER)
    for _ in range(10):
        breaker.on_failure(0.0)
        breaker.on_failure(0.0)
        breaker.on_success()
    assert breaker.state is BreakerState.CLOSED


def test_registry_ejects_and_readmits_through_half_open() -> None:
    clock = FakeClock()
    reg = registry(clock)
    worker = reg.register(RegistrationPayload(address="h:1", node_id="n"))
    for _ in range(3):
        reg.record_failure(worker, "timeout")
    assert worker.status is WorkerStatus.EJECTED and reg.routable() == ()
    assert worker.to_json()["circuit"] == "open"
    clock.now += 4.0
    reg.sweep()
    assert worker.status is WorkerStatus.EJECTED
    clock.now += 1.0
    reg.sweep()
    assert worker.status is WorkerStatus.HEALTHY and worker.breaker.state is BreakerState.HALF_OPEN
    assert worker.has_capacity(8)
    worker.in_flight = 1
    assert not worker.has_capacity(8)  # only one trial request
    worker.in_flight = 0
    reg.record_failure(worker, "timeout")  # trial failed
    assert worker.status is WorkerStatus.EJECTED and worker.breaker.ejections == 2
    clock.now += 10.0
    reg.sweep()
    reg.record_success(worker)
    assert worker.status is WorkerStatus.HEALTHY and worker.breaker.state is BreakerState.CLOSED


def test_client_errors_never_eject() -> None:
    reg = registry(FakeClock())
    worker = reg.register(RegistrationPayload(address="h:1", node_id="n"))
    for _ in range(100):
        reg.record_success(worker)  # what the proxy records for a backend's 4xx
    reg.record_failure(worker, "timeout")
    reg.record_failure(worker, "timeout")
    reg.record_success(worker)
    reg.record_failure(worker, "timeout")
    assert worker.status is WorkerStatus.HEALTHY


def test_flapping_backend_changes_state_no_faster_than_thresholds() -> None:
    clock = FakeClock()
    reg = registry(clock, k=2, m=2)
    worker = reg.register(RegistrationPayload(address="h:1", node_id="n"))
    statuses = []
    # up, down, up, down ... every probe: never two in a row either way
    for i in range(40):
        reg.record_probe("h:1", ok=i % 2 == 0)
        statuses.append(worker.status)
    assert set(statuses) == {WorkerStatus.HEALTHY}
    # down twice: unhealthy; then up, down, up, down: stays unhealthy
    reg.record_probe("h:1", False)
    reg.record_probe("h:1", False)
    assert worker.status is WorkerStatus.UNHEALTHY
    for i in range(40):
        reg.record_probe("h:1", ok=i % 2 == 0)
        assert worker.status is WorkerStatus.UNHEALTHY
    # a real recovery: M good probes in a row
    reg.record_probe("h:1", True)
    reg.record_probe("h:1", True)
    assert worker.status is WorkerStatus.HEALTHY


def test_flap_transitions_are_bounded_by_thresholds() -> None:
    """Any probe sequence: each transition needs K (down) or M (up) probes since the last."""
    import random

    rng = random.Random(11)
    reg = registry(FakeClock(), k=3, m=2)
    worker = reg.register(RegistrationPayload(address="h:1", node_id="n"))
    last_status, since_change = worker.status, 0
    for _ in range(2000):
        reg.record_probe("h:1", ok=rng.random() < 0.5)
        since_change += 1
        if worker.status is not last_status:
            needed = 3 if worker.status is WorkerStatus.UNHEALTHY else 2
            assert since_change >= needed
            last_status, since_change = worker.status, 0
