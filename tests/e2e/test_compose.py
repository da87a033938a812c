"""End to end on Docker Compose (single host): deploy, infer, read the logs, kill.

Run with ``make e2e-compose``; writes artifacts/e2e/compose-e2e.{json,txt}.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.harness import (
    IMAGE,
    LABEL_KEY,
    PROXY,
    Report,
    Step,
    all_model_kinds,
    compose_command,
    ensure_images,
    healthy_workers,
    ports_free,
    run,
    token_file,
    wait_until,
)
from tests.loadgen import load

pytestmark = pytest.mark.e2e
PROJECT = "inferno-compose"
SERVICES = ("proxy-lb", "backend-1", "backend-2")


@pytest.fixture(scope="module")
def report() -> Iterator[Report]:
    rep = Report("compose e2e")
    yield rep
    rep.write()


@pytest.fixture(scope="module")
def compose(report: Report) -> Iterator[list[str]]:
    with Step(report, "build images (base + inferno)") as check:
        check.details.update(ensure_images(fresh=False))
    busy = ports_free(8080, 6100, 3001, 3002, 6201, 6202)
    if busy:
        pytest.fail(f"ports {busy} on 127.0.0.1 are in use")
    cmd = [*compose_command(), "-p", PROJECT, "-f", "deploy/docker-compose.yml"]
    env = {
        "INFERNO_STACK_LABEL": PROJECT,
        "INFERNO_IMAGE": IMAGE,
        "INFERNO_CLUSTER_TOKEN_FILE": str(token_file()),
    }
    try:
        with Step(report, "compose up") as check:
            run([*cmd, "up", "-d"], env=env, timeout_s=180)

            def healthy() -> bool:
                ids = run(
                    [
                        "docker",
                        "ps",
                        "-q",
                        "--filter",
                        f"label={LABEL_KEY}={PROJECT}",
                        "--filter",
                        "health=healthy",
                    ]
                ).split()
                return (
                    len(ids) == 4 and len(healthy_workers()) == 2 and len(healthy_workers("embeddings")) == 1
                )

            check.details["seconds_to_healthy"] = round(
                wait_until("4 healthy containers", healthy, 180)[1], 1
            )
        yield cmd
    finally:
        with Step(report, "compose down"):
            run(
                [*cmd, "down", "-v", "--remove-orphans", "--timeout", "20"],
                env=env,
                timeout_s=180,
                check=False,
            )
            wait_until(
                "project containers and networks gone",
                lambda: (
                    not run(["docker", "ps", "-aq", "--filter", f"label={LABEL_KEY}={PROJECT}"]).split()
                    and not run(
                        ["docker", "network", "ls", "-q", "--filter", f"label={LABEL_KEY}={PROJECT}"]
                    ).split()
                ),
                timeout_s=60,
            )


def _logs(cmd: list[str], service: str) -> list[str]:
    out = run([*cmd, "logs", "--no-color", service], env={"INFERNO_STACK_LABEL": PROJECT})
    return [line.split("|", 1)[1].strip() if "|" in line else line for line in out.splitlines()]


def test_compose_end_to_end(compose: list[str], report: Report) -> None:
    answered: list[tuple[str, str, str]] = []
    with Step(report, "inference through 127.0.0.1:8080, both backends") as check:
        with httpx.Client(timeout=60) as http:
            for i in range(4):
                rid = f"compose-{i}"
                r = http.post(
                    f"{PROXY}/inference",
                    json={"prompt": "Name a fruit.", "max_tokens": 16},
                    headers={"X-Request-ID": rid},
                )
                assert r.status_code == 200 and r.json()["text"].strip(), r.text
                answered.append((rid, r.headers["x-inferno-backend"], r.headers["x-inferno-backend-addr"]))
        assert {node for _, node, _ in answered} == {"backend-1", "backend-2"}
        check.evidence = [f"{rid} -> {node} ({addr})" for rid, node, addr in answered]
    with Step(report, "chat, embeddings and a photo, each served by a backend holding its model") as check:
        check.evidence = all_model_kinds()
    with Step(report, "logs: start, registration, routing, execution") as check:
        proxy = _logs(compose, "proxy-lb")
        assert any("Starting proxy server on 0.0.0.0:8080" in line for line in proxy)
        for name in ("backend-1", "backend-2"):
            assert any(f"Backend registered: {name}:3000" in line for line in proxy), name
        for rid, node, addr in answered:
            assert any(f"Routing request {rid} to {addr}" in line for line in proxy), rid
            own = _logs(compose, node)
            assert any(f"Processing inference request {rid} " in line for line in own), rid
            assert any(
                re.search(rf"Inference completed in \d+ms for request {rid} ", line) for line in own
            ), rid
        check.details["correlated_request_ids"] = len(answered)
    with Step(report, "docker kill backend-1 under load") as check:
        container = run([*compose, "ps", "-q", "backend-1"], env={"INFERNO_STACK_LABEL": PROJECT}).strip()

        def kill() -> None:
            run(["docker", "kill", container])

        result = asyncio.run(
            load(
                f"{PROXY}/inference",
                concurrency=4,
                action=kill,
                at_s=2.0,
                min_duration_s=6.0,
                max_duration_s=60.0,
                body={"prompt": "Say hello.", "max_tokens": 8},
            )
        )
        check.details.update(
            {"requests": sum(result.codes.values()), "failed": result.failures, "served": dict(result.served)}
        )
        report.facts["kill_failed_requests"] = result.failures
        assert result.failures == 0, result.errors[:5]


def test_compose_report_facts(compose: list[str], report: Report) -> None:
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).strip())
    report.facts["image_size_mib"] = round(size / 2**20, 1)
    assert report.checks and all(c.ok for c in report.checks)
