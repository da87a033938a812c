"""``power_of_two``: sample two distinct backends at random; the less loaded wins.

Load is this proxy's in-flight count (exact and current). Two choices avoid
both the herd behaviour of least-connections across many proxies and the
variance of pure random.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferno.policies.base import LoadBalancingPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


class PowerOfTwoPolicy(LoadBalancingPolicy, name="power_of_two"):
    def choose(self, ctx: RequestContext, candidates: Sequence[WorkerInfo]) -> WorkerInfo:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        i = self.rng.randrange(n)
        j = self.rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        return a if a.in_flight <= b.in_flight else b
