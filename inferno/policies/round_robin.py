"""``round_robin``: each routable backend in turn."""

from __future__ import annotations

import random
from collections.abc import Sequence

from inferno.config import AffinityConfig
from inferno.policies.base import LoadBalancingPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


class RoundRobinPolicy(LoadBalancingPolicy, name="round_robin"):
    def __init__(self, rng: random.Random | None = None, *, affinity: AffinityConfig | None = None) -> None:
        super().__init__(rng)
        self._next = 0

    def choose(self, ctx: RequestContext, candidates: Sequence[WorkerInfo]) -> WorkerInfo:
        index = self._next % len(candidates)
        self._next = index + 1
        return candidates[index]
