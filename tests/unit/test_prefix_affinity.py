"""prefix_affinity: same prefix -> same backend; bounded load spills a hot prefix;
bounded memory."""

from __future__ import annotations

from collections import Counter

from inferno.config import AffinityConfig
from inferno.policies import LoadBalancingPolicy
from inferno.policies.prefix_affinity import MAX_RINGS, PrefixAffinityPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


def _workers(n: int) -> tuple[WorkerInfo, ...]:
    return tuple(WorkerInfo(f"10.0.0.{i}:3000", node_id=f"n{i}") for i in range(n))


def _ctx(prompt: str, session: str | None = None) -> RequestContext:
    return RequestContext("r", prompt_prefix=prompt, session_key=session)


def test_same_prefix_same_backend_and_prefixes_spread() -> None:
    policy = LoadBalancingPolicy.create("prefix_affinity", affinity=AffinityConfig(prefix_tokens=4))
    workers = _workers(4)
    shared = "You are a pirate. Answer"
    picks = {policy.choose(_ctx(f"{shared} question {i}"), workers).address for i in range(20)}
    assert len(picks) == 1  # only the first 4 words count, and they are shared
    owners = Counter(policy.choose(_ctx(f"document {i} says hello"), workers).address for i in range(400))
    assert len(owners) == 4 and min(owners.values()) > 50  # distinct prefixes spread out
    assert policy.choose(_ctx("a", session="s1"), workers) is policy.choose(_ctx("b", session="s1"), workers)


def test_a_hot_prefix_spills_over_when_its_backend_is_above_the_load_bound() -> None:
    policy = PrefixAffinityPolicy(affinity=AffinityConfig(prefix_tokens=8, load_factor=1.25))
    workers = _workers(4)
    ctx = _ctx("the same long system prompt for every request")
    home = policy.choose(ctx, workers)
    placed: list[WorkerInfo] = []
    for _ in range(40):  # 40 concurrent requests with one prefix
        worker = policy.choose(ctx, workers)
        worker.in_flight += 1
        placed.append(worker)
    loads = [w.in_flight for w in workers]
    assert max(loads) <= -(-1.25 * 40 // 4) + 1  # no backend far above (1+e) x average
    assert home.in_flight == max(loads)  # the key's own backend took its full share first
    assert policy.spilled > 0
    for worker in placed:
        worker.in_flight -= 1
    assert policy.choose(ctx, workers) is home  # back home once the load is gone


def test_rings_are_bounded() -> None:
    policy = PrefixAffinityPolicy()
    for i in range(MAX_RINGS * 3):
        policy.choose(_ctx("x"), (WorkerInfo(f"h{i}:1", node_id="a"), WorkerInfo(f"g{i}:1", node_id="b")))
    assert len(policy._rings) <= MAX_RINGS


def test_round_robin_keeps_a_turn_per_pool() -> None:
    policy = LoadBalancingPolicy.create("round_robin")
    text, other = _workers(2), _workers(3)[2:]
    picks = []
    for _ in range(4):
        picks.append(policy.choose(RequestContext("r"), text).address)
        policy.choose(RequestContext("r", model="m"), other)
    assert picks == [text[0].address, text[1].address] * 2
