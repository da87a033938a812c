"""Bounded host-name resolution for registrations, off the probe and data paths.

A backend that registers by name is resolved once, when it first registers, on a
small thread pool of its own with a deadline; the address it resolves to is pinned
in the upstream pool, so probes and requests never wait on DNS. Lookups that hang
hold at most ``max_pending`` threads: beyond that, registrations are refused (429)
instead of queueing behind them, and nothing else shares those threads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from inferno.errors import BadRequest, RegistryFull

logger = logging.getLogger(__name__)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class Resolver:
    def __init__(
        self,
        *,
        timeout_s: float,
        max_pending: int = 4,
        lookup: Callable[[str, int], str] | None = None,
    ) -> None:
        self._lookup = lookup or _lookup
        self._timeout_s = timeout_s
        self._max_pending = max_pending
        self._pending = 0
        self._executor = ThreadPoolExecutor(max_workers=max_pending, thread_name_prefix="resolve")

    async def resolve(self, host: str, port: int) -> str:
        """An IP address for ``host``, within the timeout, or a 4xx error."""
        if is_ip_literal(host):
            return host.strip("[]")
        if self._pending >= self._max_pending:
            raise RegistryFull("too many registrations are resolving host names; retry later")
        loop = asyncio.get_running_loop()
        self._pending += 1
        future = loop.run_in_executor(self._executor, self._lookup, host, port)
        # The slot is freed when the lookup really ends, not when we stop waiting for it.
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=self._timeout_s)
        except TimeoutError:
            raise BadRequest(
                f"the backend's host name did not resolve within {self._timeout_s:g}s", param="address"
            ) from None
        except OSError:
            raise BadRequest("the backend's host name does not resolve", param="address") from None

    def _done(self, future: asyncio.Future[str]) -> None:
        self._pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved: a late failure is not worth a warning

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _lookup(host: str, port: int) -> str:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError("no address")
    return str(infos[0][4][0])
