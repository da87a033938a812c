"""Serverless deployments end to end: register one through the proxy's admin API, let
the controller cold-start it on Swarm, scale it, and watch it go back to zero.

Shared by the single-node (test_swarm) and the three-node (test_multinode) runs: the
Docker commands go through ``docker``, a callable that runs ``docker ...`` where the
Swarm manager is (here, or inside the manager node).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

#: the deployment the tests register: min 0, so it starts at zero
MODEL = "smol-dep"
DEPLOYMENT: dict[str, Any] = {
    "model": MODEL,
    "backend": "llamacpp",
    "backend_config": {"threads": 1},
    "auto_scaling_config": {
        "min_instances": 0,
        "max_instances": 2,
        "target_ongoing_requests": 2,
        "keep_alive_s": 20,
        "downscale_delay_s": 5,
        "cold_start_timeout_s": 120,
        "drain_timeout_s": 5,
    },
}
CHAT = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Name a color."}]}

Docker = Callable[..., str]


def admin(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(ops: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{ops}/v1/deployments", json=body, headers=admin(token), timeout=10)
    assert r.status_code in (200, 201), (r.status_code, r.text)
    return dict(r.json())


def patch(ops: str, token: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.patch(f"{ops}/v1/deployments/{model}", json=body, headers=admin(token), timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)
    return dict(r.json())


def delete(ops: str, token: str, model: str) -> None:
    r = httpx.delete(f"{ops}/v1/deployments/{model}", headers=admin(token), timeout=10)
    assert r.status_code in (200, 202, 204, 404), (r.status_code, r.text)


def service_name(stack: str) -> str:
    return f"{stack}_dep-{MODEL}"


def service_labels(docker: Docker, stack: str) -> dict[str, str]:
    import json

    out = docker("docker", "service", "inspect", "-f", "{{json .Spec.Labels}}", service_name(stack))
    return dict(json.loads(out.strip()))


def service_replicas(docker: Docker, stack: str) -> int | None:
    """The service's replica count, None while it does not exist."""
    try:
        out = docker(
            "docker", "service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", service_name(stack)
        )
    except Exception:  # the command failed: no such service
        return None
    return int(out.strip())


def running_tasks(docker: Docker, stack: str) -> list[str]:
    """The nodes the deployment's live tasks are on: running, or started and waiting for
    their first health check (Swarm says "Starting"; the backend may already serve)."""
    out = docker(
        "docker", "service", "ps", service_name(stack), "--filter", "desired-state=running",
        "--format", "{{.Node}} {{.CurrentState}}",
    )  # fmt: skip
    nodes = []
    for line in out.splitlines():
        node, _, state = line.partition(" ")
        if state.startswith(("Running", "Starting")):
            nodes.append(node)
    return nodes


def serving(ops: str) -> list[dict[str, Any]]:
    """The healthy backends the proxy routes the deployment's model to."""
    workers = httpx.get(f"{ops}/workers", timeout=3).json()["workers"]
    return [w for w in workers if MODEL in w["models"] and w["status"] == "healthy"]


def cold_start(proxy: str) -> tuple[float, httpx.Response]:
    """One chat request to a deployment at zero: it waits for the first instance."""
    started = time.monotonic()
    r = httpx.post(
        f"{proxy}/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "e2e-cold"}, timeout=180
    )
    return time.monotonic() - started, r


def orchestrator_reports(status: Any) -> list[dict[str, Any]]:
    """Every orchestrator report in the proxy's ``GET /status`` (wherever it nests them):
    the dicts that name the ``swarm`` orchestrator."""
    found: list[dict[str, Any]] = []
    if isinstance(status, dict):
        if status.get("name") == "swarm" or status.get("orchestrator") == "swarm":
            found.append(status)
        for value in status.values():
            found += orchestrator_reports(value)
    elif isinstance(status, list):
        for item in status:
            found += orchestrator_reports(item)
    return found
