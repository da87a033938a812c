"""``round_robin``: each routable backend in turn.

One turn counter per pool (model, or task when no model is named): with one
shared counter, interleaved requests for different models would land on the
same backend of each pool every time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from inferno.config import AffinityConfig
from inferno.policies.base import LoadBalancingPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext

MAX_POOLS = 256


class RoundRobinPolicy(LoadBalancingPolicy, name="round_robin"):
    def __init__(self, rng: random.Random | None = None, *, affinity: AffinityConfig | None = None) -> None:
        super().__init__(rng)
        self._next: dict[tuple[str | None, str], int] = {}

    def choose(self, ctx: RequestContext, candidates: Sequence[WorkerInfo]) -> WorkerInfo:
        pool = (ctx.model, ctx.task)
        index = self._next.get(pool, 0) % len(candidates)
        if len(self._next) >= MAX_POOLS and pool not in self._next:
            self._next.clear()  # bounded: model names come from clients
        self._next[pool] = index + 1
        return candidates[index]
