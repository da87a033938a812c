"""Registers a backend with the proxy and heartbeats; deregisters on shutdown.

A heartbeat is the registration call repeated, so a restarted proxy learns every
backend again within one interval. While the proxy is unreachable we retry with
an exponential backoff capped at the heartbeat interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Callable

import orjson

from inferno.errors import RegistrationRefused, UpstreamError
from inferno.http.client import Timeouts, UpstreamPool, build_request
from inferno.http.responses import dumps
from inferno.schemas.registration import RegistrationPayload
from inferno.security import ClusterAuth

logger = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 0.1


class Registrar:
    def __init__(
        self,
        proxy_addr: str,
        payload: Callable[[], RegistrationPayload],
        *,
        interval_s: float,
        timeout_s: float,
        pool: UpstreamPool | None = None,
        auth: ClusterAuth | None = None,
    ) -> None:
        #: the Authorization header with the cluster token (empty without one)
        self._auth = (auth or ClusterAuth(None)).header()
        self._proxy = proxy_addr
        self._payload = payload
        self._interval = interval_s
        self._timeouts = Timeouts(connect_s=timeout_s, first_byte_s=timeout_s, read_s=timeout_s)
        self._pool = pool or UpstreamPool(max_idle_per_host=2)
        self._task: asyncio.Task[None] | None = None
        self.registered = False
        self.registered_address: str | None = None

    def start(self) -> None:
        logger.info("Registering with proxy: %s", self._proxy)
        self._task = asyncio.create_task(self._run(), name="registrar")

    async def _run(self) -> None:
        backoff = INITIAL_BACKOFF_S
        while True:
            try:
                await self.send_heartbeat()
                backoff = INITIAL_BACKOFF_S
                delay = self._interval
            except (UpstreamError, RegistrationRefused) as exc:
                if self.registered or isinstance(exc, RegistrationRefused):
                    logger.warning("Proxy %s: %s; retrying", self._proxy, exc.message)
                self.registered = False
                delay = backoff
                backoff = min(backoff * 2, self._interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("heartbeat failed")
                delay = self._interval
            await asyncio.sleep(delay)

    async def send_heartbeat(self) -> None:
        payload = self._payload()
        body = dumps(payload.model_dump(mode="json"))
        request = build_request(
            b"POST",
            b"/registration",
            self._proxy.encode(),
            b"Content-Type: application/json\r\n" + self._auth,
            body,
        )
        response = await self._pool.request(self._proxy, request, timeouts=self._timeouts)
        if response.status == 200:
            # The address the proxy registered us under (it replaces a wildcard host
            # with our peer address); deregistration uses it.
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                self.registered_address = str(orjson.loads(response.body)["address"])
        if response.status == 401:
            raise RegistrationRefused(
                "the proxy wants the cluster token: set the same INFERNO_CLUSTER_TOKEN (or "
                "--cluster-token-file) on the proxy and on this backend",
                upstream_status=401,
            )
        if response.status != 200:
            raise RegistrationRefused(
                f"registration refused with {response.status}: {response.body[:200]!r}",
                upstream_status=response.status,
            )
        if not self.registered:
            logger.info("Registered with proxy %s as %s (%s)", self._proxy, payload.node_id, payload.address)
        self.registered = True

    async def deregister(self, node_id: str) -> None:
        """Best effort, bounded by the registration timeout. By address when known:
        node ids need not be unique across restarts."""
        if self.registered_address:
            query = urllib.parse.urlencode({"address": self.registered_address}).encode()
        else:
            query = urllib.parse.urlencode({"node_id": node_id}).encode()
        request = build_request(b"DELETE", b"/registration?" + query, self._proxy.encode(), self._auth, b"")
        try:
            response = await self._pool.request(self._proxy, request, timeouts=self._timeouts)
            logger.info("Deregistered from proxy %s (status %d)", self._proxy, response.status)
        except UpstreamError as exc:
            logger.warning("Could not deregister from %s: %s", self._proxy, exc.message)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._pool.aclose()
