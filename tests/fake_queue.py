"""A fake queue frontend for the bench's queue mode: a real HTTP server on a free port.

It answers ``POST /v1/queues/NAME/jobs`` after ``run_s`` with a result object shaped
as docs/queues.md says, and ``GET /v1/jobs/ID`` for jobs it answered 202 to. What it
answers is scripted by ``pattern`` (cycled per request): ``ok``, ``failure`` (a
result with outcome failure), ``429`` (with ``Retry-After``), ``500``, ``drop`` (the
connection closes with no answer), ``202`` (the wait ran out: poll for it) or
``stuck`` (a 202 whose polls never get the result; ``DELETE`` is recorded) or ``huge``
(a 5 MiB answer). It
counts what it saw, including the most requests it ever had in flight at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from inferno.http.listener import HttpServer
from inferno.http.server import Request, Responder
from tests.conftest import HOST

JSON = b"Content-Type: application/json\r\n"
#: the queue wait every result reports (the fake sleeps it before the run time)
WAIT_S = 0.002


class FakeQueueFrontend:
    def __init__(
        self,
        *,
        run_s: float = 0.01,
        pattern: Sequence[str] = ("ok",),
        nodes: Sequence[str] = ("node-a", "node-b"),
        api_key: str | None = None,
        retry_after: str = "0.05",
    ) -> None:
        self.run_s = run_s
        self.pattern = list(pattern)
        self._actions = itertools.cycle(self.pattern)
        self.nodes = list(nodes)
        self.api_key = api_key
        self.retry_after = retry_after
        #: while cleared, accepted jobs wait (``release()`` lets them finish)
        self.gate = asyncio.Event()
        self.gate.set()
        self.server = HttpServer(self, name="fake-queue")
        self.address = ""
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        #: requests waiting at the closed gate
        self.held = 0
        self.answered: dict[str, int] = {}
        self.bodies: list[Any] = []
        self.queues: set[str] = set()
        self._pending: dict[str, dict[str, Any]] = {}
        #: jobs answered 202 that never finish: every poll waits its wait_s and answers 202
        self._stuck: set[str] = set()
        self.cancelled: list[str] = []
        self._ids = itertools.count(1)

    async def start(self) -> str:
        host, port = await self.server.start(HOST, 0)
        self.address = f"{host}:{port}"
        return self.address

    async def aclose(self) -> None:
        self.gate.set()
        await self.server.aclose()

    def reset_peak(self) -> None:
        self.max_in_flight = self.in_flight

    def set_pattern(self, pattern: Sequence[str]) -> None:
        self.pattern = list(pattern)
        self._actions = itertools.cycle(self.pattern)

    def _count(self, what: str) -> None:
        self.answered[what] = self.answered.get(what, 0) + 1

    def _result(self, job_id: str, queue: str, outcome: str) -> dict[str, Any]:
        n = int(job_id.split("-")[1])
        node = self.nodes[n % len(self.nodes)]
        return {
            "job_id": job_id,
            "queue": queue,
            "state": "finished",
            "outcome": outcome,
            "exit_code": 0 if outcome == "success" else 1,
            "error": None,
            "timed_out": False,
            "output": "",
            "answer": None,
            "wait_s": WAIT_S,
            "run_s": self.run_s,
            "total_s": self.run_s + 0.003,
            "overhead_s": 0.001,
            "attempts": 1 + n % 2,
            "worker": f"w-{n % 3}",
            "node": node,
            "pod": f"sim.{n % 3}",
            "device": f"/dev/fake{n % 2}",
            "device_metrics": {},
        }

    async def __call__(self, request: Request, responder: Responder) -> None:
        if self.api_key is not None and request.header(b"authorization") != f"Bearer {self.api_key}":
            self._count("401")
            responder.send(401, JSON, b'{"error":{"message":"bad key"}}')
            return
        if request.method == "DELETE" and request.path.startswith("/v1/jobs/"):
            self.cancelled.append(request.path.rsplit("/", 1)[1])
            responder.send(200, JSON, b'{"state":"finished","outcome":"cancelled"}')
            return
        if request.method == "GET" and request.path.startswith("/v1/jobs/"):
            job_id = request.path.rsplit("/", 1)[1]
            if job_id in self._stuck:
                self._count("poll")
                await asyncio.sleep(float(request.query.split("wait_s=")[1]))
                responder.send(202, JSON, orjson.dumps({"job_id": job_id, "state": "running"}))
                return
            job = self._pending.pop(job_id, None)
            if job is None:
                responder.send(404, JSON, b'{"error":{"message":"no such job"}}')
                return
            self._count("poll")
            responder.send(200, JSON, orjson.dumps(job))
            return
        parts = request.path.split("/")
        if (
            request.method != "POST"
            or len(parts) != 5
            or parts[1:3] != ["v1", "queues"]
            or parts[4] != "jobs"
        ):
            responder.send(404, JSON, b'{"error":{"message":"no route"}}')
            return
        self.requests += 1
        self.queues.add(parts[3])
        body = orjson.loads(request.body)
        if len(self.bodies) < 100:
            self.bodies.append({"body": body, "query": request.query})
        action = next(self._actions)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if not self.gate.is_set():
                self.held += 1
                try:
                    await self.gate.wait()
                finally:
                    self.held -= 1
            await asyncio.sleep(WAIT_S + self.run_s)
            self._count(action)
            job_id = f"j-{next(self._ids)}"
            if action == "429":
                responder.send(
                    429,
                    JSON + f"Retry-After: {self.retry_after}\r\n".encode(),
                    b'{"error":{"message":"full"}}',
                )
            elif action == "500":
                responder.send(500, JSON, b'{"error":{"message":"boom"}}')
            elif action == "huge":
                responder.send(200, JSON, b'{"output": "' + b"x" * (5 << 20) + b'"}')
            elif action == "drop":
                responder.abort()
            elif action == "stuck":
                self._stuck.add(job_id)
                responder.send(202, JSON, orjson.dumps({"job_id": job_id, "state": "running"}))
            elif action == "202":
                self._pending[job_id] = self._result(job_id, parts[3], "success")
                responder.send(202, JSON, orjson.dumps({"job_id": job_id, "state": "running"}))
            else:
                outcome = "success" if action == "ok" else "failure"
                responder.send(200, JSON, orjson.dumps(self._result(job_id, parts[3], outcome)))
        finally:
            self.in_flight -= 1


@contextlib.asynccontextmanager
async def fake_queue(**kwargs: Any) -> AsyncIterator[FakeQueueFrontend]:
    fake = FakeQueueFrontend(**kwargs)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.aclose()
