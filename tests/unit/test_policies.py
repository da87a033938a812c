"""Policy unit tests with fakes and an injected RNG."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from inferno.errors import ConfigError
from inferno.policies import LoadBalancingPolicy, available_policies
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


def workers(n: int) -> list[WorkerInfo]:
    return [WorkerInfo(f"10.0.0.{i}:3000", node_id=f"n{i}") for i in range(n)]


def test_registry_lists_policies_by_name() -> None:
    assert {"round_robin", "random"} <= set(available_policies())
    with pytest.raises(ConfigError, match="unknown policy"):
        LoadBalancingPolicy.create("nope")


def test_round_robin_cycles_in_order() -> None:
    policy = LoadBalancingPolicy.create("round_robin")
    pool = workers(3)
    picks = [policy.choose(RequestContext("r"), pool).node_id for _ in range(7)]
    assert picks == ["n0", "n1", "n2", "n0", "n1", "n2", "n0"]


def test_round_robin_survives_a_shrinking_pool() -> None:
    policy = LoadBalancingPolicy.create("round_robin")
    pool = workers(3)
    policy.choose(RequestContext("r"), pool)
    policy.choose(RequestContext("r"), pool)
    small = pool[:1]
    assert policy.choose(RequestContext("r"), small) is small[0]


def test_random_is_uniform_and_reproducible_with_seeded_rng() -> None:
    pool = workers(4)
    a = LoadBalancingPolicy.create("random", random.Random(7))
    b = LoadBalancingPolicy.create("random", random.Random(7))
    picks_a = [a.choose(RequestContext("r"), pool).node_id for _ in range(4000)]
    picks_b = [b.choose(RequestContext("r"), pool).node_id for _ in range(4000)]
    assert picks_a == picks_b
    counts = Counter(picks_a)
    assert set(counts) == {"n0", "n1", "n2", "n3"}
    assert all(850 < c < 1150 for c in counts.values()), counts
