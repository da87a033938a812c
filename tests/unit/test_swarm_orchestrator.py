"""The swarm orchestrator's decisions against an in-memory Engine API (a fake of the
Docker SDK's low-level client: services with versions, tasks, nodes), and its error
boundary against a socket where no engine listens."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from inferno.deployments.spec import DeploymentSpec
from inferno.errors import OrchestratorError, OrchestratorUnavailable
from inferno.orchestrators import DesiredDeployment, OrchestratorContext
from inferno.orchestrators.swarm import SwarmOrchestrator, _DockerEngine
from inferno.orchestrators.swarm_spec import LABEL_DEPLOYMENT, LABEL_GENERATION, LABEL_NAMESPACE
from tests.unit.test_swarm_spec import TEMPLATE

T = TypeVar("T")


class FakeSwarm:
    """What the orchestrator calls on ``docker.APIClient``, kept in memory. Each
    replica is one running task; a spec change replaces the tasks (as a rolling
    update would), a replicas change alone does not."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}
        self.tasks: list[dict[str, Any]] = []
        self.writes: list[str] = []
        self._ids = itertools.count(1)
        template = copy.deepcopy(TEMPLATE)
        self.services["tmpl"] = {"ID": "tmpl", "Version": {"Index": 1}, "Spec": template}

    # -- the API ------------------------------------------------------------------------------
    def inspect_service(self, name: str) -> dict[str, Any]:
        import docker.errors

        for service in self.services.values():
            if name in (service["ID"], service["Spec"]["Name"]):
                return copy.deepcopy(service)
        raise docker.errors.NotFound(f"service {name} not found")

    def services_list(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for service in self.services.values():
            labels = service["Spec"].get("Labels") or {}
            if all(self._match(labels, f) for f in filters.get("label", [])):
                out.append(copy.deepcopy(service))
        return out

    @staticmethod
    def _match(labels: dict[str, str], rule: str) -> bool:
        key, eq, value = rule.partition("=")
        return key in labels and (not eq or labels[key] == value)

    def tasks_list(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return [copy.deepcopy(t) for t in self.tasks if t["ServiceID"] in filters["service"]]

    def nodes(self) -> list[dict[str, Any]]:
        return [{"ID": "n1", "Description": {"Hostname": "worker1"}}]

    def create_service(self, task_template: dict[str, Any], **kw: Any) -> dict[str, str]:
        sid = f"svc{next(self._ids)}"
        spec = {"Name": kw["name"], "Labels": kw["labels"], "TaskTemplate": task_template, "Mode": kw["mode"]}
        self.services[sid] = {"ID": sid, "Version": {"Index": 1}, "Spec": spec}
        self.writes.append(f"create {kw['name']}")
        self._converge(sid, replace=True)
        return {"ID": sid}

    def update_service(self, sid: str, version: int, task_template: dict[str, Any], **kw: Any) -> None:
        service = self.services[sid]
        assert version == service["Version"]["Index"], "update out of sequence"
        replace = task_template != service["Spec"]["TaskTemplate"]
        service["Spec"] = {
            "Name": kw["name"],
            "Labels": kw["labels"],
            "TaskTemplate": task_template,
            "Mode": kw["mode"],
        }
        service["Version"]["Index"] += 1
        self.writes.append(f"update {kw['name']} {'roll' if replace else 'scale'}")
        self._converge(sid, replace=replace)

    def remove_service(self, sid: str) -> None:
        self.writes.append(f"remove {self.services[sid]['Spec']['Name']}")
        del self.services[sid]
        self.tasks = [t for t in self.tasks if t["ServiceID"] != sid]

    def _converge(self, sid: str, *, replace: bool) -> None:
        spec = self.services[sid]["Spec"]
        mine = [t for t in self.tasks if t["ServiceID"] == sid and t["DesiredState"] == "running"]
        if replace:
            for task in mine:
                task["DesiredState"] = "shutdown"  # still running: draining
            mine = []
        want = spec["Mode"]["Replicated"]["Replicas"]
        for task in mine[want:]:
            task["DesiredState"] = "shutdown"
        for _ in range(want - len(mine)):
            tid = f"task{next(self._ids)}"
            self.tasks.append(
                {
                    "ID": tid,
                    "ServiceID": sid,
                    "NodeID": "n1",
                    "DesiredState": "running",
                    "Status": {"State": "running"},
                    "Spec": copy.deepcopy(spec["TaskTemplate"]),
                    "NetworksAttachments": [
                        {"Network": {"ID": "net1"}, "Addresses": [f"10.0.1.{len(self.tasks) + 2}/24"]}
                    ],
                }
            )

    def finish_draining(self) -> None:
        for task in self.tasks:
            if task["DesiredState"] == "shutdown":
                task["Status"]["State"] = "shutdown"


class FakeApi:
    """The method names the orchestrator uses (``services``/``tasks`` take filters)."""

    def __init__(self, swarm: FakeSwarm) -> None:
        self.swarm = swarm
        self.inspect_service = swarm.inspect_service
        self.nodes = swarm.nodes
        self.create_service = swarm.create_service
        self.update_service = swarm.update_service
        self.remove_service = swarm.remove_service

    def services(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return self.swarm.services_list(filters)

    def close(self) -> None:
        pass

    def tasks(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return self.swarm.tasks_list(filters)


class FakeEngine(_DockerEngine):
    """The real error boundary, calling the in-memory API on the event loop."""

    def __init__(self, swarm: FakeSwarm) -> None:
        super().__init__(None, 5.0, 1)
        self._api = FakeApi(swarm)

    async def call(self, what: str, fn: Callable[[Any], T]) -> T:
        import docker.errors

        try:
            return fn(self._api)
        except docker.errors.NotFound as exc:
            raise OrchestratorError(f"{what}: {exc}", not_found=True) from exc


def desired(replicas: int, generation: int = 1, model: str = "smol-dep", **spec: Any) -> DesiredDeployment:
    return DesiredDeployment(DeploymentSpec(model=model, backend="llamacpp", **spec), generation, replicas)


@pytest.fixture
def swarm() -> FakeSwarm:
    return FakeSwarm()


def orchestrator(swarm: FakeSwarm) -> SwarmOrchestrator:
    context = OrchestratorContext("/tmp", "proxy-lb:6100")
    return SwarmOrchestrator(context, template="backend", stack="inferno", engine=FakeEngine(swarm))


async def test_create_scale_roll_and_retire_without_churn(swarm: FakeSwarm) -> None:
    orch = orchestrator(swarm)
    await orch.start()
    assert orch.status()["connected"] is True and orch.instances() == []

    await orch.reconcile([desired(1)])
    assert swarm.writes == ["create inferno_dep-smol-dep"]
    (info,) = orch.instances()
    assert (info.deployment, info.generation, info.state, info.node) == ("smol-dep", 1, "ready", "worker1")
    assert info.address.endswith(":3000")

    for _ in range(3):  # level-triggered: the same desired state changes nothing
        await orch.reconcile([desired(1)])
    assert swarm.writes == ["create inferno_dep-smol-dep"]

    await orch.reconcile([desired(2)])
    assert swarm.writes[-1] == "update inferno_dep-smol-dep scale"
    assert len(orch.instances()) == 2

    await orch.reconcile([desired(2, generation=2)])
    assert swarm.writes[-1] == "update inferno_dep-smol-dep roll"
    states = sorted((i.generation, i.state) for i in orch.instances())
    assert states == [(1, "draining"), (1, "draining"), (2, "ready"), (2, "ready")]
    await orch.reconcile([desired(2, generation=2)])
    assert swarm.writes[-1] == "update inferno_dep-smol-dep roll" and len(swarm.writes) == 3

    # absent from the desired state: scaled to zero, removed once nothing runs
    swarm.finish_draining()
    await orch.reconcile([])
    assert swarm.writes[-1] == "update inferno_dep-smol-dep scale"
    await orch.reconcile([])
    assert swarm.writes[-1] == "update inferno_dep-smol-dep scale"  # still draining
    swarm.finish_draining()
    await orch.reconcile([])
    assert swarm.writes[-1] == "remove inferno_dep-smol-dep"
    assert orch.instances() == [] and orch.status()["services"] == []


async def test_a_restarted_orchestrator_adopts_what_runs(swarm: FakeSwarm) -> None:
    first = orchestrator(swarm)
    await first.reconcile([desired(2)])
    await first.aclose()
    writes = list(swarm.writes)
    second = orchestrator(swarm)
    await second.start()
    assert len(second.instances()) == 2 and second.status()["services"] == ["inferno_dep-smol-dep"]
    await second.reconcile([desired(2)])
    assert swarm.writes == writes  # adopted, not duplicated or restarted
    labels = next(s for s in swarm.services.values() if s["ID"] != "tmpl")["Spec"]["Labels"]
    assert labels[LABEL_DEPLOYMENT] == "smol-dep" and labels[LABEL_GENERATION] == "1"
    assert labels[LABEL_NAMESPACE] == "inferno"


async def test_deleting_scales_to_zero_first_and_other_stacks_are_not_touched(swarm: FakeSwarm) -> None:
    orch = orchestrator(swarm)
    await orch.reconcile([desired(1), desired(1, model="other")])
    # a deployment service of another stack (same cluster) is never ours to remove
    foreign = copy.deepcopy(next(s for s in swarm.services.values() if s["Spec"]["Name"].endswith("other")))
    foreign["ID"] = "foreign"
    foreign["Spec"]["Name"] = "elsewhere_dep-other"
    foreign["Spec"]["Labels"][LABEL_NAMESPACE] = "elsewhere"
    swarm.services["foreign"] = foreign
    gone = DesiredDeployment(desired(0).spec, 1, 0, deleting=True)
    await orch.reconcile([gone, desired(1, model="other")])
    assert swarm.writes[-1] == "update inferno_dep-smol-dep scale"
    swarm.finish_draining()
    await orch.reconcile([gone, desired(1, model="other")])
    assert swarm.writes[-1] == "remove inferno_dep-smol-dep"
    await orch.reconcile([])
    swarm.finish_draining()
    await orch.reconcile([])
    assert "foreign" in swarm.services and [s["Spec"]["Name"] for s in swarm.services.values()] == [
        TEMPLATE["Name"],
        "elsewhere_dep-other",
    ]


async def test_a_missing_template_is_an_error_in_the_status(swarm: FakeSwarm) -> None:
    del swarm.services["tmpl"]
    orch = orchestrator(swarm)
    await orch.start()  # logged, not raised: the stack may still be deploying
    with pytest.raises(OrchestratorError, match="not found"):
        await orch.reconcile([desired(1)])
    assert "backend" in (orch.status()["last_error"] or "")
    assert swarm.writes == []


async def test_no_engine_on_the_socket_is_unavailable(tmp_path: Any) -> None:
    engine = _DockerEngine(f"unix://{tmp_path}/no-docker.sock", 2.0, 1)
    context = OrchestratorContext("/tmp", "proxy-lb:6100")
    orch = SwarmOrchestrator(context, template="backend", stack="inferno", engine=engine)
    await orch.start()
    assert orch.status()["connected"] is False and orch.status()["last_error"]
    with pytest.raises(OrchestratorUnavailable):
        await orch.reconcile([desired(1)])
    await orch.aclose()
