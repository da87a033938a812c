"""The listening side of the HTTP server: one socket, its connections, a graceful close."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from inferno.http.limits import Limits
from inferno.http.server import Handler, HttpProtocol, ServerState


class HttpServer:
    """Owns a listening socket and its connections; ``start()`` / ``aclose()``."""

    def __init__(self, handler: Handler, *, limits: Limits | None = None, name: str = "http") -> None:
        self._handler = handler
        self.limits = limits or Limits()
        self._name = name
        self._state = ServerState()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, **kwargs: Any) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self._handler, self._state, self.limits),
            host=host,
            port=port,
            reuse_address=True,
            backlog=1024,
            **kwargs,
        )
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    @property
    def bound(self) -> list[tuple[str, int]]:
        """Every ``(host, port)`` this server listens on (one socket per address family)."""
        if self._server is None:
            return []
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self._server.sockets]

    @property
    def in_flight(self) -> int:
        return len(self._state.tasks)

    @property
    def connections_accepted(self) -> int:
        return self._state.accepted

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop accepting, let in-flight requests finish for ``grace_s``, then cancel."""
        self.stop_accepting()
        for conn in list(self._state.connections):
            if not conn.busy:
                conn.close()
        tasks = set(self._state.tasks)
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in list(self._state.tasks):
            task.cancel()
        if self._state.tasks:
            await asyncio.wait(set(self._state.tasks), timeout=1.0)
        for conn in list(self._state.connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
