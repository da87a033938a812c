"""The autoscaler's decisions over time, with an injected clock (no sleeps)."""

from __future__ import annotations

from collections.abc import Sequence

from inferno.deployments.autoscaler import Autoscaler
from inferno.deployments.spec import AutoScalingConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cfg(**overrides: float) -> AutoScalingConfig:
    base: dict[str, float] = {
        "min_instances": 0,
        "max_instances": 3,
        "target_ongoing_requests": 4,
        "keep_alive_s": 60,
        "downscale_delay_s": 30,
        "look_back_s": 10,
    }
    return AutoScalingConfig.model_validate({**base, **overrides})


def run(
    scaler: Autoscaler,
    clock: Clock,
    config: AutoScalingConfig,
    demands: Sequence[float],
    *,
    step_s: float = 0.5,
) -> list[int]:
    """Feed one demand sample per step (a request counts as arriving with each busy
    sample); the replica count after each."""
    out = []
    for demand in demands:
        clock.now += step_s
        if demand:
            scaler.request_arrived("d")
        scaler.observe("d", config, demand)
        out.append(scaler.replicas("d"))
    return out


def new(replicas: int = 0) -> tuple[Autoscaler, Clock]:
    clock = Clock()
    scaler = Autoscaler(clock)
    scaler.add("d", replicas)
    return scaler, clock


def test_a_request_at_zero_starts_one_instance_at_once() -> None:
    scaler, clock = new()
    assert run(scaler, clock, cfg(upscale_delay_s=30), [0, 0, 1]) == [0, 0, 1]


def test_a_ramp_scales_up_step_by_step_to_max_and_no_further() -> None:
    scaler, clock = new()
    counts = run(scaler, clock, cfg(), [1, 4, 5, 8, 9, 12, 13, 40, 100])
    assert counts == [1, 1, 2, 2, 3, 3, 3, 3, 3]


def test_upscale_delay_holds_a_short_spike_back() -> None:
    scaler, clock = new(1)
    c = cfg(upscale_delay_s=2)
    # 1.5 s of high demand (3 samples) is not enough; 2 s is.
    assert run(scaler, clock, c, [12, 12, 12, 1, 1]) == [1, 1, 1, 1, 1]
    assert run(scaler, clock, c, [12, 12, 12, 12, 12]) == [1, 1, 1, 1, 3]


def test_scale_down_waits_for_downscale_delay_of_low_demand() -> None:
    scaler, clock = new(3)
    c = cfg(downscale_delay_s=5, look_back_s=1)
    counts = run(scaler, clock, c, [2] * 14)
    # demand 2 calls for 1 instance from the first sample; it takes 5 s of that
    assert counts[:10] == [3] * 10
    assert counts[10:] == [1] * 4


def test_a_burst_in_the_window_holds_instances() -> None:
    scaler, clock = new(3)
    c = cfg(downscale_delay_s=2, look_back_s=10)
    counts = run(scaler, clock, c, [12] + [1] * 15)  # 7.5 s after the burst: still in the window
    assert counts == [3] * 16


def test_flapping_demand_does_not_flap_the_count() -> None:
    scaler, clock = new(2)
    c = cfg(downscale_delay_s=10, look_back_s=5)
    counts = run(scaler, clock, c, [8, 1] * 60)  # 60 s of alternating samples
    assert set(counts) == {2}


def test_a_sawtooth_with_gaps_shorter_than_keep_alive_never_goes_to_zero() -> None:
    scaler, clock = new()
    c = cfg(keep_alive_s=20, downscale_delay_s=5, look_back_s=2)
    tooth = [4] * 10 + [0] * 30  # 5 s busy, 15 s idle
    counts = run(scaler, clock, c, tooth * 6)
    first_one = counts.index(1)
    assert first_one == 0
    assert 0 not in counts[first_one:]


def test_idle_past_keep_alive_goes_to_zero_and_not_before() -> None:
    scaler, clock = new()
    c = cfg(keep_alive_s=10, downscale_delay_s=1)
    counts = run(scaler, clock, c, [1] + [0] * 30)
    # the request came at 0.5 s; zero after 10 s of idleness (sample 21 at 10.5 s)
    assert counts[:20] == [1] * 20
    assert counts[21:] == [0] * (len(counts) - 21)


def test_never_to_zero_while_anything_is_in_flight() -> None:
    scaler, clock = new(1)
    c = cfg(keep_alive_s=1, downscale_delay_s=0)
    clock.now += 100  # the last *arrival* is long ago, but one request is still running
    assert run(scaler, clock, c, [1] * 10) == [1] * 10
    assert run(scaler, clock, c, [0] * 30)[-1] == 0


def test_min_instances_is_kept_and_a_raised_min_applies_at_once() -> None:
    scaler, clock = new(2)
    assert run(scaler, clock, cfg(min_instances=2, keep_alive_s=0, downscale_delay_s=0), [0] * 40) == [2] * 40
    assert run(scaler, clock, cfg(min_instances=3), [0]) == [3]


def test_a_lowered_max_applies_at_once() -> None:
    scaler, clock = new(3)
    assert run(scaler, clock, cfg(max_instances=1), [20]) == [1]
    assert run(scaler, clock, cfg(max_instances=2), [20]) == [2]


def test_keep_alive_is_carried_over_a_restart() -> None:
    clock = Clock()
    scaler = Autoscaler(clock)
    scaler.add("d", 1, idle_s=55)  # the last request came 55 s before the restart
    counts = run(scaler, clock, cfg(keep_alive_s=60, downscale_delay_s=1), [0] * 12)
    assert counts[:9] == [1] * 9  # at 4.5 s it is 59.5 s idle
    assert counts[-1] == 0


def test_no_request_ever_and_min_zero_stays_at_zero() -> None:
    scaler, clock = new()
    assert run(scaler, clock, cfg(), [0] * 10) == [0] * 10


def test_keep_alive_counts_from_the_last_activity_not_the_last_arrival() -> None:
    scaler, clock = new()
    c = cfg(keep_alive_s=5, downscale_delay_s=1, look_back_s=30)
    # one request arrives, then runs for 20 s (a long stream), then the deployment is idle
    counts = run(scaler, clock, c, [1] + [1] * 40 + [0] * 12)
    assert counts[:41] == [1] * 41
    assert counts[41:50] == [1] * 9  # 4.5 s after the stream ended: kept alive
    assert counts[-1] == 0  # then at once, although the 30 s window still holds demand
