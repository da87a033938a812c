"""The worker's calls to the proxy's worker routes (docs/queues.md#worker-api-ops-port).

Lease (a long poll), heartbeat, complete (optionally leasing the next job in the same
call) and release. Every call has a deadline (a long poll: its wait plus
``POLL_SLACK_S``), every answer is bounded in size, and the worker token goes in
``Authorization: Bearer``. A 409 on heartbeat or completion is ``WorkerLeaseLost``;
any other refusal is ``ProxyRefused``; socket trouble is an ``UpstreamError``
(``inferno.http.client`` translates it).
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from inferno.errors import ProxyRefused, UpstreamProtocolError, WorkerLeaseLost
from inferno.http.client import ResponseLimits, Timeouts, UpstreamPool, build_request

logger = logging.getLogger(__name__)

#: how much longer than a long poll's own wait its deadline is
POLL_SLACK_S = 5.0
#: the largest answer read: a lease carries the job's input (an API request body)
MAX_ANSWER_BYTES = 16 << 20
#: what the doc allows a job: at most this many args
MAX_ARGS = 64
MAX_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Who leases: sent with every lease so the result names where the job ran."""

    id: str
    node: str
    pod: str
    device: str = ""

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "node": self.node, "pod": self.pod, "device": self.device}


@dataclass(frozen=True, slots=True)
class Lease:
    """One leased job. ``problem`` names what was wrong with its fields, if anything:
    such a job is reported as a failure, not run (and not left to bounce back)."""

    lease_id: str
    job_id: str
    queue: str
    args: tuple[str, ...]
    limit_s: float
    input: Any
    attempt: int
    lease_s: float
    problem: str | None = None

    @classmethod
    def parse(cls, data: Any) -> Lease:
        """A lease from its decoded JSON; ``UpstreamProtocolError`` without a usable
        lease id and lease length (then there is nothing to report to)."""
        if not isinstance(data, dict):
            raise UpstreamProtocolError("the lease is not a JSON object")
        lease_id, lease_s = data.get("lease_id"), data.get("lease_s")
        if not _short_str(lease_id) or not _number(lease_s) or lease_s <= 0:
            raise UpstreamProtocolError("the lease has no valid lease_id and lease_s")
        job_id, queue = data.get("job_id"), data.get("queue")
        args, limit_s, attempt = data.get("args", []), data.get("limit_s", 0), data.get("attempt", 1)
        problem = None
        if not isinstance(args, list) or len(args) > MAX_ARGS or not all(_arg(a) for a in args):
            problem, args = f"args must be at most {MAX_ARGS} strings without NUL", []
        if not _number(limit_s) or limit_s < 0:
            problem, limit_s = "limit_s must be a number >= 0", 0
        return cls(
            lease_id=lease_id,
            job_id=job_id if _short_str(job_id) else "?",
            queue=queue if _short_str(queue) else "?",
            args=tuple(args),
            limit_s=float(limit_s),
            input=data.get("input"),
            attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 0,
            lease_s=float(lease_s),
            problem=problem,
        )


def _short_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _arg(value: object) -> bool:
    return isinstance(value, str) and "\0" not in value


class WorkerClient:
    """The worker routes of one proxy, over our pooled HTTP client."""

    def __init__(
        self,
        address: str,
        token: str | None,
        *,
        timeout_s: float = 10.0,
        pool: UpstreamPool | None = None,
    ) -> None:
        self.address = address
        self._auth = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
        self._timeout_s = timeout_s
        self._pool = pool or UpstreamPool(
            max_idle_per_host=4, limits=ResponseLimits(max_body_bytes=MAX_ANSWER_BYTES)
        )

    @staticmethod
    def lease_body(queues: tuple[str, ...], wait_s: float, worker: WorkerIdentity) -> dict[str, Any]:
        return {"queues": list(queues), "wait_s": wait_s, "worker": worker.to_json()}

    async def lease(self, queues: tuple[str, ...], wait_s: float, worker: WorkerIdentity) -> Lease | None:
        """The first job of ``queues`` (in this order) within ``wait_s``, or None (204)."""
        status, data = await self._call(
            "/v1/lease", self.lease_body(queues, wait_s, worker), wait_s + POLL_SLACK_S
        )
        if status == 204:
            return None
        if status != 200:
            raise _refused("POST /v1/lease", status, data)
        return Lease.parse(data)

    async def heartbeat(self, lease_id: str) -> float | None:
        """Extend the lease; its new length (None if the answer names none)."""
        status, data = await self._call(_lease_path(lease_id, "heartbeat"), {}, self._timeout_s)
        _check("heartbeat", status, data)
        lease_s = data.get("lease_s") if isinstance(data, dict) else None
        return float(lease_s) if _number(lease_s) and lease_s > 0 else None

    async def complete(
        self, lease_id: str, result: dict[str, Any], next_lease: dict[str, Any] | None = None
    ) -> Lease | None:
        """Report the result; with ``next_lease`` (a lease body) also lease the next job."""
        body = dict(result)
        deadline = self._timeout_s
        if next_lease is not None:
            body["next"] = next_lease
            deadline += float(next_lease.get("wait_s", 0)) + POLL_SLACK_S
        status, data = await self._call(_lease_path(lease_id, "complete"), body, deadline)
        _check("complete", status, data)
        following = data.get("next") if isinstance(data, dict) else None
        if next_lease is None or following is None:
            return None
        try:
            return Lease.parse(following)
        except UpstreamProtocolError as exc:
            # The completion itself was accepted: only the next job is lost (it comes back).
            logger.warning("The next lease in a completion's answer is malformed: %s", exc)
            return None

    async def release(self, lease_id: str) -> None:
        """Give the job back at once (a lost lease is not an error here: it is back already)."""
        status, data = await self._call(_lease_path(lease_id, "release"), {}, self._timeout_s)
        if status != 409 and not 200 <= status < 300:
            raise _refused("release", status, data)

    async def _call(self, path: str, body: dict[str, Any], deadline_s: float) -> tuple[int, Any]:
        payload = orjson.dumps(body)
        request = build_request(
            b"POST",
            path.encode(),
            self.address.encode(),
            b"Content-Type: application/json\r\nAccept: application/json\r\n" + self._auth,
            payload,
        )
        timeouts = Timeouts(
            connect_s=min(self._timeout_s, deadline_s), first_byte_s=deadline_s, read_s=deadline_s
        )
        response = await self._pool.request(self.address, request, timeouts=timeouts)
        if not response.body:
            return response.status, None
        try:
            return response.status, orjson.loads(response.body)
        except orjson.JSONDecodeError:
            if 200 <= response.status < 300:
                raise UpstreamProtocolError(f"POST {path}: the answer is not JSON") from None
            return response.status, response.body[:200].decode("utf-8", "replace")

    async def aclose(self) -> None:
        await self._pool.aclose()


def _lease_path(lease_id: str, action: str) -> str:
    return f"/v1/leases/{urllib.parse.quote(lease_id, safe='')}/{action}"


def _check(what: str, status: int, data: Any) -> None:
    if status == 409:
        raise WorkerLeaseLost(f"{what}: the lease is lost ({_message(data)})")
    if not 200 <= status < 300:
        raise _refused(what, status, data)


def _refused(what: str, status: int, data: Any) -> ProxyRefused:
    return ProxyRefused(f"{what}: {status} {_message(data)}", upstream_status=status)


def _message(data: Any) -> str:
    """The server's own error message, short and quoted (it is shown in our logs)."""
    error = data.get("error", data) if isinstance(data, dict) else data
    message = error.get("message", error.get("code")) if isinstance(error, dict) else error
    return repr(str(message)[:200])
