"""The controller loop against a small real HTTP server that implements the proxy's
two orchestrator endpoints, and a fake orchestrator that records what it is told."""

from __future__ import annotations

import asyncio
import contextlib
import random
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from inferno.controller import Backoff, Controller, DesiredState, ProxyClient
from inferno.deployments.spec import DeploymentSpec
from inferno.errors import UpstreamProtocolError
from inferno.orchestrators import DesiredDeployment, InstanceInfo, Orchestrator, OrchestratorContext
from inferno.orchestrators.processes import free_port
from tests.conftest import wait_for

TOKEN = "admin-token-0123456789abcdef"


def deployment(model: str, replicas: int, generation: int = 1) -> DesiredDeployment:
    spec = DeploymentSpec(model=model, backend="fake")
    return DesiredDeployment(spec, generation, replicas)


class FakeProxy:
    """``GET /v1/orchestrator/desired`` (a long poll) and ``POST /v1/orchestrator/report``,
    as the contract says, on a real socket."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.version = 0
        self.deployments: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []
        self.polls: list[dict[str, str]] = []
        self.unauthorized = 0
        #: answer the desired state with this body instead (malformed input)
        self.override: bytes | None = None
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and cut every connection (the proxy goes away)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def publish(self, deployments: Sequence[DesiredDeployment]) -> None:
        async with self._changed:
            self.version += 1
            self.deployments = [d.to_json() for d in deployments]
            self._changed.notify_all()

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
            return 401, b'{"error":"admin token"}'
        path, _, query = target.partition("?")
        if method == "GET" and path == "/v1/orchestrator/desired":
            args = dict(urllib.parse.parse_qsl(query))
            self.polls.append(args)
            after, wait_s = int(args["after"]), float(args["wait_s"])
            async with self._changed:
                if after == self.version:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait_s)
                if self.override is not None:
                    return 200, self.override
                return 200, orjson.dumps({"version": self.version, "deployments": self.deployments})
        if method == "POST" and path == "/v1/orchestrator/report":
            self.reports.append(orjson.loads(body))
            return 204, b""
        return 404, b"{}"


class FakeOrchestrator(Orchestrator):
    """Records every reconcile; its instances are the replicas it was last told."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, int]]] = []
        self.started = False
        self.closed = False
        self.stopped_instances = 0
        self._instances: list[InstanceInfo] = []

    @classmethod
    def from_context(cls, context: OrchestratorContext) -> FakeOrchestrator:
        return cls()

    async def start(self) -> None:
        self.started = True

    async def reconcile(self, desired: Sequence[DesiredDeployment]) -> None:
        self.calls.append([(d.id, d.replicas) for d in desired])
        self._instances = [
            InstanceInfo(f"{d.id}-{i}", d.id, d.generation, "ready", "here", f"127.0.0.1:{4000 + i}")
            for d in desired
            for i in range(d.replicas)
        ]

    def instances(self) -> list[InstanceInfo]:
        return list(self._instances)

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
async def proxy() -> AsyncIterator[FakeProxy]:
    server = FakeProxy(free_port())
    await server.start()
    yield server
    await server.stop()


def make_controller(proxy: FakeProxy, orchestrator: FakeOrchestrator, token: str = TOKEN) -> Controller:
    client = ProxyClient(f"127.0.0.1:{proxy.port}", token, timeout_s=1.0)
    return Controller(
        orchestrator,
        client,
        reconcile_interval_s=0.05,
        wait_s=0.3,
        backoff=Backoff(0.02, 0.1, random.Random(7)),
    )


async def test_reconciles_the_desired_state_and_reports_the_instances(proxy: FakeProxy) -> None:
    await proxy.publish([deployment("smol-dep", 2)])
    orch = FakeOrchestrator()
    controller = make_controller(proxy, orch)
    await controller.start()
    try:
        assert orch.started
        await wait_for(lambda: orch.calls and orch.calls[-1] == [("smol-dep", 2)])
        await wait_for(lambda: proxy.reports)
        report = proxy.reports[-1]
        assert report["orchestrator"] == "fake"
        assert report["status"]["connected"] is True and report["status"]["desired_version"] == 1
        assert [i["id"] for i in report["instances"]] == ["smol-dep-0", "smol-dep-1"]
        assert report["instances"][0]["address"] == "127.0.0.1:4000"
        # level-triggered: reconciled again and again with nothing new
        before = len(orch.calls)
        await wait_for(lambda: len(orch.calls) >= before + 3, timeout_s=2)
        assert all(call == [("smol-dep", 2)] for call in orch.calls)
        # the first poll asks for any version; later ones wait on the one it has
        assert proxy.polls[0]["after"] == "-1" and proxy.polls[-1]["after"] == "1"
        assert float(proxy.polls[-1]["wait_s"]) == pytest.approx(0.3)
    finally:
        await controller.aclose()
    assert orch.closed and orch.stopped_instances == 0


async def test_a_change_wakes_the_long_poll_and_is_reconciled_at_once(proxy: FakeProxy) -> None:
    await proxy.publish([deployment("a", 1)])
    orch = FakeOrchestrator()
    controller = make_controller(proxy, orch)
    controller._interval = 30.0  # only a change can trigger a reconcile in time
    await controller.start()
    try:
        await wait_for(lambda: orch.calls and orch.calls[-1] == [("a", 1)])
        await proxy.publish([deployment("a", 0), deployment("b", 3)])
        await wait_for(lambda: orch.calls[-1] == [("a", 0), ("b", 3)], timeout_s=1.5)
        assert controller.desired is not None and controller.desired.version == 2
    finally:
        await controller.aclose()


async def test_the_proxy_away_keeps_the_last_desired_state_and_scales_nothing_down(proxy: FakeProxy) -> None:
    await proxy.publish([deployment("smol-dep", 2)])
    orch = FakeOrchestrator()
    controller = make_controller(proxy, orch)
    await controller.start()
    try:
        await wait_for(lambda: controller.proxy_connected and orch.calls)
        await proxy.stop()
        await wait_for(lambda: not controller.proxy_connected, timeout_s=3)
        away = len(orch.calls)
        await wait_for(lambda: len(orch.calls) >= away + 5, timeout_s=3)
        # every reconcile while it is away still asks for the two instances
        assert all(call == [("smol-dep", 2)] for call in orch.calls)
        reports = len(proxy.reports)
        await proxy.start()  # back, on the same port
        await proxy.publish([deployment("smol-dep", 1)])
        await wait_for(
            lambda: controller.proxy_connected and orch.calls[-1] == [("smol-dep", 1)], timeout_s=3
        )
        await wait_for(lambda: len(proxy.reports) > reports, timeout_s=2)
    finally:
        await controller.aclose()


async def test_nothing_is_reconciled_before_the_proxy_first_answers() -> None:
    orch = FakeOrchestrator()
    port = free_port()
    controller = make_controller(FakeProxy(port), orch)  # nothing listens there
    await controller.start()
    try:
        await asyncio.sleep(0.4)
        assert orch.calls == [] and controller.desired is None and not controller.proxy_connected
    finally:
        await controller.aclose()


async def test_a_wrong_admin_token_is_refused_and_nothing_is_reconciled(proxy: FakeProxy) -> None:
    await proxy.publish([deployment("smol-dep", 2)])
    orch = FakeOrchestrator()
    controller = make_controller(proxy, orch, token="not-the-admin-token-000")
    await controller.start()
    try:
        await wait_for(lambda: proxy.unauthorized >= 2)
        assert orch.calls == [] and proxy.reports == []
    finally:
        await controller.aclose()


async def test_a_malformed_desired_state_keeps_the_last_good_one(proxy: FakeProxy) -> None:
    await proxy.publish([deployment("smol-dep", 2)])
    orch = FakeOrchestrator()
    controller = make_controller(proxy, orch)
    await controller.start()
    try:
        await wait_for(lambda: orch.calls)
        # a list that silently lost an entry would stop its instances: refuse the answer whole
        proxy.override = orjson.dumps({"version": 9, "deployments": [{"id": "x", "spec": {"model": "x"}}]})
        await proxy.publish([])
        await wait_for(lambda: len(proxy.polls) >= 4)
        seen = len(orch.calls)
        await wait_for(lambda: len(orch.calls) >= seen + 3)
        assert all(call == [("smol-dep", 2)] for call in orch.calls)
        assert controller.desired is not None and controller.desired.version == 1
    finally:
        await controller.aclose()


def test_desired_state_parse_refuses_duplicates_and_bad_shapes() -> None:
    one = deployment("a", 1).to_json()
    state = DesiredState.parse(orjson.dumps({"version": 3, "deployments": [one]}))
    assert state.version == 3 and state.deployments[0].id == "a" and state.deployments[0].replicas == 1
    for body in (
        orjson.dumps({"version": 3, "deployments": [one, one]}),
        orjson.dumps({"version": "3", "deployments": []}),
        orjson.dumps({"deployments": []}),
        b"not json",
    ):
        with pytest.raises(UpstreamProtocolError):
            DesiredState.parse(body)


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(1))
    delays = [backoff.next() for _ in range(6)]
    for delay, base in zip(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0], strict=True):
        assert base / 2 <= delay < base
    backoff.reset()
    assert 0.25 <= backoff.next() < 0.5
