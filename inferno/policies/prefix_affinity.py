"""``prefix_affinity``: same prompt prefix, same backend; with bounded load.

Requests that share a prompt prefix (its first ``prefix_tokens`` words) or a
session key (``X-Session-ID`` / ``user`` / ``session_id``) go to the same
backend, so llama.cpp finds the prefix in its prompt cache instead of
recomputing it. Placement is consistent hashing with bounded loads (Mirrokni,
Thorup and Zadimoghaddam): walking the ring clockwise from the key's point, the
first backend whose in-flight count is below ``ceil(load_factor x average)`` is
chosen, so one hot prefix (a shared system prompt, say) spills over to the next
backends on the ring instead of pinning all traffic to one node.

The admission queue asks the policy for a request's *home* among all routable
backends, busy ones included (load = in flight + already waiting for it): when
the home is at its slot limit, the request waits for it at most
``--affinity-max-wait-s`` instead of going cold to another backend, and the
bounded-load rule moves new keys on once a home has its share of waiters.

Memory is bounded: no per-key state at all, and at most ``MAX_RINGS`` rings (one
per distinct candidate set, e.g. per model) are cached.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence

from inferno.config import AffinityConfig
from inferno.policies.base import LoadBalancingPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext

VNODES = 100
MAX_RINGS = 32


def _in_flight(worker: WorkerInfo) -> int:
    return worker.in_flight


def _hash(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class _Ring:
    __slots__ = ("owners", "points")

    def __init__(self, members: tuple[str, ...]) -> None:
        ring = sorted((_hash(f"{address}#{i}"), address) for address in members for i in range(VNODES))
        self.points = [point for point, _ in ring]
        self.owners = [owner for _, owner in ring]


class PrefixAffinityPolicy(LoadBalancingPolicy, name="prefix_affinity"):
    def __init__(self, rng: random.Random | None = None, *, affinity: AffinityConfig | None = None) -> None:
        super().__init__(rng)
        config = affinity or AffinityConfig()
        self.prefix_tokens = config.prefix_tokens
        self.load_factor = config.load_factor
        self._rings: OrderedDict[tuple[str, ...], _Ring] = OrderedDict()
        self._last: Sequence[WorkerInfo] | None = None
        self._last_ring: _Ring | None = None
        #: requests that did not go to their key's first choice (bounded load spilled them)
        self.spilled = 0

    def key(self, ctx: RequestContext) -> str:
        if ctx.session_key is not None:
            return "session:" + ctx.session_key
        words = ctx.prompt_prefix.split(maxsplit=self.prefix_tokens)[: self.prefix_tokens]
        return "prefix:" + " ".join(words)

    def _ring(self, candidates: Sequence[WorkerInfo]) -> _Ring:
        if candidates is self._last and self._last_ring is not None:
            return self._last_ring  # the registry hands out the same tuple until it changes
        members = tuple(sorted(w.address for w in candidates))
        ring = self._rings.get(members)
        if ring is None:
            ring = self._rings[members] = _Ring(members)
            if len(self._rings) > MAX_RINGS:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(members)
        self._last, self._last_ring = candidates, ring
        return ring

    def choose(self, ctx: RequestContext, candidates: Sequence[WorkerInfo]) -> WorkerInfo:
        return self._place(ctx, candidates, _in_flight)

    def home(
        self, ctx: RequestContext, candidates: Sequence[WorkerInfo], load: Callable[[WorkerInfo], int]
    ) -> WorkerInfo | None:
        return self._place(ctx, candidates, load)

    def _place(
        self, ctx: RequestContext, candidates: Sequence[WorkerInfo], load: Callable[[WorkerInfo], int]
    ) -> WorkerInfo:
        if len(candidates) == 1:
            return candidates[0]
        ring = self._ring(candidates)
        by_address = {w.address: w for w in candidates}
        total = sum(load(w) for w in candidates) + 1  # counting this request
        cap = math.ceil(self.load_factor * total / len(candidates))
        start = bisect.bisect(ring.points, _hash(self.key(ctx)))
        size = len(ring.points)
        seen: set[str] = set()
        for step in range(size):
            address = ring.owners[(start + step) % size]
            if address in seen:
                continue
            seen.add(address)
            worker = by_address[address]
            if load(worker) < cap:
                if len(seen) > 1:
                    self.spilled += 1
                return worker
            if len(seen) == len(candidates):
                break
        # Unreachable in practice (someone is always below the cap); stay total.
        return min(candidates, key=load)
