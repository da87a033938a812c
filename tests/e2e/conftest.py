"""Session fixtures of the Swarm end-to-end harness: images, swarm, stack, report."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import (
    IMAGE,
    LABEL_KEY,
    CommandError,
    Report,
    Step,
    admin_token_file,
    docker_gid,
    ensure_images,
    healthy_workers,
    ports_free,
    run,
    token_file,
    wait_until,
)

STACK = os.environ.get("INFERNO_E2E_STACK", "inferno-e2e")


@pytest.fixture(scope="session")
def report() -> Iterator[Report]:
    rep = Report("swarm e2e")
    yield rep
    rep.write()


@pytest.fixture(scope="session")
def state() -> dict[str, Any]:
    """What one step hands to the next (request ids, backends...)."""
    return {}


@pytest.fixture(scope="session")
def images(report: Report) -> dict[str, Any]:
    with Step(report, "build images (base + inferno)") as check:
        info = ensure_images(fresh=os.environ.get("INFERNO_E2E_FRESH") == "1")
        check.details.update(info)
    report.facts["image"] = IMAGE
    report.facts["image_size_mib"] = info["image_size_mib"]
    return info


@pytest.fixture(scope="session")
def swarm(report: Report) -> Iterator[str]:
    created = False
    state = run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"]).strip()
    if state != "active":
        run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377"])
        created = True
    node = run(["docker", "info", "--format", "{{.Swarm.NodeID}}"]).strip()
    run(
        [
            "docker",
            "node",
            "update",
            "--label-add",
            "inferno.lb=true",
            "--label-add",
            "inferno.inference=true",
            node,
        ]
    )
    report.facts["swarm_created_by_harness"] = created
    yield node
    run(
        ["docker", "node", "update", "--label-rm", "inferno.lb", "--label-rm", "inferno.inference", node],
        check=False,
    )
    if created:
        run(["docker", "swarm", "leave", "--force"], check=False, timeout_s=60)


def controller_services(stack_name: str) -> list[str]:
    """Services the controller made for deployments (they carry the stack's namespace)."""
    return run(
        [
            "docker", "service", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack_name}",
            "--filter", "label=inferno.deployment",
        ],
        check=False,
    ).split()  # fmt: skip


def _teardown(report: Report) -> None:
    with Step(report, "tear down (stack, deployment services, networks, secrets, volume)") as check:
        run(["docker", "stack", "rm", STACK], check=False, timeout_s=60)
        label = f"label={LABEL_KEY}={STACK}"
        # `stack rm` removes the controller's services too (by namespace); one the
        # controller created while the stack was going is removed here, by label.
        check.details["deployment_services_left_by_stack_rm"] = len(controller_services(STACK))

        def gone() -> bool:
            left = controller_services(STACK)
            if left:
                run(["docker", "service", "rm", *left], check=False)
            containers = run(["docker", "ps", "-aq", "--filter", label]).split()
            networks = run(["docker", "network", "ls", "-q", "--filter", label]).split()
            secrets = run(["docker", "secret", "ls", "-q", "--filter", label], check=False).split()
            return not left and not containers and not networks and not secrets

        _, waited = wait_until("stack containers and networks to be gone", gone, timeout_s=90, step_s=1)
        check.details["seconds_until_gone"] = round(waited, 1)
        # The proxy's state volume (keys, deployments): the next run starts empty.
        volumes = run(["docker", "volume", "ls", "-q", "--filter", label]).split()
        if volumes:
            run(["docker", "volume", "rm", *volumes], check=False)


@pytest.fixture(scope="session")
def stack(images: dict[str, Any], swarm: str, report: Report) -> Iterator[str]:
    busy = ports_free(8080, 6100)
    if busy:
        pytest.fail(f"ports {busy} on 127.0.0.1 are in use; stop what holds them before the e2e run")
    env = {
        "INFERNO_STACK_LABEL": STACK,
        "INFERNO_IMAGE": IMAGE,
        "INFERNO_CLUSTER_TOKEN_FILE": str(token_file()),
        "INFERNO_ADMIN_TOKEN_FILE": str(admin_token_file()),
        "DOCKER_GID": docker_gid(),
    }
    try:
        with Step(report, "docker stack deploy") as check:
            run(["docker", "stack", "deploy", "-c", "deploy/docker-stack.yml", STACK], env=env)
            check.details["stack"] = STACK
        yield STACK
    finally:
        try:
            _teardown(report)
        except (AssertionError, CommandError) as exc:
            print(f"teardown problem: {exc}")


def service_ps(stack_name: str) -> str:
    return run(["docker", "stack", "ps", "--no-trunc", stack_name], check=False)


def wait_converged(stack_name: str, replicas: dict[str, int], timeout_s: float) -> float:
    """Bounded wait: every service at its replica count, every task healthy, and
    the proxy seeing exactly the backends. Prints ``docker stack ps`` on failure."""

    def converged() -> bool:
        for service, want in replicas.items():
            ids = run(
                [
                    "docker",
                    "ps",
                    "-q",
                    "--filter",
                    f"label=com.docker.swarm.service.name={stack_name}_{service}",
                    "--filter",
                    "health=healthy",
                ]
            ).split()
            if len(ids) != want:
                return False
        media = replicas.get("backend-media", 0)
        return len(healthy_workers()) == replicas["backend"] and (
            not media or len(healthy_workers("image-classification")) == media
        )

    try:
        _, waited = wait_until(f"{replicas} running and healthy", converged, timeout_s=timeout_s, step_s=0.5)
    except AssertionError:
        print(service_ps(stack_name))
        raise
    return waited


def now() -> float:
    return time.monotonic()
