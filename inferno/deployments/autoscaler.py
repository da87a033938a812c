"""The autoscaler: how many instances each deployment should have, from its demand.

Pure bookkeeping beside the data path (no I/O, time from an injected clock), the
way SkyServe keeps its autoscaler out of its load balancer. For one deployment:

- *demand* is the requests queued plus in flight (plus those refused for capacity
  since the last sample), sampled by the manager every tick;
- scaling *up* follows the latest sample: ``ceil(demand / target_ongoing_requests)``,
  after ``upscale_delay_s`` of calling for it (0: at once), and at once from zero
  when anything waits: a cold start never waits for a timer;
- scaling *down* follows the *largest* sample of the last ``look_back_s`` (so one
  quiet sample in a burst changes nothing), after ``downscale_delay_s`` of calling
  for fewer instances; a sawtooth whose gaps are shorter than that never scales down;
- the last instance stays while anything is queued or in flight, and for
  ``keep_alive_s`` after the last request arrived or was last seen running; only
  then does a deployment with ``min_instances`` 0 go to zero (at once: the look-back
  window does not hold the last instance);
- everything is clamped to ``min_instances..max_instances``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from inferno.deployments.spec import AutoScalingConfig


@dataclass(slots=True)
class _Scale:
    """One deployment's scaling state."""

    replicas: int
    #: (time, demand) over the look-back window
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    #: when a request for it last arrived (clock time), None: never
    last_request: float | None = None
    #: since when demand has called for more (fewer) instances than it has, or None
    above_since: float | None = None
    below_since: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason: str


class Autoscaler:
    """Decides each deployment's replica count; the manager applies the decisions."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[str, _Scale] = {}

    def add(self, deployment: str, replicas: int, *, idle_s: float | None = None) -> None:
        """Track ``deployment`` at ``replicas``; ``idle_s`` is how long ago its last request
        came (carried over a restart, so keep-alive timers go on where they were)."""
        last = None if idle_s is None else self._clock() - max(0.0, idle_s)
        self._state[deployment] = _Scale(replicas, last_request=last)

    def remove(self, deployment: str) -> None:
        self._state.pop(deployment, None)

    def replicas(self, deployment: str) -> int:
        return self._state[deployment].replicas

    def request_arrived(self, deployment: str) -> None:
        state = self._state.get(deployment)
        if state is not None:
            state.last_request = self._clock()

    def idle_s(self, deployment: str) -> float | None:
        """Seconds since the last request, None if none came."""
        last = self._state[deployment].last_request
        return None if last is None else self._clock() - last

    def observe(self, deployment: str, cfg: AutoScalingConfig, demand: float) -> Decision | None:
        """Record a demand sample and decide; a ``Decision`` when the count changes."""
        state = self._state[deployment]
        now = self._clock()
        samples = state.samples
        samples.append((now, demand))
        if demand > 0:
            state.last_request = now  # busy: idleness counts from the last activity
        while samples and samples[0][0] < now - cfg.look_back_s:
            samples.popleft()
        return self._decide(state, cfg, now, demand)

    def _decide(self, state: _Scale, cfg: AutoScalingConfig, now: float, demand: float) -> Decision | None:
        current = state.replicas
        busy = demand > 0
        kept_alive = state.last_request is not None and now - state.last_request < cfg.keep_alive_s
        floor = max(cfg.min_instances, 1 if busy or kept_alive else 0)
        up = _clamp(math.ceil(demand / cfg.target_ongoing_requests), floor, cfg.max_instances)
        peak = max(d for _, d in state.samples)
        down = _clamp(math.ceil(peak / cfg.target_ongoing_requests), floor, cfg.max_instances)
        if current < floor or (current == 0 and busy):
            # Below the floor (a request waits at zero, or min_instances rose): at once.
            return self._set(state, max(up, floor), "cold start" if current == 0 else "below min_instances")
        if up > current:
            state.below_since = None
            if state.above_since is None:
                state.above_since = now
            if now - state.above_since >= cfg.upscale_delay_s:
                return self._set(
                    state, up, f"demand {demand:g} > {current} x {cfg.target_ongoing_requests:g}"
                )
            return None
        state.above_since = None
        if current > cfg.max_instances:
            return self._set(state, cfg.max_instances, "above max_instances")
        if floor == 0 and current == 1:
            # The last instance goes when keep-alive says so, not after a second delay.
            return self._set(state, 0, f"idle for keep_alive_s ({cfg.keep_alive_s:g}s)")
        if down < current:
            if state.below_since is None:
                state.below_since = now
            if now - state.below_since >= cfg.downscale_delay_s:
                return self._set(state, down, f"peak demand {peak:g} over {cfg.look_back_s:g}s")
            return None
        state.below_since = None
        return None

    def _set(self, state: _Scale, replicas: int, reason: str) -> Decision | None:
        state.above_since = state.below_since = None
        if replicas == state.replicas:
            return None
        state.replicas = replicas
        return Decision(replicas, reason)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))
