"""A job, its lease and its result, and the bodies that clients and workers send.

Wall-clock times (``time.time()``) are what is stored, so arrival order and lease
expiry mean the same after a restart; durations are differences of wall times.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from inferno.schemas import Priority

#: client-supplied workload arguments at most, and each one's length
MAX_ARGS = 64
MAX_ARG_CHARS = 4096
#: names a worker reports (node, pod, device, id)
MAX_NAME_CHARS = 128
#: how deep a job's ``input`` or a result's ``answer`` may nest: the journal and every
#: answer serialise them with orjson, which refuses more than 254 levels
MAX_JSON_DEPTH = 64


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep ``value`` nests (a scalar: 0), counted no further than ``limit + 1``;
    iterative, so no nesting can exhaust the stack."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            if depth > limit:
                return depth
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _printable(value: str) -> str:
    """Names end up in logs, ``GET /queues``, results and reports: no control characters."""
    if not value.isprintable():
        raise ValueError("names are printable characters (no control characters or line breaks)")
    return value


def _shallow(value: Any) -> Any:
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
    return value


class _Tokens:
    """URL-safe random tokens as ``secrets.token_urlsafe(16)`` makes them, from the same
    source (``os.urandom``) read 4 KiB at a time: two ids per job, without a system
    call for each."""

    _CHUNK = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def __call__(self) -> str:
        if self._at + 16 > len(self._pool):
            self._pool, self._at = os.urandom(self._CHUNK), 0
        raw = self._pool[self._at : self._at + 16]
        self._at += 16
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


#: a new random token (22 characters of ``[A-Za-z0-9_-]``)
token = _Tokens()


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"


@dataclasses.dataclass(slots=True)
class Job:
    id: str
    queue: str
    #: the API key that submitted it ("" without API keys): only it can read the job
    owner: str
    args: tuple[str, ...]
    limit_s: float
    priority: Priority
    #: wall time of arrival; a redelivered job keeps it, so it is next in its class
    arrival: float
    input: Any = None
    idem_key: str | None = None
    state: State = State.WAITING
    attempts: int = 0
    #: the current lease (running), or the last one
    lease_id: str | None = None
    lease_expiry: float = 0.0
    leased_at: float = 0.0
    worker: dict[str, str] = dataclasses.field(default_factory=dict)
    result: dict[str, Any] | None = None
    finished_at: float = 0.0
    #: waiting on a client connection (a disconnect cancels it, unless idempotent)
    attached: int = 0
    #: the heap entry is stale once the job left the waiting state (lazy deletion)
    seq: int = 0

    @property
    def done(self) -> bool:
        return self.state is State.FINISHED

    def view(self) -> dict[str, Any]:
        """What a client sees: the result when finished, else the state."""
        if self.result is not None:
            return self.result
        return {"job_id": self.id, "queue": self.queue, "state": self.state.value, "attempts": self.attempts}

    def lease_view(self, lease_s: float) -> dict[str, Any]:
        return {
            "lease_id": self.lease_id,
            "job_id": self.id,
            "queue": self.queue,
            "args": list(self.args),
            "limit_s": self.limit_s,
            "input": self.input,
            "attempt": self.attempts,
            "lease_s": lease_s,
        }


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Submission(_Body):
    args: list[StrictStr] = Field(default_factory=list, max_length=MAX_ARGS)
    limit_s: float = Field(0.0, ge=0, le=86_400, allow_inf_nan=False)
    priority: str | None = None
    input: Any = None

    _input = field_validator("input")(_shallow)

    @field_validator("args")
    @classmethod
    def _args(cls, value: list[str]) -> list[str]:
        for arg in value:
            if len(arg) > MAX_ARG_CHARS or "\x00" in arg:
                raise ValueError(f"each argument is at most {MAX_ARG_CHARS} characters, without NUL")
        return value


class WorkerInfo(_Body):
    id: str = Field("", max_length=MAX_NAME_CHARS)
    node: str = Field("", max_length=MAX_NAME_CHARS)
    pod: str = Field("", max_length=MAX_NAME_CHARS)
    device: str = Field("", max_length=MAX_NAME_CHARS)

    @field_validator("id", "node", "pod", "device")
    @classmethod
    def _printable(cls, value: str) -> str:
        return _printable(value)


class LeaseRequest(_Body):
    queues: list[StrictStr] = Field(default_factory=list, max_length=64)
    wait_s: float = Field(20.0, ge=0, allow_inf_nan=False)
    worker: WorkerInfo = WorkerInfo()


class Completion(_Body):
    exit_code: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    error: str | None = Field(None, max_length=4096)
    timed_out: bool = False
    output: str | None = None
    answer: Any = None
    run_s: float = Field(0.0, ge=0, le=10_000_000, allow_inf_nan=False)
    device: str | None = Field(None, max_length=MAX_NAME_CHARS)
    device_metrics: dict[str, float] = Field(default_factory=dict, max_length=32)
    next: LeaseRequest | None = None

    _answer = field_validator("answer")(_shallow)

    def outcome(self) -> Outcome:
        if self.timed_out:
            return Outcome.TIMEOUT
        if self.exit_code == 0 and self.error is None:
            return Outcome.SUCCESS
        return Outcome.FAILURE

    @field_validator("device_metrics")
    @classmethod
    def _metrics(cls, value: dict[str, float]) -> dict[str, float]:
        if any(len(k) > 64 or not k.isprintable() for k in value):
            raise ValueError("device metric names are at most 64 printable characters")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        return value if value is None else _printable(value)


class Release(_Body):
    reason: str = Field("released", max_length=256)


def result_of(job: Job, outcome: Outcome, done: Completion | None, now: float) -> dict[str, Any]:
    """The result a client gets (the original tool's reply, extended)."""
    run_s = done.run_s if done is not None else 0.0
    wait_s = max(0.0, (job.leased_at or now) - job.arrival) if job.attempts else max(0.0, now - job.arrival)
    total_s = max(0.0, now - job.arrival)
    return {
        "job_id": job.id,
        "queue": job.queue,
        "state": State.FINISHED.value,
        "outcome": outcome.value,
        "exit_code": done.exit_code if done is not None else None,
        "error": done.error if done is not None else None,
        "timed_out": done.timed_out if done is not None else False,
        "output": done.output if done is not None else None,
        "answer": done.answer if done is not None else None,
        "wait_s": round(wait_s, 6),
        "run_s": round(run_s, 6),
        "total_s": round(total_s, 6),
        "overhead_s": round(max(0.0, total_s - wait_s - run_s), 6),
        "attempts": job.attempts,
        "worker": job.worker.get("id", ""),
        "node": job.worker.get("node", ""),
        "pod": job.worker.get("pod", ""),
        "device": (done.device if done is not None and done.device else job.worker.get("device", "")),
        "device_metrics": done.device_metrics if done is not None else {},
    }
