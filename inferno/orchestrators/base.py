"""The orchestrator interface: make the instances that run match the desired state.

The proxy decides *how many* instances each deployment should have (the
autoscaler) and publishes that as ``DesiredDeployment`` records; an orchestrator
decides *how* they run. ``reconcile`` is level-triggered and idempotent, as a
Kubernetes controller's loop is: it is called whenever the desired state changes
and again on a timer, and each call moves the world one step towards the desired
state (starting what is missing, rolling what is stale, draining and stopping
what is surplus). Orchestrators register by name, like engines and policies:
``Orchestrator.create("local", ...)``.

Instances outlive whatever drove them: ``aclose`` stops the orchestrator's own
loops and leaves the instances running, so a restarted driver adopts them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from inferno.deployments.spec import DeploymentSpec
from inferno.errors import ConfigError

InstanceState = Literal["starting", "ready", "draining", "stopping", "failed"]


@dataclass(frozen=True, slots=True)
class DesiredDeployment:
    """What the proxy wants for one deployment."""

    spec: DeploymentSpec
    #: bumped whenever ``backend`` or ``backend_config`` changes: instances of an older
    #: generation are replaced (the new one started before the old one drains)
    generation: int
    #: how many instances should run (the autoscaler's decision, within min..max)
    replicas: int
    #: being deleted: drain and stop every instance (``replicas`` is then 0)
    deleting: bool = False

    @property
    def id(self) -> str:
        return self.spec.model

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spec": self.spec.model_dump(mode="json"),
            "generation": self.generation,
            "replicas": self.replicas,
            "deleting": self.deleting,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DesiredDeployment:
        return cls(
            DeploymentSpec.model_validate(data["spec"]),
            int(data["generation"]),
            int(data["replicas"]),
            bool(data.get("deleting", False)),
        )


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One running (or starting, or stopping) instance, as the orchestrator sees it."""

    id: str
    deployment: str
    generation: int
    state: InstanceState
    #: the machine or Swarm node it runs on
    node: str
    #: its data address (host:port), "" until known
    address: str = ""
    #: wall-clock time it was started
    started: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class OrchestratorContext:
    """What every orchestrator is built from (each takes the fields it needs)."""

    #: where the orchestrator keeps its own records (the local one: pid files and logs)
    state_dir: str
    #: the proxy's ops address that instances register with (host:port)
    discovery_lb: str
    #: the cluster token instances register with (the local one passes it in the
    #: environment; Swarm services get the stack's secret)
    cluster_token: str | None = None
    #: the token queue workers lease with (kind ``worker``), when the proxy has one
    worker_token: str | None = None
    #: where model files named in ``backend_config`` live
    model_dir: str | None = None
    #: orchestrator-specific settings (``--orchestrator-option KEY=VALUE``)
    options: tuple[tuple[str, str], ...] = ()
    #: called before an instance is stopped, where the driver can do it (in the proxy:
    #: stop routing to it and wait for its requests in flight); bounded by the caller
    before_stop: Callable[[InstanceInfo], Awaitable[None]] | None = None


class Orchestrator(ABC):
    """Runs deployment instances somewhere (``local`` processes, ``swarm`` services)."""

    _registry: ClassVar[dict[str, type[Orchestrator]]] = {}
    name: ClassVar[str] = ""

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            Orchestrator._registry[name] = cls

    @classmethod
    @abstractmethod
    def from_context(cls, context: OrchestratorContext) -> Orchestrator:
        """Build the orchestrator; a bad setting is a ``ConfigError``."""

    @classmethod
    def create(cls, name: str, context: OrchestratorContext) -> Orchestrator:
        return cls.lookup(name).from_context(context)

    @abstractmethod
    async def start(self) -> None:
        """Connect, and adopt the instances already running (never duplicate them)."""

    @abstractmethod
    async def reconcile(self, desired: Sequence[DesiredDeployment]) -> None:
        """One idempotent step towards ``desired``, which is the *whole* desired state:
        instances of a deployment absent from it are drained and stopped (after a
        restart, that is how instances nobody knows any more are cleaned up). Must not
        block for long: starts and drains proceed in the background, and the next
        call sees their progress."""

    @abstractmethod
    def instances(self) -> list[InstanceInfo]:
        """Every instance this orchestrator runs, of every deployment."""

    def status(self) -> dict[str, Any]:
        """The orchestrator's own state, for ``GET /status``."""
        return {"name": self.name, "connected": True}

    @abstractmethod
    async def aclose(self) -> None:
        """Stop this orchestrator's loops; the instances keep running."""

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._registry)

    @classmethod
    def lookup(cls, name: str) -> type[Orchestrator]:
        try:
            return cls._registry[name]
        except KeyError:
            raise ConfigError(f"unknown orchestrator {name!r}; choose from {cls.names()}") from None
