"""The controller's two calls to the proxy's ops port: the desired state (a long
poll) and the report of what runs. Each has a deadline; the admin token goes in
``Authorization: Bearer``. A malformed answer is an error as a whole, never a
shorter list: a deployment missing from the list would be stopped."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from inferno.errors import ProxyRefused, UpstreamProtocolError
from inferno.http.client import ResponseLimits, Timeouts, UpstreamPool, build_request
from inferno.http.responses import dumps
from inferno.orchestrators.base import DesiredDeployment, InstanceInfo

#: how much longer than the long poll's own wait its deadline is
POLL_SLACK_S = 5.0
MAX_WAIT_S = 30.0
#: the most deployments one answer may list
MAX_DEPLOYMENTS = 10_000


@dataclass(frozen=True, slots=True)
class DesiredState:
    """One answer of ``GET /v1/orchestrator/desired``: the whole desired state."""

    version: int
    deployments: tuple[DesiredDeployment, ...]

    @classmethod
    def parse(cls, body: bytes) -> DesiredState:
        try:
            data = orjson.loads(body)
            version = data["version"]
            items = data["deployments"]
            if not isinstance(version, int) or not isinstance(items, list) or len(items) > MAX_DEPLOYMENTS:
                raise ValueError("version must be an integer and deployments a list")
            deployments = tuple(DesiredDeployment.from_json(item) for item in items)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ValidationError) as exc:
            raise UpstreamProtocolError(f"the proxy's desired state is malformed: {str(exc)[:200]}") from exc
        ids = [d.id for d in deployments]
        if len(set(ids)) != len(ids):
            raise UpstreamProtocolError("the proxy's desired state lists a deployment twice")
        return cls(version, deployments)


class ProxyClient:
    """``GET /v1/orchestrator/desired`` and ``POST /v1/orchestrator/report``."""

    def __init__(
        self,
        proxy_ops: str,
        admin_token: str,
        *,
        timeout_s: float = 5.0,
        pool: UpstreamPool | None = None,
    ) -> None:
        self._address = proxy_ops
        self._auth = b"Authorization: Bearer " + admin_token.encode() + b"\r\n"
        self._timeout = timeout_s
        self._pool = pool or UpstreamPool(max_idle_per_host=2, limits=ResponseLimits(max_body_bytes=16 << 20))

    async def desired(self, after: int, wait_s: float) -> DesiredState:
        """The desired state once its version differs from ``after`` (at once if it
        does already), or after ``wait_s`` with the version unchanged."""
        wait_s = max(0.0, min(wait_s, MAX_WAIT_S))
        query = urllib.parse.urlencode({"after": after, "wait_s": f"{wait_s:g}"})
        request = build_request(
            b"GET", b"/v1/orchestrator/desired?" + query.encode(), self._address.encode(), self._auth, b""
        )
        deadline = wait_s + POLL_SLACK_S
        timeouts = Timeouts(connect_s=self._timeout, first_byte_s=deadline, read_s=deadline)
        response = await self._pool.request(self._address, request, timeouts=timeouts)
        if response.status != 200:
            raise ProxyRefused(
                f"GET /v1/orchestrator/desired: {response.status} {response.body[:200]!r}",
                upstream_status=response.status,
            )
        return DesiredState.parse(response.body)

    async def report(
        self, orchestrator: str, status: dict[str, Any], instances: Sequence[InstanceInfo]
    ) -> None:
        body = dumps(
            {"orchestrator": orchestrator, "status": status, "instances": [i.to_json() for i in instances]}
        )
        request = build_request(
            b"POST",
            b"/v1/orchestrator/report",
            self._address.encode(),
            b"Content-Type: application/json\r\n" + self._auth,
            body,
        )
        timeouts = Timeouts(connect_s=self._timeout, first_byte_s=self._timeout, read_s=self._timeout)
        response = await self._pool.request(self._address, request, timeouts=timeouts)
        if not 200 <= response.status < 300:
            raise ProxyRefused(
                f"POST /v1/orchestrator/report: {response.status} {response.body[:200]!r}",
                upstream_status=response.status,
            )

    async def aclose(self) -> None:
        await self._pool.aclose()
