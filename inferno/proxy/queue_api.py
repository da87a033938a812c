"""The pull queues' HTTP routes (docs/queues.md).

Data port (clients; API keys apply, and scope job ids and idempotency keys):
``POST /v1/queues/NAME/jobs``, ``GET /v1/jobs/ID``, ``DELETE /v1/jobs/ID``.

Ops port: workers (the worker token; without one, the cluster token)
``POST /v1/lease``, ``POST /v1/queues/NAME/lease``, ``POST /v1/leases/ID/heartbeat``,
``.../complete``, ``.../release``; dead letters (the admin token; without one, the
cluster token) ``GET /v1/queues/NAME/dead``, ``POST /v1/queues/NAME/dead/ID/requeue``;
and ``GET /queues`` (read-only, like ``/workers``).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from inferno.errors import BadRequest, NotFound, Overloaded, PayloadTooLarge
from inferno.http.responses import JSON_HEADERS, dumps
from inferno.http.router import Router, RouteTable
from inferno.http.server import Request, Responder
from inferno.proxy.clients import ClientGate
from inferno.queues import CLIENT_ROUTE
from inferno.queues.jobs import Completion, Job, LeaseRequest, Release, Submission
from inferno.queues.report import snapshot
from inferno.queues.service import QueueService
from inferno.schemas import PRIORITIES, Priority
from inferno.schemas.openai import decode_json, parse_obj
from inferno.security import ApiKey, ClusterAuth

_IDEM_KEY = re.compile(rb"[\x21-\x7e]{1,128}")
#: (request, responder, request id, arrival, API key): the data port's route signature
DataRoute = Callable[[Request, Responder, str, float, ApiKey | None], Awaitable[None]]
#: sends a local answer on the data port (status, body, route label) with the request id
Send = Callable[[Responder, str, int, bytes, str], None]


_PLAIN_QUERY = re.compile(r"[A-Za-z0-9_.=&-]*")
_MAX_FIELDS = 8


def _query(request: Request) -> dict[str, list[str]]:
    query = request.query
    if not query:
        return {}
    try:
        if _PLAIN_QUERY.fullmatch(query) is None:  # escapes or '+': the library does it
            return urllib.parse.parse_qs(query, max_num_fields=_MAX_FIELDS)
        # What parse_qs makes of a query without escapes, without its per-call cost.
        if query.count("&") >= _MAX_FIELDS:
            raise ValueError("Max number of fields exceeded")
    except ValueError:  # more than 8 fields
        raise BadRequest(f"the query has more than {_MAX_FIELDS} fields") from None
    out: dict[str, list[str]] = {}
    for field in query.split("&"):
        name, eq, value = field.partition("=")
        if eq and value:
            out.setdefault(name, []).append(value)
    return out


def _seconds(query: dict[str, list[str]], name: str, default: float, cap: float) -> float:
    values = query.get(name)
    if not values:
        return default
    try:
        value = float(values[0])
    except ValueError:
        value = -1.0
    if not 0 <= value <= cap:
        raise BadRequest(f"{name} must be a number of seconds from 0 to {cap:g}", param=name)
    return value


def _json(body: bytes) -> Any:
    if not body.strip():
        return {}
    return decode_json(body)


class QueueClientApi:
    """The data-port routes."""

    ROUTE = CLIENT_ROUTE

    def __init__(self, service: QueueService, send: Send, gate: ClientGate | None = None) -> None:
        self._service = service
        self._send = send
        #: API keys (``--require-api-key``): a job is one request of its key, on the
        #: "model" ``queue:NAME`` (a key limited to models must list it)
        self._gate = gate

    def install(self, routes: RouteTable[DataRoute]) -> None:
        routes.add_prefix("POST", "/v1/queues/", self._submit)
        routes.add_prefix(("GET", "DELETE"), "/v1/jobs/", self._job)

    async def _submit(
        self, request: Request, responder: Responder, rid: str, t0: float, key: ApiKey | None
    ) -> None:
        name, sep, rest = request.path[len("/v1/queues/") :].partition("/")
        if not sep or rest != "jobs":
            raise NotFound("no route for this path")
        service = self._service
        queue = service.queue(name)
        if len(request.body) > queue.spec.max_message_bytes:
            queue.stats.rejected["too_large"] += 1
            raise PayloadTooLarge(
                f"a job of queue {queue.name} is at most {queue.spec.max_message_bytes} bytes"
            )
        query = _query(request)
        try:
            body = parse_obj(Submission, _json(request.body))
            priority = self._priority(request, body.priority)
            idem = request.headers.get(b"idempotency-key")
            if idem is not None and not _IDEM_KEY.fullmatch(idem):
                raise BadRequest(
                    "Idempotency-Key is 1-128 printable ASCII characters", param="Idempotency-Key"
                )
            wait = query.get("wait", ["true"])[0].lower()
            if wait not in ("true", "false", "1", "0"):
                raise BadRequest("wait is true or false", param="wait")
            cap = service.config.max_wait_s
            wait_s = _seconds(query, "wait_s", cap, cap)
        except BadRequest:
            queue.stats.rejected["invalid"] += 1
            raise
        owner = key.id if key is not None else ""
        if key is not None and self._gate is not None:
            what = "queue:" + queue.name
            self._gate.settle(self._gate.admit(key, what), what, 0, 0)  # rpm, and usage's requests
        job = await service.submit(queue, body, owner, priority, idem.decode() if idem else None)
        if wait in ("true", "1"):
            await service.wait(job, wait_s, attached=True)
        self._answer(responder, rid, job)

    async def _job(
        self, request: Request, responder: Responder, rid: str, t0: float, key: ApiKey | None
    ) -> None:
        job_id = request.path[len("/v1/jobs/") :]
        job = self._service.find(job_id, key.id if key is not None else "")
        if request.method == "DELETE":
            self._service.cancel(job)
        else:
            wait_s = _seconds(_query(request), "wait_s", 0.0, self._service.config.max_poll_s)
            if wait_s > 0:
                await self._service.wait(job, wait_s)
        self._answer(responder, rid, job)

    def _answer(self, responder: Responder, rid: str, job: Job) -> None:
        status = 200 if job.result is not None else 202
        self._send(responder, rid, status, dumps(job.view()), self.ROUTE)

    @staticmethod
    def _priority(request: Request, field: str | None) -> Priority:
        header = request.headers.get(b"x-priority")
        name = header.decode("latin-1").lower() if header is not None else field
        if name is None:
            return Priority.NORMAL
        if name not in PRIORITIES:
            raise BadRequest("priority must be one of high, normal, low", param="priority")
        return PRIORITIES[name]


class QueueWorkerApi:
    """The ops-port routes: workers, dead letters, and ``GET /queues``."""

    def __init__(
        self,
        service: QueueService,
        workers: ClusterAuth,
        admin: ClusterAuth,
        cluster: ClusterAuth | None = None,
    ) -> None:
        self._service = service
        self._workers = workers
        #: the cluster token leases too: whoever holds it can register backends already
        self._cluster = cluster
        self._admin = admin

    def install(self, router: Router) -> None:
        router.add("GET", "/queues", self._queues)
        router.add("POST", "/v1/lease", self._lease_any)
        router.add_prefix(("GET", "POST"), "/v1/queues/", self._queue_route)
        router.add_prefix("POST", "/v1/leases/", self._lease_route)

    def _worker(self, request: Request, what: str) -> None:
        if self._cluster is not None and self._cluster.accepts(request.headers):
            return
        self._workers.check(request.headers, what, request.peer.rpartition(":")[0], "worker")

    async def _queues(self, request: Request, responder: Responder) -> None:
        responder.send(
            200, JSON_HEADERS, dumps({"queues": snapshot(self._service.queues, self._service.wall())})
        )

    async def _lease_any(self, request: Request, responder: Responder) -> None:
        self._worker(request, "POST /v1/lease")
        body = parse_obj(LeaseRequest, _json(request.body))
        await self._lease(responder, body, body.queues)

    async def _queue_route(self, request: Request, responder: Responder) -> None:
        parts = request.path[len("/v1/queues/") :].split("/")
        if len(parts) == 2 and parts[1] == "lease" and request.method == "POST":
            self._worker(request, "POST /v1/queues/NAME/lease")
            body = parse_obj(LeaseRequest, _json(request.body))
            await self._lease(responder, body, [parts[0], *body.queues])
            return
        if parts[1:] == ["dead"] and request.method == "GET":
            self._dead_letters(request)
            jobs = [job.view() for job in self._service.dead(parts[0])]
            responder.send(200, JSON_HEADERS, dumps({"object": "list", "data": jobs}))
            return
        if len(parts) == 4 and parts[1] == "dead" and parts[3] == "requeue" and request.method == "POST":
            self._dead_letters(request)
            job = self._service.requeue(parts[0], parts[2])
            responder.send(200, JSON_HEADERS, dumps(job.view()))
            return
        raise NotFound("no route for this path")

    def _dead_letters(self, request: Request) -> None:
        self._admin.check(
            request.headers, f"{request.method} dead letters", request.peer.rpartition(":")[0], "dead_letters"
        )

    async def _lease(self, responder: Responder, body: LeaseRequest, names: list[str]) -> None:
        cap = self._service.config.max_poll_s
        if body.wait_s > cap:
            raise BadRequest(f"wait_s is at most {cap:g}", param="wait_s")
        try:
            job = await self._service.lease(names, body.worker, body.wait_s)
        except Overloaded:
            responder.close_after()  # too many pollers: this one frees its connection too
            raise
        self._send_lease(responder, job)

    def _send_lease(self, responder: Responder, job: Job | None) -> None:
        if job is None:
            responder.send(204, b"", b"")
            return
        if not responder.client_connected:
            # the worker went away as the job was handed over: back it goes, unspent
            self._service.unlease(job)
            return
        responder.send(200, JSON_HEADERS, dumps(job.lease_view(self._service.config.lease_s)))

    async def _lease_route(self, request: Request, responder: Responder) -> None:
        lease_id, _, action = request.path[len("/v1/leases/") :].partition("/")
        service = self._service
        if action == "heartbeat":
            self._worker(request, "POST lease heartbeat")
            service.heartbeat(lease_id)
            responder.send(200, JSON_HEADERS, dumps({"status": "ok", "lease_s": service.config.lease_s}))
        elif action == "complete":
            self._worker(request, "POST lease complete")
            if len(request.body) > service.config.max_result_bytes:
                raise PayloadTooLarge(
                    f"a completion is at most {service.config.max_result_bytes} bytes "
                    "(--queue-max-result-bytes): cap the output the worker captures (--max-output-bytes)"
                )
            done = parse_obj(Completion, _json(request.body))
            for name in done.next.queues if done.next is not None else ():
                service.queue(name)  # a bad "next" is refused before the completion counts
            if done.next is not None and done.next.wait_s > service.config.max_poll_s:
                raise BadRequest(f"next.wait_s is at most {service.config.max_poll_s:g}", param="next")
            if service.complete(lease_id, done) is None:  # a repeat: the first counted
                responder.send(200, JSON_HEADERS, b'{"status":"ok","repeated":true,"next":null}')
                return
            if done.next is None:
                responder.send(200, JSON_HEADERS, b'{"status":"ok","next":null}')
                return
            nxt = done.next
            try:
                job = await service.lease(nxt.queues, nxt.worker, nxt.wait_s) if nxt.queues else None
            except Overloaded:
                # The completion counted; the next lease did not: say so, and free the connection.
                responder.close_after()
                responder.send(200, JSON_HEADERS, b'{"status":"ok","next":null}')
                return
            if job is not None and not responder.client_connected:
                service.unlease(job)
                return
            view = job.lease_view(service.config.lease_s) if job is not None else None
            responder.send(200, JSON_HEADERS, dumps({"status": "ok", "next": view}))
        elif action == "release":
            self._worker(request, "POST lease release")
            release = parse_obj(Release, _json(request.body))
            service.release(lease_id, release.reason)
            responder.send(200, JSON_HEADERS, b'{"status":"released"}')
        else:
            raise NotFound("no route for this path")
