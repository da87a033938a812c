"""``consistent_hash``: session affinity on a hash ring with virtual nodes.

The key is the session (``X-Session-ID`` header or the OpenAI ``user`` field);
without one, a hash of the prompt prefix, so repeated prefixes land on the same
backend and reuse its prompt cache. Each backend owns ``VNODES`` points on the
ring, so when a backend joins or leaves only about 1/N of the keys move.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence

from inferno.config import AffinityConfig
from inferno.policies.base import LoadBalancingPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext

VNODES = 160


def _hash(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class ConsistentHashPolicy(LoadBalancingPolicy, name="consistent_hash"):
    def __init__(self, rng: random.Random | None = None, *, affinity: AffinityConfig | None = None) -> None:
        super().__init__(rng)
        self._members: tuple[str, ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []
        self._last: Sequence[WorkerInfo] | None = None

    def _rebuild(self, members: tuple[str, ...]) -> None:
        ring = sorted((_hash(f"{address}#{i}"), address) for address in members for i in range(VNODES))
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]
        self._members = members

    @staticmethod
    def key(ctx: RequestContext) -> str:
        return ctx.session_key if ctx.session_key is not None else "prefix:" + ctx.prompt_prefix[:256]

    def choose(self, ctx: RequestContext, candidates: Sequence[WorkerInfo]) -> WorkerInfo:
        if candidates is not self._last:
            # The registry hands out the same tuple until membership changes.
            members = tuple(sorted(w.address for w in candidates))
            if members != self._members:
                self._rebuild(members)
            self._last = candidates
        index = bisect.bisect(self._points, _hash(self.key(ctx))) % len(self._points)
        owner = self._owners[index]
        for worker in candidates:
            if worker.address == owner:
                return worker
        raise AssertionError("ring out of sync with candidates")
