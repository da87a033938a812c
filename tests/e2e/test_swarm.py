"""End to end on Docker Swarm: deploy, infer, read the logs, kill, scale, roll, and a
serverless deployment that the controller starts from zero, scales and stops again.

The steps run in order and share state; each writes its check, timing and log
evidence into the report (artifacts/e2e/swarm-e2e.{json,txt}).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from typing import Any

import httpx
import pytest

from tests.e2e import serverless
from tests.e2e.conftest import service_ps, wait_converged
from tests.e2e.harness import (
    ADMIN_TOKEN,
    CLUSTER_TOKEN,
    LABEL_KEY,
    OPS,
    PROXY,
    ROOT,
    Report,
    Step,
    all_model_kinds,
    healthy_workers,
    run,
    service_logs,
    task_containers,
    unauthenticated_registration_inside,
    wait_until,
    workers,
)
from tests.loadgen import LoadResult, load

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
LOAD_BODY = {"prompt": "Say hello.", "max_tokens": 8}
#: the stack's services and their replicas: text backends plus one embeddings + image backend
SERVICES = {"proxy-lb": 1, "backend": 2, "backend-media": 1, "worker": 2}


def _node_prefix(node_id: str) -> str:
    """Backends' default node id is ``<container hostname>-<port>``; the hostname is
    the container id's first 12 characters."""
    return node_id.rsplit("-", 1)[0]


def test_01_services_running_and_healthy(stack: str, report: Report) -> None:
    with Step(report, "services running and healthy") as check:
        waited = wait_converged(stack, SERVICES, timeout_s=180)
        check.details["seconds_to_healthy"] = round(waited, 1)
        check.evidence = service_ps(stack).splitlines()[:6]
        addresses = [w["address"] for w in workers()]
        check.details["backend_addresses"] = addresses
        # each replica registered its own task address (dnsrr: there is no VIP)
        assert len(set(addresses)) == 2


def test_02_inference_through_published_port(stack: str, report: Report, state: dict[str, Any]) -> None:
    with Step(report, "inference: /inference, chat, chat stream") as check:
        answered: list[dict[str, str]] = []
        with httpx.Client(timeout=60) as http:
            for i in range(6):
                r = http.post(
                    f"{PROXY}/inference",
                    json={"prompt": f"Name a fruit ({i}).", "max_tokens": 24},
                    headers={"X-Request-ID": f"e2e-inf-{i}"},
                )
                assert r.status_code == 200, r.text
                body = r.json()
                assert {"id", "request_id", "model", "backend", "text", "usage", "timings"} <= set(body)
                assert body["request_id"] == f"e2e-inf-{i}" and body["model"] == MODEL
                assert body["text"].strip(), body
                assert set(body["timings"]) == {"queue_ms", "backend_ms", "total_ms"}
                answered.append(
                    {
                        "id": body["request_id"],
                        "node": r.headers["x-inferno-backend"],
                        "addr": r.headers["x-inferno-backend-addr"],
                    }
                )
            chat = {
                "model": MODEL,
                "max_tokens": 24,
                "messages": [{"role": "user", "content": "Name a color."}],
            }
            r = http.post(f"{PROXY}/v1/chat/completions", json=chat, headers={"X-Request-ID": "e2e-chat"})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"].strip()
            answered.append(
                {
                    "id": "e2e-chat",
                    "node": r.headers["x-inferno-backend"],
                    "addr": r.headers["x-inferno-backend-addr"],
                }
            )
            pieces: list[str] = []
            with http.stream(
                "POST",
                f"{PROXY}/v1/chat/completions",
                json={**chat, "stream": True},
                headers={"X-Request-ID": "e2e-stream"},
            ) as s:
                assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
                node, addr = s.headers["x-inferno-backend"], s.headers["x-inferno-backend-addr"]
                events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            for event in events[:-1]:
                chunk = json.loads(event)
                assert chunk["object"] == "chat.completion.chunk"
                pieces.append(chunk["choices"][0]["delta"].get("content") or "")
            assert "".join(pieces).strip() and len(events) > 3
            answered.append({"id": "e2e-stream", "node": node, "addr": addr})
        state["answered"] = answered
        check.details["requests"] = len(answered)
        check.evidence = [f"{a['id']} -> {a['node']} ({a['addr']})" for a in answered]


def test_02b_every_model_kind_reaches_a_backend_holding_it(stack: str, report: Report) -> None:
    with Step(report, "chat, embeddings and a photo, each served by a backend holding its model") as check:
        check.evidence = all_model_kinds()


def test_02c_registration_without_the_token_is_refused_inside_the_cluster(stack: str, report: Report) -> None:
    with Step(report, "a registration without the cluster token, from inside the cluster: 401") as check:
        check.evidence = unauthenticated_registration_inside(f"{stack}_inferno", f"{LABEL_KEY}={stack}")


def test_02d_containers_are_hardened(stack: str, report: Report) -> None:
    with Step(
        report, "every task container: non-root, read-only root, no capabilities, token as a secret"
    ) as check:
        evidence = []
        for service in SERVICES:
            for container in filter(None, task_containers(f"{stack}_{service}").values()):
                inspected = json.loads(run(["docker", "inspect", container]))[0]
                host, config = inspected["HostConfig"], inspected["Config"]
                assert config["User"] == "10001:10001", config["User"]
                assert host["ReadonlyRootfs"] is True, service
                assert host["CapDrop"] and "ALL" in host["CapDrop"], host["CapDrop"]
                assert "/run/secrets/cluster_token" in config["Cmd"], config["Cmd"]
                assert not any("CLUSTER_TOKEN=" in e for e in config["Env"]), "token in the environment"
                evidence.append(
                    f"{service} {container[:12]}: user 10001, read-only, CapDrop {host['CapDrop']}"
                )
        check.evidence = evidence


def test_03_both_replicas_served(stack: str, report: Report, state: dict[str, Any]) -> None:
    with Step(report, "both replicas served requests") as check:
        nodes = {a["node"] for a in state["answered"]}
        check.details["served_by"] = sorted(nodes)
        assert len(nodes) == 2, nodes


def test_04_logs_correlate_request_ids(stack: str, report: Report, state: dict[str, Any]) -> None:
    with Step(report, "docker service logs: start, registration, routing, execution") as check:
        # A backend writes its completion line after the answer leaves, and the log
        # driver ships it a moment later: poll (bounded) until every line is there.
        deadline = time.monotonic() + 30
        while True:
            try:
                evidence = _correlate(stack, state)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        check.details["correlated_request_ids"] = len(state["answered"])
        # the standalone checker agrees
        out = run(
            ["bash", "scripts/validate-logs.sh", "--stack", stack, *[a["id"] for a in state["answered"]]]
        )
        assert "all checks passed" in out, out
        check.evidence = evidence + out.splitlines()[-3:]


def _correlate(stack: str, state: dict[str, Any]) -> list[str]:
    """Every answered request's routing, processing and completion lines, or AssertionError."""
    proxy_lines = [line for _, line in service_logs(f"{stack}_proxy-lb")]
    backend_lines = service_logs(f"{stack}_backend")
    containers = task_containers(f"{stack}_backend")
    evidence = [next(line for line in proxy_lines if "Starting proxy server on 0.0.0.0:8080" in line)]
    for worker in workers():
        registered = [line for line in proxy_lines if f"Backend registered: {worker['address']}" in line]
        assert registered, f"no registration line for {worker['address']}"
        evidence.append(registered[0])
    for answer in state["answered"]:
        rid, addr, node = answer["id"], answer["addr"], answer["node"]
        routing = [line for line in proxy_lines if f"Routing request {rid} to {addr}" in line]
        assert routing, f"no routing line for {rid}"
        tasks = [task for task, cid in containers.items() if cid.startswith(_node_prefix(node))]
        assert len(tasks) == 1, (node, containers)
        own = [line for task, line in backend_lines if task == tasks[0]]
        processing = [line for line in own if f"Processing inference request {rid} " in line]
        completed = [
            line
            for line in own
            if re.search(rf"Inference completed in \d+ms for request {re.escape(rid)} ", line)
        ]
        assert processing and completed, f"{rid}: missing backend lines in {tasks[0]}"
        evidence += [routing[0], processing[0], completed[0]]
    return evidence


def test_05_kill_a_backend_under_load(stack: str, report: Report, state: dict[str, Any]) -> None:
    with Step(report, "docker kill a backend task under load") as check:
        before = {w["address"]: w["node_id"] for w in healthy_workers()}
        victim_addr, victim_node = next(iter(before.items()))
        containers = task_containers(f"{stack}_backend")
        victim = next(cid for cid in containers.values() if cid.startswith(_node_prefix(victim_node)))
        timings: dict[str, float] = {}
        shared = LoadResult()

        def kill_and_watch() -> dict[str, float]:
            killed = time.monotonic()
            run(["docker", "kill", victim])

            def new_worker() -> dict[str, Any] | None:
                fresh = [w for w in healthy_workers() if w["address"] not in before]
                return fresh[0] if fresh else None

            worker, _ = wait_until("a replacement backend to register", new_worker, timeout_s=60, step_s=0.1)
            timings["registered_s"] = time.monotonic() - killed
            served = shared.served

            def serving() -> bool:
                return served.get(worker["node_id"], 0) > 0

            wait_until("the replacement to serve traffic", serving, timeout_s=30, step_s=0.05)
            timings["serving_s"] = time.monotonic() - killed
            return timings

        result = asyncio.run(
            load(
                f"{PROXY}/inference",
                concurrency=4,
                action=kill_and_watch,
                at_s=3.0,
                min_duration_s=8.0,
                max_duration_s=120.0,
                body=LOAD_BODY,
                result=shared,
            )
        )
        check.details.update(
            {
                "requests": sum(result.codes.values()),
                "failed": result.failures,
                "codes": dict(result.codes),
                "served": dict(result.served),
                "killed": f"{victim_node} ({victim_addr})",
                "reregistration_s": round(timings.get("registered_s", -1), 2),
                "replacement_serving_s": round(timings.get("serving_s", -1), 2),
            }
        )
        report.facts["reregistration_s"] = check.details["reregistration_s"]
        report.facts["replacement_serving_s"] = check.details["replacement_serving_s"]
        report.facts["kill_failed_requests"] = result.failures
        assert result.failures == 0, result.errors[:5]
        assert timings["registered_s"] < 10.0, timings
        # the proxy logged the failure and, where a request was retried, every try
        proxy_lines = [line for _, line in service_logs(f"{stack}_proxy-lb")]
        health = [
            line
            for line in proxy_lines
            if victim_addr in line
            and ("Backend unhealthy" in line or "Health check failed" in line or "Backend ejected" in line)
        ]
        assert health, "no health event logged for the killed backend"
        retried = [
            m.group(1) for line in proxy_lines if (m := re.search(r"Retrying request (\S+) after", line))
        ]
        for rid in retried:
            routes = [line for line in proxy_lines if f"Routing request {rid} to " in line]
            assert len(routes) >= 2, rid
        check.details["retried_requests"] = len(retried)
        check.evidence = health[:3] + [line for line in proxy_lines if "Retrying request" in line][:3]


def test_06_scale_out_and_in(stack: str, report: Report) -> None:
    service = f"{stack}_backend"
    with Step(report, "scale backend 2 -> 4 -> 1") as check:
        started = time.monotonic()
        run(["docker", "service", "scale", "--detach", f"{service}=4"])
        wait_until("4 healthy backends in /workers", lambda: len(healthy_workers()) == 4, timeout_s=120)
        out_s = time.monotonic() - started
        live = {w["address"] for w in healthy_workers()}
        started = time.monotonic()
        run(["docker", "service", "scale", "--detach", f"{service}=1"])

        def one_left() -> bool:
            # the three removed replicas deregistered (drain); one healthy remains
            present = {w["address"] for w in workers()} & live
            return len(present) == 1 and len(healthy_workers()) == 1

        wait_until("the scaled-in backends to leave /workers", one_left, timeout_s=90)
        in_s = time.monotonic() - started
        check.details.update({"scale_out_s": round(out_s, 2), "scale_in_s": round(in_s, 2)})
        report.facts["scale_out_s"] = round(out_s, 2)
        report.facts["scale_in_s"] = round(in_s, 2)
        run(["docker", "service", "scale", "--detach", f"{service}=2"])
        wait_converged(stack, SERVICES, timeout_s=120)


def test_07_rolling_update_under_load(stack: str, report: Report) -> None:
    service = f"{stack}_backend"
    with Step(report, "rolling update (--force, start-first) under load") as check:
        before = {w["address"] for w in healthy_workers()}

        def update() -> str:
            run(["docker", "service", "update", "--force", "--detach", service], timeout_s=60)

            def finished() -> str | None:
                status = run(
                    ["docker", "service", "inspect", "-f", "{{.UpdateStatus.State}}", service]
                ).strip()
                if status in ("paused", "rollback_started", "rollback_completed", "rollback_paused"):
                    raise AssertionError(f"update went wrong: {status}")
                return status if status == "completed" else None

            return str(wait_until("the rolling update to complete", finished, timeout_s=300, step_s=0.5)[0])

        result = asyncio.run(
            load(
                f"{PROXY}/inference",
                concurrency=4,
                action=update,
                at_s=2.0,
                min_duration_s=5.0,
                max_duration_s=330.0,
                body=LOAD_BODY,
            )
        )
        state = str(result.action_result)
        check.details.update(
            {
                "requests": sum(result.codes.values()),
                "failed": result.failures,
                "codes": dict(result.codes),
                "served": dict(result.served),
                "update_state": state,
                "seconds": round(result.elapsed_s, 1),
            }
        )
        report.facts["rolling_update_failed_requests"] = result.failures
        assert result.failures == 0, result.errors[:5]
        assert state == "completed", state
        after = wait_until(
            "2 healthy backends after the update",
            lambda: [ws for ws in [healthy_workers()] if len(ws) == 2],
            timeout_s=60,
        )[0][0]
        assert not ({w["address"] for w in after} & before), "old tasks still registered"


def test_08_inferno_bench_against_the_stack(stack: str, report: Report) -> None:
    import sys

    with Step(report, "inferno bench against the stack (text, json, html)") as check:
        base = [
            sys.executable,
            "-m",
            "inferno",
            "bench",
            PROXY,
            "-n",
            "24",
            "-c",
            "4",
            "--max-tokens",
            "8",
            "--quiet",
        ]
        out = json.loads(run([*base, "--output", "json"], timeout_s=180))
        text = run(base, timeout_s=180)
        html_path = "artifacts/e2e/bench.html"
        run([*base, "--output", "html", "--output-file", html_path], timeout_s=180)
        summary = out["summary"]
        check.details.update(
            {
                "throughput_rps": round(summary["throughput_rps"], 1),
                "p50_ms": round(summary["latency_s"]["p50"] * 1000, 1),
                "backends": {k: v["count"] for k, v in summary["backends"].items()},
            }
        )
        assert summary["succeeded"] == 24 and len(summary["backends"]) == 2
        assert "requests 24  ok 24  failed 0" in text
        assert "<svg" in (ROOT / html_path).read_text()


def test_09_proxy_health_summary(stack: str, report: Report) -> None:
    with Step(report, "proxy /health and /metrics after the run") as check:
        health = httpx.get(f"{OPS}/health", timeout=3).json()
        metrics = httpx.get(f"{OPS}/metrics", timeout=3).text
        check.details["health"] = health
        assert health["status"] == "healthy" and health["healthy"] == 3
        assert "inferno_requests_total" in metrics


def test_09b_dashboard_in_the_stack(stack: str, report: Report) -> None:
    with Step(report, "the dashboard on the published ops port: token-gated, every backend on it") as check:
        assert httpx.get(f"{OPS}/dashboard", timeout=3).status_code == 401
        auth = {"Authorization": f"Bearer {CLUSTER_TOKEN}"}
        page = httpx.get(f"{OPS}/dashboard", headers=auth, timeout=3)
        assert page.status_code == 200 and 'id="backends"' in page.text
        assert httpx.get(f"{OPS}/dashboard/static/dashboard.js", timeout=3).status_code == 200
        state = httpx.get(f"{OPS}/dashboard/api/state", headers=auth, timeout=3).json()
        rows = {row["node_id"]: row["status"] for row in state["backends"]}
        check.details["backends"] = rows
        assert list(rows.values()).count("healthy") == 3, rows
        assert sum(row["served"] for row in state["backends"]) > 0
        assert {event["kind"] for event in state["events"]} >= {"registered"}
        with httpx.stream("GET", f"{OPS}/dashboard/events", headers=auth, timeout=5) as feed:
            first = next(line for line in feed.iter_lines() if line.startswith("data: "))
        assert json.loads(first[6:])["type"] == "hello"


def test_10_build_left_no_untagged_images(stack: str, report: Report) -> None:
    with Step(report, "no untagged build images left behind") as check:
        leftovers = run(
            ["docker", "images", "-q", "--filter", "dangling=true", "--filter", f"label={LABEL_KEY}"]
        ).split()
        check.details["untagged_inferno_images"] = len(leftovers)
        assert not leftovers, leftovers


# -- serverless deployments (the controller and the swarm orchestrator) ----------------------------
def _docker(*args: str) -> str:
    return run(list(args), timeout_s=60)


def test_11_the_controller_is_hardened_and_reports(stack: str, report: Report) -> None:
    with Step(report, "inferno-controller: non-root in the socket's group, read-only, reporting") as check:
        containers = [c for c in task_containers(f"{stack}_inferno-controller").values() if c]
        assert containers, "no controller task"
        inspected = json.loads(run(["docker", "inspect", containers[-1]]))[0]
        host, config = inspected["HostConfig"], inspected["Config"]
        gid = str(os.stat("/var/run/docker.sock").st_gid)
        assert config["User"] == f"10001:{gid}", config["User"]
        assert host["ReadonlyRootfs"] is True and "ALL" in (host["CapDrop"] or [])
        assert any(m.get("Destination") == "/var/run/docker.sock" for m in inspected["Mounts"] or [])
        assert "/run/secrets/admin_token" in config["Cmd"]

        def reported() -> list[dict[str, Any]]:
            status = httpx.get(f"{OPS}/status", headers=serverless.admin(ADMIN_TOKEN), timeout=3).json()
            return [r for r in serverless.orchestrator_reports(status) if r.get("connected") is not False]

        reports, waited = wait_until("the controller's report in GET /status", reported, timeout_s=60)
        check.details["report_after_s"] = round(waited, 1)
        check.evidence = [json.dumps(reports[0])[:220]]


def test_12_a_deployment_at_zero_cold_starts_on_the_first_request(stack: str, report: Report) -> None:
    with Step(report, "POST /v1/deployments (min 0): the first chat cold-starts a Swarm task, 200") as check:
        serverless.register(OPS, ADMIN_TOKEN, serverless.DEPLOYMENT)
        time.sleep(3)  # a reconcile or two: still nothing runs
        # a service at zero replicas, or none yet: nothing runs
        if serverless.service_replicas(_docker, stack) is not None:
            assert serverless.service_replicas(_docker, stack) == 0
            assert not serverless.running_tasks(_docker, stack)
        assert not serverless.serving(OPS)
        seconds, r = serverless.cold_start(PROXY)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == serverless.MODEL and r.json()["choices"][0]["message"]["content"].strip()
        labels = serverless.service_labels(_docker, stack)
        assert labels["inferno.deployment"] == serverless.MODEL
        assert labels["com.docker.stack.namespace"] == stack and labels[LABEL_KEY] == stack
        assert serverless.service_replicas(_docker, stack) == 1
        check.details["cold_start_s"] = round(seconds, 1)
        report.facts["serverless_cold_start_s"] = round(seconds, 1)
        check.evidence = [f"{serverless.service_name(stack)} answered via {r.headers['x-inferno-backend']}"]


def test_13_the_deployment_scales_out_under_load(stack: str, report: Report) -> None:
    with Step(report, "load on the deployment: a second instance starts, zero failed requests") as check:
        times: dict[str, float] = {}

        def two_serving() -> None:
            started = time.monotonic()
            wait_until(
                "2 healthy instances of the deployment", lambda: len(serverless.serving(OPS)) == 2, 150
            )
            times["scale_out_s"] = time.monotonic() - started

        result = asyncio.run(
            load(
                f"{PROXY}/v1/chat/completions",
                concurrency=6,
                action=two_serving,
                at_s=0.5,
                min_duration_s=5.0,
                max_duration_s=200.0,
                body=serverless.CHAT,
                timeout_s=150,
            )
        )
        check.details.update({k: round(v, 1) for k, v in times.items()})
        check.details.update({"codes": dict(result.codes), "served": dict(result.served)})
        report.facts["serverless_scale_out_s"] = check.details.get("scale_out_s")
        assert result.failures == 0, result.errors[:5]
        assert serverless.service_replicas(_docker, stack) == 2
        assert len([n for n, c in result.served.items() if c]) == 2, result.served


def test_14_back_to_zero_after_the_keep_alive(stack: str, report: Report) -> None:
    with Step(report, "idle: back to zero instances after keep_alive_s (the service stays, at 0)") as check:
        started = time.monotonic()

        def at_zero() -> bool:
            return serverless.service_replicas(_docker, stack) == 0 and not serverless.running_tasks(
                _docker, stack
            )

        wait_until("the deployment to scale to zero", at_zero, timeout_s=180, step_s=1)
        check.details["to_zero_s"] = round(time.monotonic() - started, 1)
        wait_until("the proxy to route to none of it", lambda: not serverless.serving(OPS), timeout_s=30)
        report.facts["serverless_to_zero_s"] = check.details["to_zero_s"]


def test_15_deleting_the_deployment_removes_its_service(stack: str, report: Report) -> None:
    with Step(report, "DELETE /v1/deployments/smol-dep: the controller removes its service") as check:
        serverless.delete(OPS, ADMIN_TOKEN, serverless.MODEL)
        _, waited = wait_until(
            "the deployment's service to be removed",
            lambda: serverless.service_replicas(_docker, stack) is None,
            timeout_s=90,
            step_s=1,
        )
        check.details["removed_s"] = round(waited, 1)


def _jobs(count: int, seconds: float) -> list[str]:
    with httpx.Client(timeout=30) as http:
        return [
            http.post(f"{PROXY}/v1/queues/sim/jobs?wait=false", json={"args": [str(seconds)]}).json()[
                "job_id"
            ]
            for _ in range(count)
        ]


def _results(ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    out = []
    with httpx.Client(timeout=70) as http:
        for job_id in ids:
            left = max(1.0, deadline - time.monotonic())
            out.append(http.get(f"{PROXY}/v1/jobs/{job_id}", params={"wait_s": min(60.0, left)}).json())
    return out


def test_16_queue_jobs_are_served_by_the_worker_service(stack: str, report: Report) -> None:
    with Step(
        report, "pull queue sim: 20 jobs through the published port, run by both worker tasks"
    ) as check:
        ids = _jobs(20, 0.3)
        results = _results(ids, 90)
        assert [r.get("outcome") for r in results] == ["success"] * 20, results[:3]
        pods = {r["pod"] for r in results}
        check.details["pods"] = sorted(pods)
        assert len(pods) == 2 and all(p.startswith(f"{stack}_worker.") for p in pods), pods
        lines = [line for _, line in service_logs(f"{stack}_worker") if "Job 'j-" in line]
        check.evidence = lines[:4]
        assert any(ids[0] in line and "success" in line for line in lines), lines[:5]


def test_17_a_worker_task_killed_mid_job_loses_nothing(stack: str, report: Report) -> None:
    with Step(
        report, "SIGKILL a worker task mid-job: its job comes back after the lease, none lost"
    ) as check:
        ids = _jobs(8, 2.0)

        def running_pod() -> str | None:
            rows = httpx.get(f"{OPS}/queues", timeout=5).json()["queues"]["sim"]["running_jobs"]
            return next((r["pod"] for r in rows if r["running_s"] < 1.0), None)

        pod, _ = wait_until("a job running on a worker", running_pod, timeout_s=30, step_s=0.1)
        containers = task_containers(f"{stack}_worker")
        run(["docker", "kill", containers[pod]])
        check.details["killed"] = pod
        results = _results(ids, 120)
        assert [r.get("outcome") for r in results] == ["success"] * 8, results
        attempts = sorted(r["attempts"] for r in results)
        check.details["attempts"] = attempts
        assert attempts[-1] == 2 and attempts.count(2) == 1, attempts
        expired = [
            line
            for _, line in service_logs(f"{stack}_proxy-lb")
            if "expired" in line and "Lease of job" in line
        ]
        check.evidence = expired[-2:]
        assert expired
        wait_converged(stack, SERVICES, timeout_s=120)  # Swarm replaced the task
