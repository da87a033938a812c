"""Each policy's routing distribution matches its definition (injected RNG)."""

from __future__ import annotations

import random
from collections import Counter

from inferno.policies import LoadBalancingPolicy
from inferno.policies.consistent_hash import ConsistentHashPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.registration import NodeVitals
from inferno.schemas.routing import RequestContext


def pool(n: int, **attrs: list[int]) -> list[WorkerInfo]:
    workers = [WorkerInfo(f"10.0.0.{i}:3000", node_id=f"n{i}") for i in range(n)]
    for name, values in attrs.items():
        for worker, value in zip(workers, values, strict=True):
            setattr(worker, name, value)
    return workers


def ctx(key: str | None = None, prefix: str = "") -> RequestContext:
    return RequestContext("r", session_key=key, prompt_prefix=prefix)


def test_weighted_gives_exact_shares_and_interleaves() -> None:
    policy = LoadBalancingPolicy.create("weighted")
    workers = pool(3, weight=[5, 1, 1])
    picks = [policy.choose(ctx(), workers).node_id for _ in range(70)]
    assert Counter(picks) == {"n0": 50, "n1": 10, "n2": 10}
    # smooth: every window of sum(weights)=7 picks holds each backend exactly `weight` times
    for start in range(0, 70, 7):
        assert Counter(picks[start : start + 7]) == {"n0": 5, "n1": 1, "n2": 1}
    # and interleaved exactly as nginx's smooth WRR: a a b a c a a
    assert picks[:7] == ["n0", "n0", "n1", "n0", "n2", "n0", "n0"]


def test_weighted_follows_weight_changes() -> None:
    policy = LoadBalancingPolicy.create("weighted")
    workers = pool(2, weight=[1, 1])
    policy.choose(ctx(), workers)
    workers[1].weight = 3
    picks = Counter(policy.choose(ctx(), workers).node_id for _ in range(400))
    assert abs(picks["n1"] - 300) <= 2


def test_least_connections_picks_fewest_and_spreads_ties() -> None:
    policy = LoadBalancingPolicy.create("least_connections", random.Random(1))
    workers = pool(3, in_flight=[4, 1, 1])
    picks = Counter(policy.choose(ctx(), workers).node_id for _ in range(1000))
    assert "n0" not in picks
    assert 400 < picks["n1"] < 600 and 400 < picks["n2"] < 600


def test_least_loaded_uses_reported_queue_plus_in_flight() -> None:
    policy = LoadBalancingPolicy.create("least_loaded", random.Random(1))
    workers = pool(3)
    workers[0].vitals = NodeVitals(queued=3, in_flight=2)
    workers[1].vitals = NodeVitals(queued=0, in_flight=2)
    workers[2].vitals = NodeVitals(queued=1, in_flight=2)
    assert {policy.choose(ctx(), workers).node_id for _ in range(50)} == {"n1"}
    # equal reported load: the proxy's own in-flight count breaks the tie
    workers[2].vitals = NodeVitals(queued=0, in_flight=2)
    workers[1].in_flight = 1
    assert {policy.choose(ctx(), workers).node_id for _ in range(50)} == {"n2"}


def test_power_of_two_never_picks_the_worst_and_favours_the_best() -> None:
    policy = LoadBalancingPolicy.create("power_of_two", random.Random(3))
    workers = pool(3, in_flight=[0, 5, 10])
    picks = Counter(policy.choose(ctx(), workers).node_id for _ in range(3000))
    assert picks["n2"] == 0
    # the best wins every pair it is in: 2 of the 3 pairs
    assert abs(picks["n0"] / 3000 - 2 / 3) < 0.04
    assert abs(picks["n1"] / 3000 - 1 / 3) < 0.04


def test_power_of_two_single_candidate() -> None:
    policy = LoadBalancingPolicy.create("power_of_two", random.Random(3))
    only = pool(1)
    assert policy.choose(ctx(), only) is only[0]


def test_consistent_hash_is_sticky_per_session() -> None:
    policy = LoadBalancingPolicy.create("consistent_hash")
    workers = tuple(pool(4))
    first = {f"s{i}": policy.choose(ctx(f"s{i}"), workers).node_id for i in range(20)}
    for _ in range(10):
        for key, owner in first.items():
            assert policy.choose(ctx(key), workers).node_id == owner
    assert len(set(first.values())) >= 3  # sessions spread over the pool


def test_consistent_hash_falls_back_to_prompt_prefix() -> None:
    policy = LoadBalancingPolicy.create("consistent_hash")
    workers = tuple(pool(4))
    owners = {policy.choose(ctx(None, "You are a pirate. Hello"), workers).node_id for _ in range(20)}
    assert len(owners) == 1
    spread = {policy.choose(ctx(None, f"prompt {i}"), workers).node_id for i in range(50)}
    assert len(spread) == 4


def test_consistent_hash_moves_about_one_nth_of_keys_on_join() -> None:
    policy = ConsistentHashPolicy()
    before_pool = tuple(pool(4))
    after_pool = tuple(pool(5))
    keys = [f"user-{i}" for i in range(5000)]
    before = {k: policy.choose(ctx(k), before_pool).address for k in keys}
    after = {k: policy.choose(ctx(k), after_pool).address for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    # ideal 1/5 = 20%; every moved key moved to the new backend
    assert 0.12 < len(moved) / len(keys) < 0.28, len(moved) / len(keys)
    assert {after[k] for k in moved} == {"10.0.0.4:3000"}
    # and leaving moves back only that backend's keys
    again = {k: policy.choose(ctx(k), before_pool).address for k in keys}
    assert again == before


def test_round_robin_with_tried_backends_removed_still_cycles() -> None:
    policy = LoadBalancingPolicy.create("round_robin")
    workers = pool(3)
    subset = [workers[0], workers[2]]
    picks = [policy.choose(ctx(), subset).node_id for _ in range(4)]
    assert sorted(Counter(picks).values()) == [2, 2]
