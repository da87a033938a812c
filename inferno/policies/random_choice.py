"""``random``: uniform choice with the injected random source."""

from __future__ import annotations

from collections.abc import Sequence

from inferno.policies.base import LoadBalancingPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


class RandomPolicy(LoadBalancingPolicy, name="random"):
    def choose(self, ctx: RequestContext, candidates: Sequence[WorkerInfo]) -> WorkerInfo:
        return candidates[self.rng.randrange(len(candidates))]
