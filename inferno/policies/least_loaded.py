"""``least_loaded``: lowest load from the backends' heartbeat vitals.

Load is the backend's reported ``queued + in_flight`` (all its clients, not just
this proxy). Vitals are up to one heartbeat old, so this proxy's own in-flight
count breaks ties, then the random source.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferno.policies.base import LoadBalancingPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


def reported_load(worker: WorkerInfo) -> int:
    return worker.vitals.queued + worker.vitals.in_flight


class LeastLoadedPolicy(LoadBalancingPolicy, name="least_loaded"):
    def choose(self, ctx: RequestContext, candidates: Sequence[WorkerInfo]) -> WorkerInfo:
        best = min((reported_load(w), w.in_flight) for w in candidates)
        tied = [w for w in candidates if (reported_load(w), w.in_flight) == best]
        return tied[0] if len(tied) == 1 else tied[self.rng.randrange(len(tied))]
