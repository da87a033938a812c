"""What a user registers: a deployment's spec, validated whole (unknown keys refused).

A deployment is one model id served by instances of one registered engine, with an
autoscaling range. It names an engine and that engine's options, never an image, a
command, a mount, or a file outside ``--model-dir``: the admin API decides *what*
runs, the orchestrator alone decides *how*.
"""

from __future__ import annotations

import os.path
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inferno.engines import Engine
from inferno.errors import BadRequest

#: a deployment id is its model id, as backends register it (``ModelSpec.id``)
ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
#: engine options that name a file or directory: confined to ``--model-dir``
PATH_SUFFIXES = ("_path", "_dir", "_file")
#: a node label or a constraint, as Docker accepts them (no quotes, no newlines)
_LABEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_CONSTRAINT_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}\s*(==|!=)\s*[A-Za-z0-9_.:/-]{1,128}")
#: ``backend``: instances serve the model over HTTP; ``worker``: instances are
#: ``inferno worker``s that lease jobs from ``queue`` (docs/queues.md#autoscaling)
Kind = Literal["backend", "worker"]
#: what a worker instance runs per job: the job's input on the ``backend`` engine, or a
#: built-in workload (never a command named by the admin API)
Workload = Literal["engine", "sleep", "fake-device"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class AutoScalingConfig(_Strict):
    """When instances start and stop (docs/deployments.md has the maths)."""

    min_instances: int = Field(0, ge=0, le=64, description="never fewer instances (0: scale to zero)")
    max_instances: int = Field(1, ge=1, le=64, description="never more instances")
    target_ongoing_requests: float = Field(
        4.0,
        gt=0,
        le=4096,
        description="requests queued or in flight per instance that the autoscaler aims at",
    )
    keep_alive_s: float = Field(
        60.0, ge=0, le=86400, description="idle time before the last instance stops (scale to zero)"
    )
    upscale_delay_s: float = Field(
        0.0, ge=0, le=3600, description="how long demand must call for more instances before they start"
    )
    downscale_delay_s: float = Field(
        30.0, ge=0, le=86400, description="how long demand must call for fewer instances before one stops"
    )
    look_back_s: float = Field(10.0, gt=0, le=3600, description="demand is averaged over this window")
    cold_start_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="how long a request waits for an instance to start (then 503)"
    )
    max_pending: int = Field(
        64, ge=1, le=100_000, description="requests that may wait for a cold start (then 429)"
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="on scale-down, how long in-flight requests may take to finish"
    )

    @model_validator(mode="after")
    def _range(self) -> AutoScalingConfig:
        if self.min_instances > self.max_instances:
            raise ValueError("min_instances must not exceed max_instances")
        return self


class Placement(_Strict):
    """Where instances may run (the ``swarm`` orchestrator; ``local`` runs them here)."""

    constraints: tuple[str, ...] = Field(
        (), max_length=16, description="Swarm placement constraints, e.g. node.labels.inferno.inference==true"
    )
    spread: str | None = Field(None, description="spread replicas over the values of this node label")
    max_replicas_per_node: int | None = Field(None, ge=1, le=64, description="at most this many per node")

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _CONSTRAINT_RE.fullmatch(item):
                raise ValueError(f"{item[:64]!r} is not a constraint of the form key==value or key!=value")
        return value

    @field_validator("spread")
    @classmethod
    def _spread(cls, value: str | None) -> str | None:
        if value is not None and not _LABEL_RE.fullmatch(value):
            raise ValueError("must be a node label name (letters, digits, '_', '.', '-')")
        return value


class DeploymentSpec(_Strict):
    """``POST /v1/deployments`` (and ``/register``): the whole of a deployment."""

    model: str = Field(description="the model id clients ask for; also the deployment's id")
    backend: str = Field(description="a registered engine name (inferno backend --engine)")
    backend_config: dict[str, Any] = Field(
        default_factory=dict, description="the engine's options, validated by its options model"
    )
    auto_scaling_config: AutoScalingConfig = AutoScalingConfig()
    placement: Placement = Placement()
    kind: Kind = "backend"
    queue: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="kind worker: the pull queue it leases from"
    )
    workload: Workload = Field("engine", description="kind worker: what runs per job")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not ID_RE.fullmatch(value):
            raise ValueError("must be 1-128 characters from [A-Za-z0-9_.:@-]")
        return value

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        engines = Engine.options_models()
        if value not in engines or value == "smollm2":
            raise ValueError(f"unknown engine; choose from {', '.join(n for n in engines if n != 'smollm2')}")
        return value

    @model_validator(mode="after")
    def _options(self) -> DeploymentSpec:
        options = Engine.options_models()[self.backend]
        try:
            validated = options.model_validate(self.backend_config)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise ValueError(f"backend_config.{where}: {message}") from None
        # What instances get is what was validated (2.0 -> 2), never the raw value.
        object.__setattr__(self, "backend_config", validated.model_dump(include=set(self.backend_config)))
        return self

    @model_validator(mode="after")
    def _kind(self) -> DeploymentSpec:
        if self.kind == "worker" and self.queue is None:
            raise ValueError("a deployment of kind worker names the queue its workers lease from")
        if self.kind == "backend" and (self.queue is not None or self.workload != "engine"):
            raise ValueError("queue and workload are for deployments of kind worker")
        if (
            self.kind == "worker"
            and self.workload == "engine"
            and Engine.lookup_task(self.backend) != "text-generation"
        ):
            raise ValueError(
                "a worker runs jobs on a text-generation engine (or workload sleep or fake-device)"
            )
        return self

    def worker_args(self, model_dir: str | None) -> list[str]:
        """The ``inferno worker`` flags of a worker instance, the workload last."""
        args = ["--queue=" + str(self.queue)]
        if self.workload == "engine":
            return [*args, "--engine=" + self.backend, *self._engine_flags(model_dir)]
        return [*args, "--", self.workload]

    def backend_args(self, model_dir: str | None) -> list[str]:
        """The ``inferno backend`` flags of an instance: engine, model id, drain grace and
        each ``backend_config`` key as its engine flag. Always ``--flag=value``, so a value
        that starts with ``--`` stays a value; a file is taken inside ``model_dir``
        (``check_paths`` kept it there)."""
        return [
            "--engine=" + self.backend,
            "--model-id=" + self.model,
            f"--drain-grace-s={self.auto_scaling_config.drain_timeout_s}",
            *self._engine_flags(model_dir),
        ]

    def _engine_flags(self, model_dir: str | None) -> list[str]:
        args = []
        for key, value in sorted(self.backend_config.items()):
            if value is None:
                continue
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            if key.endswith(PATH_SUFFIXES) and model_dir is not None:
                text = os.path.join(model_dir, text)
            args.append(f"--{key.replace('_', '-')}={text}")
        return args

    def with_defaults(self) -> dict[str, Any]:
        """The spec as JSON, every default filled in (what ``GET`` shows)."""
        return self.model_dump(mode="json")


def parse_spec(data: object, *, model_dir: str | None) -> DeploymentSpec:
    """A validated spec from a decoded JSON body, or ``BadRequest`` naming the first
    problem (an unknown key anywhere in the body among them)."""
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        spec = DeploymentSpec.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_first_error(exc)) from None
    check_paths(spec, model_dir)
    return spec


def check_paths(spec: DeploymentSpec, model_dir: str | None) -> None:
    """Options that name files must stay inside ``--model-dir`` (relative ones are taken
    relative to it); without a model directory no path may be given at all."""
    for name, value in spec.backend_config.items():
        if not name.endswith(PATH_SUFFIXES) or value is None:
            continue
        if model_dir is None:
            raise BadRequest(
                f"backend_config.{name}: no --model-dir is set on the proxy, so no file may be named",
                param=f"backend_config.{name}",
            )
        # Real paths on both sides: a symlink inside the directory must not lead out of it.
        root = os.path.realpath(model_dir)
        text = str(value)
        full = os.path.realpath(os.path.join(root, text)) if "\x00" not in text else ""
        if not full or full == root or os.path.commonpath([root, full]) != root:
            raise BadRequest(
                f"backend_config.{name}: must name a file inside --model-dir", param=f"backend_config.{name}"
            )


def merged(current: DeploymentSpec, patch: object, *, model_dir: str | None) -> DeploymentSpec:
    """``PATCH``: a JSON merge patch (RFC 7396) on the current spec, validated whole.
    The model (the deployment's id) cannot change."""
    if not isinstance(patch, dict):
        raise BadRequest("the body must be a JSON object")
    if "model" in patch and patch["model"] != current.model:
        raise BadRequest("model is the deployment's id and cannot change; create another", param="model")
    return parse_spec(_merge(current.model_dump(mode="json"), patch), model_dir=model_dir)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return (f"{where}: {message}" if where else message)[:512]
