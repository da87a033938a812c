"""WorkerRegistry state machine, driven by an injected clock."""

from __future__ import annotations

import pytest

from inferno.config import HealthCheckConfig, RegistryConfig
from inferno.errors import ConfigError
from inferno.registry.health import advertised_slots
from inferno.registry.registry import WorkerRegistry, parse_static_backend
from inferno.registry.worker import WorkerStatus
from inferno.schemas.registration import RegistrationPayload


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, **health: int) -> WorkerRegistry:
    return WorkerRegistry(
        RegistryConfig(heartbeat_timeout_s=6.0, ttl_s=30.0),
        HealthCheckConfig(unhealthy_threshold=health.get("k", 2), healthy_threshold=health.get("m", 2)),
        clock=clock,
        wall_clock=clock,
    )


def payload(addr: str = "10.0.0.5:3000", node: str = "n1", **kw: object) -> RegistrationPayload:
    return RegistrationPayload.model_validate({"address": addr, "node_id": node, **kw})


def test_heartbeat_from_unknown_backend_registers_it() -> None:
    reg = make(FakeClock())
    worker = reg.register(payload(models=["m1"]))
    assert worker.status is WorkerStatus.HEALTHY
    assert reg.routable() == (worker,)
    assert reg.models() == ["m1"]
    # the same call again is a heartbeat: still one worker
    reg.register(payload(models=["m1"]))
    assert len(reg.all()) == 1


def test_silent_backend_goes_unhealthy_then_is_removed() -> None:
    clock = FakeClock()
    reg = make(clock)
    removed: list[str] = []
    reg.on_removed(removed.append)
    reg.register(payload())
    clock.now += 5.9
    reg.sweep()
    assert reg.get("10.0.0.5:3000").status is WorkerStatus.HEALTHY  # type: ignore[union-attr]
    clock.now += 0.2
    reg.sweep()
    assert reg.get("10.0.0.5:3000").status is WorkerStatus.UNHEALTHY  # type: ignore[union-attr]
    assert reg.routable() == ()
    # a heartbeat brings it back at once
    reg.register(payload())
    assert reg.get("10.0.0.5:3000").status is WorkerStatus.HEALTHY  # type: ignore[union-attr]
    clock.now += 29.9
    reg.sweep()
    assert reg.get("10.0.0.5:3000") is not None
    clock.now += 0.2
    reg.sweep()
    assert reg.get("10.0.0.5:3000") is None
    assert removed == ["10.0.0.5:3000"]


def test_refused_connection_removes_from_routing_immediately() -> None:
    reg = make(FakeClock(), k=5)
    reg.register(payload())
    reg.report_refused("10.0.0.5:3000")
    worker = reg.get("10.0.0.5:3000")
    assert worker is not None and worker.status is WorkerStatus.UNHEALTHY
    assert worker.status_reason == "connection_refused"
    assert reg.routable() == ()
    # heartbeats alone do not undo a data-path failure; probes do (M=2 here)
    reg.register(payload())
    assert worker.status is WorkerStatus.UNHEALTHY
    reg.record_probe(worker.address, True)
    assert worker.status is WorkerStatus.UNHEALTHY
    reg.record_probe(worker.address, True)
    assert reg.routable() == (worker,)


def test_probe_thresholds_need_k_consecutive_failures() -> None:
    reg = make(FakeClock(), k=3, m=1)
    reg.register(payload())
    address = "10.0.0.5:3000"
    reg.record_probe(address, False)
    reg.record_probe(address, False)
    reg.record_probe(address, True)  # resets the failure streak
    reg.record_probe(address, False)
    reg.record_probe(address, False)
    assert reg.get(address).status is WorkerStatus.HEALTHY  # type: ignore[union-attr]
    reg.record_probe(address, False)
    assert reg.get(address).status is WorkerStatus.UNHEALTHY  # type: ignore[union-attr]


def test_refused_probe_marks_unhealthy_without_threshold() -> None:
    reg = make(FakeClock(), k=5)
    reg.register(payload())
    reg.record_probe("10.0.0.5:3000", False, refused=True)
    assert reg.get("10.0.0.5:3000").status is WorkerStatus.UNHEALTHY  # type: ignore[union-attr]


def test_wildcard_advertise_uses_peer_address() -> None:
    reg = make(FakeClock())
    worker = reg.register(payload("0.0.0.0:3000"), peer_host="172.20.0.7")
    assert worker.address == "172.20.0.7:3000"


def test_draining_state_leaves_routing_and_deregister_removes() -> None:
    reg = make(FakeClock())
    reg.register(payload())
    reg.register(payload(state="draining"))
    assert reg.get("10.0.0.5:3000").status is WorkerStatus.DRAINING  # type: ignore[union-attr]
    assert reg.routable() == ()
    assert reg.deregister("10.0.0.5:3000")
    assert not reg.deregister("10.0.0.5:3000")
    assert reg.counts()["total"] == 0


def test_counts_and_static_backends_never_expire() -> None:
    clock = FakeClock()
    reg = make(clock)
    reg.load_static(["a:1", "b:2=3"])
    assert reg.get("b:2").weight == 3  # type: ignore[union-attr]
    clock.now += 1000
    reg.sweep()
    assert reg.counts() == {"healthy": 2, "unhealthy": 0, "ejected": 0, "draining": 0, "total": 2}


@pytest.mark.parametrize("spec", ["nohost", "a:b", "a:1=x", "a:1=0", "a:99999"])
def test_bad_static_specs_are_rejected(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_static_backend(spec)


@pytest.mark.parametrize(
    "body",
    [
        {"address": "bad", "node_id": "n"},
        {"address": "h:1", "node_id": "bad id with spaces"},
        {"address": "h:1", "node_id": "n", "weight": 0},
        {"address": "h:1", "node_id": "n", "state": "nope"},
        {"address": "h:1\nforged", "node_id": "n"},
    ],
)
def test_bad_registration_payloads_are_rejected(body: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RegistrationPayload.model_validate(body)


def test_static_backends_follow_the_outlier_settings() -> None:
    from inferno.config import OutlierConfig

    clock = FakeClock()
    reg = WorkerRegistry(
        RegistryConfig(),
        HealthCheckConfig(),
        clock=clock,
        outlier_config=OutlierConfig(consecutive_failures=1, base_ejection_s=7.0),
    )
    worker = reg.add_static("s:1")
    reg.record_failure(worker, "timeout")
    assert worker.status is WorkerStatus.EJECTED
    assert worker.breaker.ejection_s() == 7.0


def test_routable_snapshot_per_model() -> None:
    reg = make(FakeClock())
    reg.register(payload("a:1", "a", models=["m1"]))
    reg.register(payload("b:1", "b", models=[{"id": "m2", "task": "embeddings"}]))
    reg.add_static("s:1")  # lists no models: serves any
    assert [w.address for w in reg.routable_for("m1")] == ["s:1", "a:1"]
    assert [w.address for w in reg.routable_for("m2")] == ["s:1", "b:1"]
    assert [w.address for w in reg.routable_for("other")] == ["s:1"]
    # With no model named, the pool is every backend able to do the task.
    assert [w.address for w in reg.routable_for(None)] == ["s:1", "a:1"]
    assert [w.address for w in reg.routable_for(None, "embeddings")] == ["s:1", "b:1"]
    assert [w.address for w in reg.routable_for(None, "image-classification")] == ["s:1"]
    assert reg.get("b:1").tasks == {"m2": "embeddings"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "slots"),
    [
        (b'{"status": "ok", "slots": 3}', 3),
        (b'{"status": "ok", "slots": 1}', 1),
        (b'{"status": "ok", "slots": 100000}', 4096),  # clamped to MAX_SLOTS
        (b'{"status": "ok"}', None),  # not an Inferno backend
        (b'{"status": "ok", "slots": 0}', None),
        (b'{"status": "ok", "slots": -2}', None),
        (b'{"status": "ok", "slots": 2.5}', None),
        (b'{"status": "ok", "slots": "3"}', None),
        (b'{"status": "ok", "slots": true}', None),
        (b'{"status": "ok", "slots": null}', None),
        (b"[3]", None),
        (b"ok", None),
        (b"", None),
        (b'{"slots": 3, "pad": "' + b"x" * (64 * 1024) + b'"}', None),  # too large to read
        (b'{"slots": 3, "many": [' + b"0," * 5000 + b"0]}", None),  # too many JSON values
    ],
)
def test_probe_answer_slots_are_read_only_when_sane(body: bytes, slots: int | None) -> None:
    assert advertised_slots(body) == slots


def test_good_probe_sets_a_static_backends_slots_and_a_registered_ones_stay_its_own() -> None:
    reg = make(FakeClock())
    static = reg.add_static("10.0.0.9:3000")
    changes: list[int] = []
    reg.on_change(lambda: changes.append(static.vitals.slots))
    reg.record_probe(static.address, True, slots=3)
    assert static.vitals.slots == 3 and changes == [3]  # waiters are told of the room
    reg.record_probe(static.address, True, slots=3)
    assert changes == [3]  # no change, no wake-up
    reg.record_probe(static.address, False, slots=None)
    assert static.vitals.slots == 3  # a failed probe tells nothing
    reg.record_probe(static.address, True, slots=None)
    assert static.vitals.slots == 0  # advertises none now: the default limit again
    registered = reg.register(payload(vitals={"slots": 2}))
    reg.record_probe(registered.address, True, slots=7)
    assert registered.vitals.slots == 2  # its heartbeats say, not the probe
