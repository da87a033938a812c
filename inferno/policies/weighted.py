"""``weighted``: smooth weighted round robin (nginx's algorithm).

Each pick adds every candidate's weight to its running score, chooses the
highest score, and subtracts the total weight from the winner. Over any window
of sum(weights) picks, each backend is chosen exactly ``weight`` times, and
picks are interleaved rather than bunched.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from inferno.config import AffinityConfig
from inferno.policies.base import LoadBalancingPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


class WeightedPolicy(LoadBalancingPolicy, name="weighted"):
    def __init__(self, rng: random.Random | None = None, *, affinity: AffinityConfig | None = None) -> None:
        super().__init__(rng)
        self._current: dict[str, int] = {}

    def choose(self, ctx: RequestContext, candidates: Sequence[WorkerInfo]) -> WorkerInfo:
        total = 0
        best: WorkerInfo | None = None
        best_score = 0
        current = self._current
        for worker in candidates:
            score = current.get(worker.address, 0) + worker.weight
            current[worker.address] = score
            total += worker.weight
            if best is None or score > best_score:
                best, best_score = worker, score
        assert best is not None
        current[best.address] = best_score - total
        if len(current) > 4 * len(candidates) + 16:
            # Forget backends that left, so the map cannot grow without bound.
            alive = {w.address for w in candidates}
            self._current = {a: v for a, v in current.items() if a in alive}
        return best
