"""What the ``swarm`` orchestrator asks of the Engine API, as pure functions.

A deployment's service is the stack's hardened backend service (the *template*)
with the deployment's command, placement, labels and stop grace period: the same
image, networks, secrets, user, read-only root, tmpfs, capabilities, resources,
health check and logging. Tasks are read back into ``InstanceInfo`` here too, so
everything but the Docker calls themselves is tested without Docker.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from inferno.orchestrators.base import DesiredDeployment, InstanceInfo, InstanceState

#: service and container labels that mark what the orchestrator created
LABEL_DEPLOYMENT = "inferno.deployment"
LABEL_GENERATION = "inferno.generation"
#: a digest of everything in the service spec but its replicas: a change rolls the tasks
LABEL_SPEC_HASH = "inferno.spec-hash"
#: ``docker stack deploy`` and ``docker stack rm`` find a stack's services by this
LABEL_NAMESPACE = "com.docker.stack.namespace"
#: a service's task stops this much after its backend's own drain may have finished
STOP_GRACE_MARGIN_S = 10.0
#: Swarm limits service names to 63 characters
MAX_SERVICE_NAME = 63
#: template flags every instance keeps (addresses, the token, heartbeats, logging);
#: the engine's flags, the model and the drain come from the deployment instead
INHERITED_FLAGS = (
    "--listen-addr",
    "--ops-addr",
    "--cluster-token-file",
    "--heartbeat-interval-s",
    "--register-timeout-s",
    "--log-format",
    "--log-level",
    "--otlp-endpoint",
)
DEFAULT_LISTEN_PORT = 3000

_UNSAFE = re.compile(r"[^a-z0-9-]+")


def service_name(stack: str, deployment: str) -> str:
    """``<stack>_dep-<model id>``, made a valid service name; a short digest of the
    id keeps names apart when the id had to change (case, dots, length)."""
    prefix = f"{stack}_dep-"
    clean = _UNSAFE.sub("-", deployment.lower()).strip("-") or "x"
    if clean == deployment and len(prefix) + len(clean) <= MAX_SERVICE_NAME:
        return prefix + clean
    digest = hashlib.sha256(deployment.encode()).hexdigest()[:8]
    room = MAX_SERVICE_NAME - len(prefix) - len(digest) - 1
    return f"{prefix}{clean[:room].rstrip('-')}-{digest}"


def _inherited(args: Sequence[str]) -> dict[str, str]:
    """The template's ``--flag value`` pairs worth keeping (``--flag=value`` too)."""
    out: dict[str, str] = {}
    items = list(args)
    for i, item in enumerate(items):
        flag, eq, value = item.partition("=")
        if flag not in INHERITED_FLAGS:
            continue
        if eq:
            out[flag] = value
        elif i + 1 < len(items):
            out[flag] = items[i + 1]
    return out


def secret_path(container: Mapping[str, Any], suffix: str = "cluster_token") -> str | None:
    """Where the template's cluster-token secret is mounted, if it has one."""
    for secret in container.get("Secrets") or ():
        name = str(secret.get("SecretName", ""))
        target = str((secret.get("File") or {}).get("Name", ""))
        if name.endswith(suffix) or target.endswith(suffix):
            return target if target.startswith("/") else f"/run/secrets/{target or name}"
    return None


def backend_args(
    template_args: Sequence[str],
    desired: DesiredDeployment,
    *,
    discovery_lb: str,
    model_dir: str | None,
    token_file: str | None,
) -> list[str]:
    """``backend --engine E --model-id M --discovery-lb P --drain-grace-s D <options>``,
    keeping the template's addresses, token file, heartbeat and logging flags."""
    spec = desired.spec
    kept = _inherited(template_args)
    if token_file and "--cluster-token-file" not in kept:
        kept["--cluster-token-file"] = token_file
    if spec.kind == "worker":
        # A queue worker dials out only: no addresses; it leases with the cluster token.
        args = ["worker", "--discovery-lb", discovery_lb]
        for flag in ("--cluster-token-file", "--log-format", "--log-level"):
            if flag in kept:
                args += [flag, kept[flag]]
        return [*args, *spec.worker_args(model_dir)]
    args = ["backend"]
    for flag, value in kept.items():
        args += [flag, value]
    args += ["--discovery-lb", discovery_lb, *spec.backend_args(model_dir)]
    return args


def listen_port(args: Sequence[str]) -> int:
    """The data port the instances listen on (their address is task IP : this)."""
    value = _inherited(args).get("--listen-addr", "")
    _, _, port = value.rpartition(":")
    return int(port) if port.isdigit() else DEFAULT_LISTEN_PORT


def _placement(template: Mapping[str, Any], desired: DesiredDeployment) -> dict[str, Any]:
    """The template's constraints and the deployment's (both hold: a deployment only
    narrows where the operator lets backends run); the deployment's spread replaces
    the template's, and its per-node cap is set."""
    wanted = desired.spec.placement
    out = copy.deepcopy(dict(template))
    constraints = list(out.get("Constraints") or [])
    constraints += [c for c in wanted.constraints if c not in constraints]
    if constraints:
        out["Constraints"] = constraints
    if wanted.spread:
        label = wanted.spread if wanted.spread.startswith("node.") else f"node.labels.{wanted.spread}"
        out["Preferences"] = [{"Spread": {"SpreadDescriptor": label}}]
    if wanted.max_replicas_per_node is not None:
        out["MaxReplicas"] = wanted.max_replicas_per_node
    else:
        out.pop("MaxReplicas", None)
    return out


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A digest of a service spec without its replicas and without the digest itself."""
    body = {k: v for k, v in spec.items() if k != "Mode"}
    body["Labels"] = {k: v for k, v in (spec.get("Labels") or {}).items() if k != LABEL_SPEC_HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def service_spec(
    template: Mapping[str, Any],
    desired: DesiredDeployment,
    *,
    stack: str,
    discovery_lb: str,
    model_dir: str | None = None,
) -> dict[str, Any]:
    """The whole service spec for ``desired``, built from the template's ``Spec``."""
    task = copy.deepcopy(dict(template["TaskTemplate"]))
    task.pop("ForceUpdate", None)  # `docker service update --force` on the template rolls nothing of ours
    container = task["ContainerSpec"]
    template_args = list(container.get("Args") or [])
    container["Args"] = backend_args(
        template_args,
        desired,
        discovery_lb=discovery_lb,
        model_dir=model_dir,
        token_file=secret_path(container),
    )
    ours = {LABEL_DEPLOYMENT: desired.id, LABEL_GENERATION: str(desired.generation), LABEL_NAMESPACE: stack}
    container["Labels"] = {**(container.get("Labels") or {}), **ours}
    grace_s = desired.spec.auto_scaling_config.drain_timeout_s + STOP_GRACE_MARGIN_S
    container["StopGracePeriod"] = int(grace_s * 1e9)
    if desired.spec.kind == "worker":
        # Node and pod names in each job's result (Swarm fills the templates per task).
        env = [
            e
            for e in container.get("Env") or []
            if not e.startswith(("INFERNO_NODE_NAME=", "INFERNO_POD_NAME="))
        ]
        container["Env"] = [*env, "INFERNO_NODE_NAME={{.Node.Hostname}}", "INFERNO_POD_NAME={{.Task.Name}}"]
        container.pop("Healthcheck", None)  # the backend's probe of its own port is not a worker's
    if container.get("Hostname"):
        # A template's hostname names its node and slot; slots repeat across services.
        container["Hostname"] = "{{.Node.Hostname}}-{{.Task.ID}}"
    task["Placement"] = _placement(task.get("Placement") or {}, desired)
    name = service_name(stack, desired.id)
    short = name.split("_", 1)[1]
    task["Networks"] = [{**n, "Aliases": [short]} for n in task.get("Networks") or []]
    labels = {
        k: v for k, v in (template.get("Labels") or {}).items() if not k.startswith("com.docker.stack.image")
    }
    spec: dict[str, Any] = {
        "Name": name,
        "Labels": {**labels, **ours},
        "TaskTemplate": task,
        "Mode": {"Replicated": {"Replicas": desired.replicas}},
        # A new generation's task starts before an old one stops; a failed update
        # pauses (a rollback would bring back the old generation, and the next
        # reconcile would roll forward again).
        "UpdateConfig": {
            "Parallelism": 1,
            "Order": "start-first",
            "FailureAction": "pause",
            "Monitor": int(10e9),
            "MaxFailureRatio": 0,
        },
        "RollbackConfig": {"Parallelism": 1, "Order": "start-first", "FailureAction": "pause"},
        "EndpointSpec": {"Mode": "dnsrr"},
    }
    spec["Labels"][LABEL_SPEC_HASH] = spec_hash(spec)
    return spec


def replicas_of(spec: Mapping[str, Any]) -> int:
    return int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 0))


# -- tasks ------------------------------------------------------------------------------------------
#: Swarm task states before the container runs (and before its health check passes)
_STARTING = {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
#: states a task never leaves
TERMINAL = {"complete", "shutdown", "failed", "rejected", "remove", "orphaned"}


def task_state(task: Mapping[str, Any]) -> InstanceState | None:
    """The instance state of a task; None for a task that is over (history)."""
    state = str((task.get("Status") or {}).get("State", ""))
    wanted = str(task.get("DesiredState", ""))
    if state in TERMINAL:
        return None
    if wanted == "running":
        return "ready" if state == "running" else "starting"
    # Told to stop: a running backend drains (SIGTERM) before it exits.
    return "draining" if state == "running" else "stopping"


def _timestamp(text: str) -> float:
    """Docker's RFC 3339 times carry nanoseconds; Python takes microseconds."""
    if not text:
        return 0.0
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", text)
    if not match:
        return 0.0
    base, frac, zone = match.groups()
    frac = (frac or ".0")[:7]
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.fromisoformat(f"{base}{frac}{zone}").timestamp()
    except ValueError:
        return 0.0


def task_address(task: Mapping[str, Any], network_ids: Sequence[str], port: int) -> str:
    """``ip:port`` on the stack's network ("" until Swarm has allocated it)."""
    for attachment in task.get("NetworksAttachments") or ():
        net = attachment.get("Network") or {}
        if network_ids and net.get("ID") not in network_ids:
            continue
        for cidr in attachment.get("Addresses") or ():
            return f"{str(cidr).split('/', 1)[0]}:{port}"
    return ""


def instance_of(
    task: Mapping[str, Any],
    *,
    deployment: str,
    nodes: Mapping[str, str],
    network_ids: Sequence[str],
    port: int,
) -> InstanceInfo | None:
    state = task_state(task)
    if state is None:
        return None
    container = ((task.get("Spec") or {}).get("ContainerSpec")) or {}
    labels = container.get("Labels") or {}
    try:
        generation = int(labels.get(LABEL_GENERATION, 0))
    except ValueError:
        generation = 0
    node_id = str(task.get("NodeID", ""))
    return InstanceInfo(
        id=str(task.get("ID", "")),
        deployment=deployment,
        generation=generation,
        state=state,
        node=nodes.get(node_id, node_id),
        address=task_address(task, network_ids, port) if state in ("ready", "draining") else "",
        started=_timestamp(str(task.get("CreatedAt", ""))),
    )


def task_error(task: Mapping[str, Any]) -> str | None:
    """A failed task's reason (``no suitable node``, an image missing...), if any."""
    status = task.get("Status") or {}
    err = status.get("Err")
    if err:
        return str(err)[:300]
    if status.get("State") in ("pending",) and status.get("Message"):
        message = str(status["Message"])
        return message[:300] if "no suitable node" in message or "insufficient" in message else None
    return None
