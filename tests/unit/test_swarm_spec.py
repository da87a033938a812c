"""The swarm orchestrator's pure part: a deployment's service spec from the stack's
backend service, names, change detection, and tasks read back as instances."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from inferno.deployments.spec import DeploymentSpec
from inferno.errors import ConfigError
from inferno.orchestrators import DesiredDeployment, Orchestrator, OrchestratorContext
from inferno.orchestrators.swarm import SwarmOrchestrator
from inferno.orchestrators.swarm_spec import (
    LABEL_DEPLOYMENT,
    LABEL_GENERATION,
    LABEL_NAMESPACE,
    LABEL_SPEC_HASH,
    MAX_SERVICE_NAME,
    instance_of,
    replicas_of,
    service_name,
    service_spec,
    task_state,
)

#: the stack's `backend` service as `docker stack deploy` makes it (Spec, trimmed)
TEMPLATE: dict[str, Any] = {
    "Name": "inferno_backend",
    "Labels": {
        "com.docker.stack.image": "inferno:latest",
        "com.docker.stack.namespace": "inferno",
        "com.inferno.stack": "inferno",
    },
    "TaskTemplate": {
        "ContainerSpec": {
            "Image": "inferno:latest",
            "Labels": {"com.docker.stack.namespace": "inferno", "com.inferno.stack": "inferno"},
            "Args": [
                "backend",
                "--listen-addr",
                "0.0.0.0:3000",
                "--ops-addr",
                "0.0.0.0:6100",
                "--cluster-token-file",
                "/run/secrets/cluster_token",
                "--discovery-lb",
                "proxy-lb:6100",
                "--threads",
                "1",
                "--heartbeat-interval-s",
                "1",
                "--drain-grace-s",
                "10",
            ],
            "Hostname": "{{.Node.Hostname}}-backend-{{.Task.Slot}}",
            "Privileges": {"CredentialSpec": None, "SELinuxContext": None},
            "ReadOnly": True,
            "Mounts": [{"Type": "tmpfs", "Target": "/tmp"}],
            "StopGracePeriod": 15000000000,
            "Healthcheck": {"Test": ["CMD", "python", "-m", "inferno.healthcheck"], "Interval": 5000000000},
            "Secrets": [
                {
                    "File": {"Name": "cluster_token", "UID": "0", "GID": "0", "Mode": 292},
                    "SecretID": "s3cr3t",
                    "SecretName": "inferno_cluster_token",
                }
            ],
            "CapabilityDrop": ["ALL"],
            "Isolation": "default",
        },
        "Resources": {
            "Limits": {"NanoCPUs": 1000000000, "MemoryBytes": 805306368},
            "Reservations": {"NanoCPUs": 250000000, "MemoryBytes": 268435456},
        },
        "RestartPolicy": {"Condition": "any", "Delay": 1000000000, "MaxAttempts": 0},
        "Placement": {
            "Constraints": ["node.labels.inferno.inference == true"],
            "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}],
            "Platforms": [{"Architecture": "amd64", "OS": "linux"}],
        },
        "Networks": [{"Target": "net1", "Aliases": ["backend"]}],
        "LogDriver": {"Name": "json-file", "Options": {"max-file": "3", "max-size": "10m"}},
        "ForceUpdate": 2,
        "Runtime": "container",
    },
    "Mode": {"Replicated": {"Replicas": 2}},
    "UpdateConfig": {"Parallelism": 1, "Order": "start-first", "FailureAction": "rollback"},
    "EndpointSpec": {"Mode": "dnsrr"},
}


def desired(replicas: int = 1, generation: int = 1, **spec: Any) -> DesiredDeployment:
    body = {"model": "smol-dep", "backend": "llamacpp", **spec}
    return DesiredDeployment(DeploymentSpec.model_validate(body), generation, replicas)


def build(d: DesiredDeployment, template: dict[str, Any] = TEMPLATE) -> dict[str, Any]:
    return service_spec(template, d, stack="inferno", discovery_lb="proxy-lb:6100", model_dir="/models")


def test_the_service_is_the_template_with_the_deployments_command() -> None:
    d = desired(
        2,
        3,
        backend_config={"threads": 1, "model_path": "smol/model.gguf"},
        auto_scaling_config={"drain_timeout_s": 20, "max_instances": 4},
    )
    spec = build(d)
    task, container = spec["TaskTemplate"], spec["TaskTemplate"]["ContainerSpec"]
    assert spec["Name"] == "inferno_dep-smol-dep"
    assert container["Args"] == [
        "backend",
        "--listen-addr", "0.0.0.0:3000", "--ops-addr", "0.0.0.0:6100",
        "--cluster-token-file", "/run/secrets/cluster_token", "--heartbeat-interval-s", "1",
        "--discovery-lb", "proxy-lb:6100", "--engine=llamacpp", "--model-id=smol-dep",
        "--drain-grace-s=20.0", "--model-path=/models/smol/model.gguf", "--threads=1",
    ]  # fmt: skip
    # hardening, secrets, resources, logging and networks come from the template
    for key in ("Image", "ReadOnly", "Mounts", "Secrets", "CapabilityDrop", "Healthcheck"):
        assert container[key] == TEMPLATE["TaskTemplate"]["ContainerSpec"][key], key
    for key in ("Resources", "RestartPolicy", "LogDriver"):
        assert task[key] == TEMPLATE["TaskTemplate"][key], key
    assert task["Networks"] == [{"Target": "net1", "Aliases": ["dep-smol-dep"]}]
    assert "ForceUpdate" not in task
    # the backend drains within drain_timeout_s; Swarm waits 10 s longer before SIGKILL
    assert container["StopGracePeriod"] == 30 * 10**9
    assert container["Hostname"] == "{{.Node.Hostname}}-{{.Task.ID}}"
    assert replicas_of(spec) == 2
    assert spec["UpdateConfig"]["Order"] == "start-first"
    assert spec["EndpointSpec"] == {"Mode": "dnsrr"}
    for labels in (spec["Labels"], container["Labels"]):
        assert labels[LABEL_DEPLOYMENT] == "smol-dep" and labels[LABEL_GENERATION] == "3"
        assert labels[LABEL_NAMESPACE] == "inferno" and labels["com.inferno.stack"] == "inferno"
    assert "com.docker.stack.image" not in spec["Labels"]
    assert TEMPLATE["TaskTemplate"]["ContainerSpec"]["Hostname"].endswith("{{.Task.Slot}}")  # not mutated


def test_placement_adds_to_the_templates_constraints() -> None:
    placement = build(
        desired(
            placement={"constraints": ["node.role!=manager"], "spread": "zone", "max_replicas_per_node": 1}
        )
    )["TaskTemplate"]["Placement"]
    assert placement["Constraints"] == ["node.labels.inferno.inference == true", "node.role!=manager"]
    assert placement["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]
    assert placement["MaxReplicas"] == 1
    assert placement["Platforms"] == TEMPLATE["TaskTemplate"]["Placement"]["Platforms"]
    plain = build(desired())["TaskTemplate"]["Placement"]
    assert plain["Preferences"] == TEMPLATE["TaskTemplate"]["Placement"]["Preferences"]
    assert "MaxReplicas" not in plain


def test_the_digest_changes_with_the_spec_but_not_with_replicas() -> None:
    base = build(desired(1))["Labels"][LABEL_SPEC_HASH]
    assert build(desired(5))["Labels"][LABEL_SPEC_HASH] == base
    assert build(desired(1, 2))["Labels"][LABEL_SPEC_HASH] != base
    assert build(desired(1, backend_config={"threads": 2}))["Labels"][LABEL_SPEC_HASH] != base
    forced = copy.deepcopy(TEMPLATE)
    forced["TaskTemplate"]["ForceUpdate"] = 7  # `docker service update --force` on the template
    assert build(desired(1), forced)["Labels"][LABEL_SPEC_HASH] == base
    newer = copy.deepcopy(TEMPLATE)
    newer["TaskTemplate"]["ContainerSpec"]["Image"] = "inferno:v2"
    assert build(desired(1), newer)["Labels"][LABEL_SPEC_HASH] != base


def test_service_names_are_valid_and_distinct() -> None:
    assert service_name("inferno", "smol-dep") == "inferno_dep-smol-dep"
    a, b = service_name("inferno", "Qwen2.5:0.5b"), service_name("inferno", "qwen2-5-0-5b")
    assert a != b and a.startswith("inferno_dep-qwen2-5-0-5b-")
    long = service_name("inferno-e2e", "m" * 128)
    assert len(long) <= MAX_SERVICE_NAME and long != service_name("inferno-e2e", "m" * 127)


def task(state: str, desired_state: str = "running", **extra: Any) -> dict[str, Any]:
    return {
        "ID": "t1",
        "ServiceID": "svc",
        "NodeID": "n1",
        "CreatedAt": "2026-12-01T12:00:00.123456789Z",
        "DesiredState": desired_state,
        "Status": {"State": state},
        "Spec": {"ContainerSpec": {"Labels": {LABEL_GENERATION: "4"}}},
        "NetworksAttachments": [
            {"Network": {"ID": "ingress"}, "Addresses": ["10.0.0.9/24"]},
            {"Network": {"ID": "net1"}, "Addresses": ["10.0.1.7/24"]},
        ],
        **extra,
    }


@pytest.mark.parametrize(
    ("state", "wanted", "expected"),
    [
        ("running", "running", "ready"),
        ("starting", "running", "starting"),
        ("pending", "running", "starting"),
        ("running", "shutdown", "draining"),
        ("preparing", "shutdown", "stopping"),
        ("shutdown", "shutdown", None),
        ("failed", "shutdown", None),
        ("complete", "shutdown", None),
    ],
)
def test_task_states(state: str, wanted: str, expected: str | None) -> None:
    assert task_state(task(state, wanted)) == expected


def test_a_task_as_an_instance() -> None:
    info = instance_of(
        task("running"), deployment="smol-dep", nodes={"n1": "worker1"}, network_ids=["net1"], port=3000
    )
    assert info is not None
    assert (info.id, info.deployment, info.generation, info.state) == ("t1", "smol-dep", 4, "ready")
    assert info.node == "worker1" and info.address == "10.0.1.7:3000"
    assert info.started == pytest.approx(1796126400.123456)
    starting = instance_of(task("starting"), deployment="d", nodes={}, network_ids=["net1"], port=3000)
    assert starting is not None and starting.address == "" and starting.node == "n1"


def test_options_are_checked_when_built() -> None:
    context = OrchestratorContext(state_dir="/tmp", discovery_lb="proxy-lb:6100")
    assert Orchestrator.lookup("swarm") is SwarmOrchestrator
    with pytest.raises(ConfigError, match="template"):
        Orchestrator.create("swarm", context)
    with pytest.raises(ConfigError, match="unknown"):
        Orchestrator.create("swarm", OrchestratorContext("/tmp", "p:1", options=(("templat", "x"),)))
    built = Orchestrator.create(
        "swarm", OrchestratorContext("/tmp", "p:1", options=(("template", "backend"),))
    )
    assert built.status()["connected"] is False and built.instances() == []


def test_a_worker_deployment_is_an_inferno_worker_service_named_per_task() -> None:
    d = desired(1, 1, kind="worker", queue="sim", workload="sleep")
    container = build(d)["TaskTemplate"]["ContainerSpec"]
    assert container["Args"] == [
        "worker", "--discovery-lb", "proxy-lb:6100",
        "--cluster-token-file", "/run/secrets/cluster_token", "--queue=sim", "--", "sleep",
    ]  # fmt: skip
    assert "INFERNO_NODE_NAME={{.Node.Hostname}}" in container["Env"]
    assert "INFERNO_POD_NAME={{.Task.Name}}" in container["Env"]
    assert "Healthcheck" not in container  # the backend's probe of its own port is not a worker's
    engine = build(desired(1, 1, kind="worker", queue="chat", backend_config={"threads": 2}))
    assert engine["TaskTemplate"]["ContainerSpec"]["Args"][-3:] == [
        "--queue=chat",
        "--engine=llamacpp",
        "--threads=2",
    ]
