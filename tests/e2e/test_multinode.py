"""End to end on a three-node Swarm on one machine (Docker-in-Docker nodes).

``deploy/cluster/cluster.sh`` builds the node image, starts a manager and two
workers on a labelled bridge network, forms the swarm, labels the nodes and
loads the Inferno image into each; the hardened stack is deployed across them.
The steps run in order: placement, a drain under load, restoring the drained
worker, losing a worker outright under load, its rejoin, a serverless deployment
that the controller starts from zero and spreads over the zones, and a clean-up
that must leave nothing behind. The report is artifacts/e2e/multinode-e2e.{json,txt},
next to the single-node one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e import serverless
from tests.e2e.harness import (
    ROOT,
    Check,
    CommandError,
    Report,
    Step,
    ensure_images,
    ports_free,
    run,
    wait_until,
)
from tests.loadgen import LoadResult, load

pytestmark = pytest.mark.e2e

CLUSTER = ["bash", str(ROOT / "deploy" / "cluster" / "cluster.sh")]
LABEL = "com.inferno.cluster"
STACK = "inferno"
PROXY_PORT = int(os.environ.get("INFERNO_CLUSTER_PROXY_PORT", "28080"))
OPS_PORT = int(os.environ.get("INFERNO_CLUSTER_OPS_PORT", "26100"))
PROXY = f"http://127.0.0.1:{PROXY_PORT}"
OPS = f"http://127.0.0.1:{OPS_PORT}"
WORKERS = ("worker1", "worker2")
BODY = {"prompt": "Say hello.", "max_tokens": 8}
#: text backends (two, spread over the zones) and one embeddings + image backend
TEXT_BACKENDS = 2


def cluster(*args: str, timeout_s: float = 600) -> str:
    return run([*CLUSTER, *args], timeout_s=timeout_s)


def on_manager(*args: str, timeout_s: float = 60) -> str:
    return run(["docker", "exec", "inferno-node-manager", *args], timeout_s=timeout_s)


def node_of(node_id: str) -> str:
    """The Swarm node a backend runs on: its hostname (so its node id) starts with it."""
    return node_id.split("-", 1)[0]


def running_tasks() -> dict[str, list[str]]:
    """Service -> the nodes its running tasks are on."""
    out = on_manager(
        "docker", "stack", "ps", STACK, "--filter", "desired-state=running", "--format",
        "{{.Name}} {{.Node}} {{.CurrentState}}",
    )  # fmt: skip
    tasks: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, node, state = line.split(" ", 2)
        if state.startswith("Running"):
            tasks.setdefault(name.rsplit(".", 1)[0].removeprefix(f"{STACK}_"), []).append(node)
    return tasks


def node_state(node: str) -> str:
    return on_manager("docker", "node", "inspect", "-f", "{{.Status.State}}", node).strip()


def backends() -> list[dict[str, Any]]:
    return list(httpx.get(f"{OPS}/workers", timeout=3).json()["workers"])


def healthy_text_nodes() -> Counter[str]:
    """Swarm node -> healthy text backends the proxy routes to there."""
    return Counter(
        node_of(w["node_id"])
        for w in backends()
        if w["status"] == "healthy" and "text-generation" in w["tasks"].values()
    )


def served_by_nodes(count: int = 16) -> Counter[str]:
    nodes: Counter[str] = Counter()
    with httpx.Client(timeout=60) as http:
        for i in range(count):
            r = http.post(f"{PROXY}/inference", json={"prompt": f"Count to {i}.", "max_tokens": 4})
            assert r.status_code == 200, r.text
            nodes[node_of(r.headers["x-inferno-backend"])] += 1
    return nodes


#: every service's replicas in the stack
REPLICAS = {"proxy-lb": 1, "backend": 2, "backend-media": 1}


def all_running_on(nodes: set[str]) -> bool:
    """Every replica of every service is running, and only on ``nodes``."""
    tasks = running_tasks()
    return all(len(tasks.get(name, [])) == want for name, want in REPLICAS.items()) and all(
        set(placed) <= nodes for placed in tasks.values()
    )


def rebalance_done() -> bool:
    """The backends' rebalancing update (``restore-node``) has finished."""
    state = on_manager(
        "docker", "service", "inspect", "-f", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
        f"{STACK}_backend",
    ).strip()  # fmt: skip
    return state in ("", "completed")


def spread_over_workers() -> bool:
    tasks = running_tasks()
    return sorted(tasks.get("backend", [])) == list(WORKERS) and healthy_text_nodes() == Counter(WORKERS)


def rebalanced() -> bool:
    return rebalance_done() and spread_over_workers()


@pytest.fixture(scope="module")
def report() -> Iterator[Report]:
    rep = Report("multinode e2e")
    yield rep
    rep.write()


@pytest.fixture(scope="module")
def swarm_cluster(report: Report) -> Iterator[None]:
    ours = run(["docker", "ps", "-q", "--filter", "name=^inferno-node-manager$"]).strip()
    busy = ports_free(PROXY_PORT, OPS_PORT)
    if busy and not ours:  # a cluster already up (make swarm-up) holds them itself
        pytest.fail(f"ports {busy} on 127.0.0.1 are in use; stop what holds them first")
    try:
        with Step(report, "images, three nodes, swarm, labels, the image loaded in every node") as check:
            check.details.update(ensure_images(fresh=False))
            started = time.monotonic()
            check.evidence = cluster("up", timeout_s=900).splitlines()[-6:]
            check.details["cluster_up_s"] = round(time.monotonic() - started, 1)
            nodes = on_manager("docker", "node", "ls", "--format", "{{.Hostname}} {{.Status}}").splitlines()
            assert sorted(nodes) == ["manager Ready", "worker1 Ready", "worker2 Ready"], nodes
        with Step(report, "deploy the hardened stack across the nodes") as check:
            cluster("deploy", timeout_s=120)
            _, waited = wait_until(
                "the proxy to route to 2 text backends, one per worker, and the media backend",
                lambda: (
                    spread_over_workers() and len([w for w in backends() if w["status"] == "healthy"]) == 3
                ),
                timeout_s=300,
                step_s=2,
            )
            check.details["converged_s"] = round(waited, 1)
            check.details["tasks"] = running_tasks()
        yield
    finally:
        try:
            cluster("clean", timeout_s=300)
        except CommandError as exc:
            print(f"clean-up problem: {exc}")


def under_load(action: Callable[[], Any], *, max_s: float = 240) -> LoadResult:
    return asyncio.run(
        load(
            f"{PROXY}/inference",
            concurrency=4,
            action=action,
            at_s=2.0,
            min_duration_s=4.0,
            max_duration_s=max_s,
            body=BODY,
            timeout_s=120,
        )
    )


def timed_wait(
    times: dict[str, float], key: str, t0: float, what: str, predicate: Callable[[], Any], timeout_s: float
) -> None:
    """Wait (bounded) for ``predicate`` and record the seconds since ``t0`` under ``key``."""
    wait_until(what, predicate, timeout_s=timeout_s, step_s=0.2)
    times[key] = time.monotonic() - t0


def restore_and_rebalance(check: Check, node: str) -> float:
    """``make restore-node``, then wait for the rebalance; the seconds the restore took."""
    t0 = time.monotonic()
    cluster("restore", node, timeout_s=180)
    restored = time.monotonic() - t0
    wait_until("the rebalance to finish with a backend on each worker", rebalanced, timeout_s=240, step_s=1)
    check.details["rebalanced_s"] = round(time.monotonic() - t0, 1)
    return restored


def zero_failures(check: Check, result: LoadResult, times: dict[str, float]) -> None:
    """Report a run under load with the action's timings, and require that every request succeeded."""
    check.details.update({k: round(v, 1) for k, v in times.items()})
    check.details["requests"] = dict(result.codes)
    check.details["served_by"] = dict(result.served)
    check.evidence = result.errors[:8]
    assert result.failures == 0, result.errors[:5]
    assert sum(result.codes.values()) > 10


def test_01_placement(swarm_cluster: None, report: Report) -> None:
    with Step(report, "placement: proxy on the manager, one backend per worker, both serve") as check:
        tasks = running_tasks()
        check.details["tasks"] = tasks
        assert tasks["proxy-lb"] == ["manager"]
        assert sorted(tasks["backend"]) == list(WORKERS)
        assert set(tasks["backend-media"]) <= set(WORKERS)
        served = served_by_nodes()
        check.details["served_by_node"] = dict(served)
        assert set(served) == set(WORKERS), served


def queue_jobs(count: int, seconds: float) -> list[str]:
    with httpx.Client(timeout=30) as http:
        return [
            http.post(f"{PROXY}/v1/queues/sim/jobs?wait=false", json={"args": [str(seconds)]}).json()[
                "job_id"
            ]
            for _ in range(count)
        ]


def job_results(ids: list[str]) -> list[dict[str, Any]]:
    with httpx.Client(timeout=70) as http:
        return [http.get(f"{PROXY}/v1/jobs/{i}", params={"wait_s": 60}).json() for i in ids]


def test_01b_queue_jobs_from_the_test_client_run_on_both_worker_nodes(
    swarm_cluster: None, report: Report
) -> None:
    with Step(report, "inferno bench --queue sim from the host: jobs served on both worker nodes") as check:
        wait_until(
            "a queue worker polling from each worker node",
            lambda: httpx.get(f"{OPS}/queues", timeout=5).json()["queues"]["sim"]["workers_polling"] >= 2,
            timeout_s=120,
            step_s=1,
        )
        out = run(
            [sys.executable, "-m", "inferno", "bench", PROXY, "--queue", "sim", "--job-arg", "0.2",
             "-c", "4", "-n", "40", "--output", "json", "--quiet"],
            timeout_s=180,
        )  # fmt: skip
        data = json.loads(out)
        served = {node: row["served"] for node, row in data["nodes"].items()}
        check.details.update({"served_by_node": served, "summary": data["summary"]["outcomes"]})
        assert data["summary"]["succeeded"] == 40, data["summary"]
        assert set(served) == set(WORKERS), served


def test_02_drain_under_load(swarm_cluster: None, report: Report) -> None:
    jobs = queue_jobs(24, 2.0)  # a queue worker runs on each worker node: some of these run on worker1
    with Step(report, "drain worker1 under load: tasks move, register, zero failed requests") as check:
        times: dict[str, float] = {}

        def drain() -> None:
            t0 = time.monotonic()
            cluster("drain", "worker1", timeout_s=60)
            timed_wait(
                times,
                "tasks_moved_s",
                t0,
                "every task running again, none on worker1",
                lambda: all_running_on({"manager", "worker2"}),
                timeout_s=120,
            )
            timed_wait(
                times,
                "capacity_restored_s",
                t0,
                "2 healthy text backends again, both on worker2",
                lambda: healthy_text_nodes() == Counter({"worker2": TEXT_BACKENDS}),
                timeout_s=180,
            )

        zero_failures(check, under_load(drain), times)
    with Step(
        report, "the drained worker node lost no queue job: its worker finished its job first"
    ) as check:
        results = job_results(jobs)
        check.details["nodes"] = dict(Counter(r.get("node") for r in results))
        check.details["attempts"] = dict(Counter(r.get("attempts") for r in results))
        assert [r.get("outcome") for r in results] == ["success"] * len(jobs), results[:3]
        assert "worker1" in check.details["nodes"], check.details


def test_03_restore_the_drained_worker(swarm_cluster: None, report: Report) -> None:
    with Step(report, "restore worker1 (make restore-node): active again, backends rebalanced") as check:
        restore_and_rebalance(check, "worker1")
        check.details["served_by_node"] = dict(served_by_nodes())


def test_04_node_loss_under_load(swarm_cluster: None, report: Report) -> None:
    with Step(report, "stop worker2's container outright under load: zero failed requests") as check:
        times: dict[str, float] = {}

        def lose() -> None:
            t0 = time.monotonic()
            cluster("kill", "worker2", timeout_s=60)
            timed_wait(
                times,
                "proxy_stopped_routing_s",
                t0,
                "the proxy to stop routing to worker2",
                lambda: "worker2" not in healthy_text_nodes(),
                timeout_s=60,
            )
            timed_wait(
                times,
                "swarm_marked_down_s",
                t0,
                "Swarm to mark worker2 down",
                lambda: node_state("worker2") == "down",
                timeout_s=90,
            )
            timed_wait(
                times,
                "capacity_restored_s",
                t0,
                "worker2's tasks rescheduled on worker1 and registered",
                lambda: healthy_text_nodes() == Counter({"worker1": TEXT_BACKENDS}),
                timeout_s=180,
            )

        zero_failures(check, under_load(lose), times)


def test_05_the_lost_node_rejoins(swarm_cluster: None, report: Report) -> None:
    with Step(report, "restart worker2: it rejoins, and after a rebalance both workers serve") as check:
        check.details["rejoined_s"] = round(restore_and_rebalance(check, "worker2"), 1)
        assert node_state("worker2") == "ready"
        served = served_by_nodes()
        check.details["served_by_node"] = dict(served)
        assert set(served) == set(WORKERS), served
        check.details["status"] = cluster("status", timeout_s=60).splitlines()[:6]


def _admin_token() -> str:
    """The admin token ``cluster.sh deploy`` made (deploy/cluster/admin-token)."""
    path = os.environ.get(
        "INFERNO_CLUSTER_ADMIN_TOKEN_FILE", str(ROOT / "deploy" / "cluster" / "admin-token")
    )
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def test_05b_a_serverless_deployment_spreads_over_the_zones(swarm_cluster: None, report: Report) -> None:
    with Step(report, "a deployment at zero cold-starts on a worker, then spreads over both zones") as check:
        token = _admin_token()
        body = {
            **serverless.DEPLOYMENT,
            "placement": {"spread": "zone", "constraints": ["node.labels.inferno.inference==true"]},
        }
        serverless.register(OPS, token, body)
        seconds, r = serverless.cold_start(PROXY)
        assert r.status_code == 200, r.text
        check.details["cold_start_s"] = round(seconds, 1)
        report.facts["serverless_cold_start_s"] = round(seconds, 1)
        first = serverless.running_tasks(on_manager, STACK)
        assert len(first) == 1 and first[0] in WORKERS, first
        # Two instances: Swarm's spread preference puts one in each zone (worker1: a, worker2: b).
        serverless.patch(OPS, token, serverless.MODEL, {"auto_scaling_config": {"min_instances": 2}})
        nodes, waited = wait_until(
            "two running instances, one per worker",
            lambda: sorted(n) if len(n := serverless.running_tasks(on_manager, STACK)) == 2 else None,
            timeout_s=180,
            step_s=1,
        )
        check.details.update({"nodes": nodes, "scale_out_s": round(waited, 1)})
        assert nodes == list(WORKERS), nodes
        wait_until("both serving", lambda: len(serverless.serving(OPS)) == 2, timeout_s=120)
        labels = serverless.service_labels(on_manager, STACK)
        assert (
            labels["inferno.deployment"] == serverless.MODEL and labels["com.docker.stack.namespace"] == STACK
        )
        # Delete it: the controller drains and removes the service (nothing left for the steps after).
        serverless.delete(OPS, token, serverless.MODEL)
        wait_until(
            "the deployment's service to be removed",
            lambda: serverless.service_replicas(on_manager, STACK) is None,
            timeout_s=120,
            step_s=1,
        )


def test_06_nothing_left_behind(swarm_cluster: None, report: Report) -> None:
    with Step(
        report, "make swarm-clean leaves no container, volume, network or image of the cluster"
    ) as check:
        cluster("clean", timeout_s=300)
        left = {
            kind: run(["docker", kind, "ls", "-q", "--filter", f"label={LABEL}"]).split()
            for kind in ("container", "volume", "network", "image")
        }
        left["container"] = run(["docker", "ps", "-aq", "--filter", f"label={LABEL}"]).split()
        check.details["left"] = left
        assert not any(left.values()), left
