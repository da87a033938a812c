"""A fake proxy frontend: the worker routes of docs/queues.md on a real socket.

Small and literal: queues of jobs, leases with expiry, long-polled leases, heartbeat,
complete (with ``next``), release, and the result size limit (413). Tests push jobs,
cancel them (the next heartbeat gets 409) and read what the worker reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

TOKEN = "worker-token-0123456789abcdef"


@dataclass
class FakeJob:
    job_id: str
    queue: str
    args: list[str]
    limit_s: float = 0.0
    input: Any = None
    attempts: int = 0
    state: str = "waiting"


@dataclass
class FakeLease:
    lease_id: str
    job: FakeJob
    expires: float
    worker: dict[str, Any] = field(default_factory=dict)
    valid: bool = True


class FakeFrontend:
    def __init__(
        self, port: int, *, lease_s: float = 30.0, max_result_bytes: int = 65536, max_wait_s: float = 600.0
    ) -> None:
        self.port = port
        #: the cap on a lease's wait (the proxy's --queue-max-poll-s)
        self.max_wait_s = max_wait_s
        self.lease_s = lease_s
        self.max_result_bytes = max_result_bytes
        self.queues: dict[str, list[FakeJob]] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.leases: dict[str, FakeLease] = {}
        #: job id -> the accepted completion body
        self.results: dict[str, dict[str, Any]] = {}
        #: every lease request body (``/v1/lease`` and ``next``), in order
        self.lease_requests: list[dict[str, Any]] = []
        self.heartbeats: list[str] = []
        self.releases: list[str] = []
        self.refused_completions: list[tuple[str, int]] = []
        self.completed_leases: set[str] = set()
        self.unauthorized = 0
        self._ids = itertools.count(1)
        self._arrived = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def push(
        self, queue: str, args: list[str] | None = None, limit_s: float = 0.0, input: Any = None
    ) -> str:
        job = FakeJob(f"j-{next(self._ids)}", queue, args or [], limit_s, input)
        self.jobs[job.job_id] = job
        async with self._arrived:
            self.queues.setdefault(queue, []).append(job)
            self._arrived.notify_all()
        return job.job_id

    def cancel(self, job_id: str) -> None:
        """The client cancels a running job: its lease is revoked."""
        job = self.jobs[job_id]
        job.state = "cancelled"
        for lease in self.leases.values():
            if lease.job is job:
                lease.valid = False

    def lease_of(self, job_id: str) -> FakeLease | None:
        return next((lease for lease in self.leases.values() if lease.job.job_id == job_id), None)

    # -- HTTP --------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {
                    k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, payload = await self._route(method, target, headers, body)
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                    % (status, len(payload))
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _route(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        if headers.get("authorization") != f"Bearer {TOKEN}":
            self.unauthorized += 1
            return 401, b'{"error": {"code": "unauthorized", "message": "worker token"}}'
        if method != "POST":
            return 405, b"{}"
        parts = target.strip("/").split("/")
        if parts == ["v1", "lease"]:
            request = orjson.loads(body)
            lease = await self._lease(request)
            return (204, b"") if lease is None else (200, orjson.dumps(lease))
        if len(parts) == 4 and parts[:2] == ["v1", "leases"]:
            lease_id, action = parts[2], parts[3]
            if action == "heartbeat":
                return self._heartbeat(lease_id)
            if action == "complete":
                if len(body) > self.max_result_bytes:
                    self.refused_completions.append((lease_id, 413))
                    return 413, b'{"error": {"code": "payload_too_large", "message": "result too large"}}'
                return await self._complete(lease_id, orjson.loads(body))
            if action == "release":
                return await self._release(lease_id)
        return 404, b"{}"

    def _live(self, lease_id: str) -> FakeLease | None:
        lease = self.leases.get(lease_id)
        if lease is None or not lease.valid or time.monotonic() > lease.expires:
            return None
        return lease

    def _take(self, queues: list[str]) -> FakeJob | None:
        for name in queues:
            waiting = self.queues.get(name)
            if waiting:
                return waiting.pop(0)
        return None

    async def _lease(self, request: dict[str, Any]) -> dict[str, Any] | None:
        self.lease_requests.append(request)
        wait_s = min(self.max_wait_s, float(request.get("wait_s", 0)))
        async with self._arrived:
            job = self._take(request["queues"])
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._arrived.wait_for(lambda: any(self.queues.get(q) for q in request["queues"])),
                        wait_s,
                    )
                job = self._take(request["queues"])
        if job is None:
            return None
        job.attempts += 1
        job.state = "running"
        lease = FakeLease(f"l-{next(self._ids)}", job, time.monotonic() + self.lease_s, request["worker"])
        self.leases[lease.lease_id] = lease
        return {
            "lease_id": lease.lease_id,
            "job_id": job.job_id,
            "queue": job.queue,
            "args": job.args,
            "limit_s": job.limit_s,
            "input": job.input,
            "attempt": job.attempts,
            "lease_s": self.lease_s,
        }

    def _heartbeat(self, lease_id: str) -> tuple[int, bytes]:
        self.heartbeats.append(lease_id)
        lease = self._live(lease_id)
        if lease is None:
            return 409, b'{"error": {"code": "lease_lost", "message": "the lease is lost"}}'
        lease.expires = time.monotonic() + self.lease_s
        return 200, orjson.dumps({"lease_s": self.lease_s})

    async def _complete(self, lease_id: str, body: dict[str, Any]) -> tuple[int, bytes]:
        lease = self._live(lease_id)
        if lease is None and lease_id in self.completed_leases:
            # as the proxy: the lease that completed its job, completing it again
            return 200, b'{"status": "ok", "repeated": true, "next": null}'
        if lease is None:
            self.refused_completions.append((lease_id, 409))
            return 409, b'{"error": {"code": "lease_lost", "message": "the lease is lost"}}'
        lease.valid = False
        self.completed_leases.add(lease_id)
        lease.job.state = "finished"
        following = body.pop("next", None)
        self.results[lease.job.job_id] = {**body, "worker": lease.worker}
        nxt = await self._lease(following) if following is not None else None
        return 200, orjson.dumps({"status": "ok", "next": nxt})

    async def _release(self, lease_id: str) -> tuple[int, bytes]:
        self.releases.append(lease_id)
        lease = self._live(lease_id)
        if lease is None:
            return 409, b'{"error": {"code": "lease_lost", "message": "the lease is lost"}}'
        lease.valid = False
        lease.job.state = "waiting"
        async with self._arrived:
            self.queues.setdefault(lease.job.queue, []).insert(0, lease.job)
            self._arrived.notify_all()
        return 200, b'{"status": "ok"}'
