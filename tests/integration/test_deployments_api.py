"""The deployments admin API and cold starts, through a real proxy on free ports.

The proxy runs with ``--orchestrator external``; the test plays the controller over
the real long poll and report endpoints, starting real (fake-engine) backends that
register under the deployment's model id, as ``inferno controller`` would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from inferno.backend.server import BackendServer
from inferno.orchestrators.base import InstanceInfo
from inferno.proxy.server import ProxyServer
from tests.conftest import HOST, TEST_TOKEN, backend_config, proxy_config, wait_for

ADMIN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def spec(model: str = "dep", **scaling: Any) -> dict[str, Any]:
    return {
        "model": model,
        "backend": "fake",
        "backend_config": {"fake_tokens_per_s": 5000.0},
        "auto_scaling_config": {"min_instances": 0, "max_instances": 2, **scaling},
    }


class Controller:
    """The test's controller: reads the desired state, runs backends, reports them."""

    def __init__(self, proxy: ProxyServer, http: httpx.AsyncClient) -> None:
        self.proxy = proxy
        self.http = http
        self.ops = f"http://{HOST}:{proxy.ops_address[1]}"
        self.backends: dict[str, BackendServer] = {}
        self.version = -1

    async def desired(self, wait_s: float = 0.0) -> dict[str, Any]:
        r = await self.http.get(
            f"{self.ops}/v1/orchestrator/desired",
            params={"after": self.version, "wait_s": wait_s},
            headers=AUTH,
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        self.version = body["version"]
        return body

    async def start(self, model: str) -> BackendServer:
        backend = BackendServer(
            backend_config(f"{HOST}:{self.proxy.ops_address[1]}", model_id=model, node_id=f"{model}-i")
        )
        await backend.start()
        self.backends[model] = backend
        return backend

    async def report(self) -> None:
        instances = [
            InstanceInfo(f"{m}-i", m, 1, "ready", "test", b.advertise_addr, time.time()).to_json()
            for m, b in self.backends.items()
        ]
        r = await self.http.post(
            f"{self.ops}/v1/orchestrator/report",
            json={"orchestrator": "test", "status": {"ok": True}, "instances": instances},
            headers=AUTH,
        )
        assert r.status_code == 204, r.text

    async def serve_first(self, url: str, model: str = "dep") -> httpx.Response:
        """A chat request at zero: see the scale-up, start the instance, report it."""
        task = asyncio.create_task(
            self.http.post(f"{url}/v1/chat/completions", json={**CHAT, "model": model})
        )
        await self.desired(wait_s=5)
        await self.start(model)
        await self.report()
        return await task

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    proxies: list[ProxyServer] = []

    async def factory(**overrides: Any) -> ProxyServer:
        base: dict[str, Any] = {
            "orchestrator": "external",
            "admin_token": SecretStr(ADMIN),
            "state_dir": str(tmp_path / "state"),
            "autoscale_tick_s": 0.05,
        }
        proxy = ProxyServer(proxy_config(**{**base, **overrides}))
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        await proxy.aclose()


def urls(proxy: ProxyServer) -> tuple[str, str]:
    return f"http://{HOST}:{proxy.data_address[1]}", f"http://{HOST}:{proxy.ops_address[1]}"


async def test_the_admin_api_needs_the_admin_token_not_the_cluster_token(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    _, ops = urls(await make_proxy())
    for headers in ({}, {"Authorization": f"Bearer {TEST_TOKEN}"}, {"Authorization": "Bearer wrong"}):
        for method, path in (("GET", "/v1/deployments"), ("POST", "/register"), ("GET", "/status")):
            r = await client.request(method, f"{ops}{path}", headers=headers, json=spec())
            assert r.status_code == 401, (method, path, headers)
            assert "admin token" in r.json()["error"]["message"]
    assert (await client.get(f"{ops}/v1/deployments", headers=AUTH)).status_code == 200


async def test_without_an_admin_token_the_api_is_off(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    _, ops = urls(await make_proxy(admin_token=None))
    r = await client.post(f"{ops}/v1/deployments", headers=AUTH, json=spec())
    assert r.status_code == 401
    assert "--admin-token-file" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({**spec(), "image": "evil:latest"}, "image"),
        (
            {**spec(), "auto_scaling_config": {"max_instances": 2, "replicas": 3}},
            "auto_scaling_config.replicas",
        ),
        ({**spec(), "backend_config": {"command": "sh"}}, "backend_config.command"),
        ({**spec(), "placement": {"mounts": ["/:/host"]}}, "placement.mounts"),
        ({**spec(), "backend": "docker"}, "backend"),
        ({**spec(), "model": "bad model\n"}, "model"),
        ({**spec(), "auto_scaling_config": {"min_instances": 3, "max_instances": 2}}, "min_instances"),
        ({**spec(), "placement": {"constraints": ["node.role==manager\nx"]}}, "constraint"),
        ({**spec(), "backend": "llamacpp", "backend_config": {"model_path": "/etc/passwd"}}, "model_path"),
    ],
)
async def test_bad_specs_are_refused_with_400_naming_the_problem(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient, body: dict[str, Any], where: str
) -> None:
    _, ops = urls(await make_proxy())
    r = await client.post(f"{ops}/v1/deployments", headers=AUTH, json=body)
    assert r.status_code == 400, r.text
    assert where in r.json()["error"]["message"]
    assert (await client.get(f"{ops}/v1/deployments", headers=AUTH)).json()["data"] == []


async def test_create_list_patch_delete_and_a_duplicate_is_409(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    proxy = await make_proxy()
    _, ops = urls(proxy)
    r = await client.post(f"{ops}/v1/deployments", headers=AUTH, json=spec())
    assert r.status_code == 201, r.text
    view = r.json()
    assert view["spec"]["auto_scaling_config"]["keep_alive_s"] == 60.0  # defaults filled in
    assert (view["generation"], view["desired"], view["state"]) == (1, 0, "active")
    assert (await client.post(f"{ops}/v1/deployments", headers=AUTH, json=spec())).status_code == 409
    assert (await client.post(f"{ops}/register", headers=AUTH, json=spec())).status_code == 409
    listed = (await client.get(f"{ops}/v1/deployments", headers=AUTH)).json()["data"]
    assert [d["id"] for d in listed] == ["dep"]
    # a scaling change is live and keeps the generation; an engine option change rolls
    r = await client.patch(
        f"{ops}/v1/deployments/dep", headers=AUTH, json={"auto_scaling_config": {"min_instances": 1}}
    )
    assert r.status_code == 200 and r.json()["generation"] == 1
    assert r.json()["spec"]["auto_scaling_config"]["max_instances"] == 2  # merged, not replaced
    await wait_for(lambda: proxy.deployments.autoscaler.replicas("dep") == 1)
    r = await client.patch(
        f"{ops}/v1/deployments/dep", headers=AUTH, json={"backend_config": {"fake_tokens_per_s": 100.0}}
    )
    assert r.json()["generation"] == 2
    bad = await client.patch(
        f"{ops}/v1/deployments/dep", headers=AUTH, json={"auto_scaling_config": {"nope": 1}}
    )
    assert bad.status_code == 400 and "auto_scaling_config.nope" in bad.json()["error"]["message"]
    r = await client.post(
        f"{ops}/update", headers=AUTH, json={"model": "dep", "auto_scaling_config": {"max_instances": 3}}
    )
    assert r.status_code == 200 and r.json()["spec"]["auto_scaling_config"]["max_instances"] == 3
    assert (await client.get(f"{ops}/v1/deployments/nope", headers=AUTH)).status_code == 404
    r = await client.post(f"{ops}/delete", headers=AUTH, json={"model": "dep"})
    assert r.status_code == 202 and r.json()["state"] == "deleting"
    assert (await client.get(f"{ops}/v1/orchestrator/desired", headers=AUTH)).json()["deployments"][0][
        "deleting"
    ]
    # forgotten once the orchestrator reports none of its instances
    await Controller(proxy, client).report()
    await wait_for(lambda: not proxy.deployments.all())
    assert (await client.get(f"{ops}/v1/deployments/dep", headers=AUTH)).status_code == 404


async def test_a_request_at_zero_cold_starts_an_instance_and_is_answered(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    proxy = await make_proxy()
    url, ops = urls(proxy)
    await client.post(f"{ops}/v1/deployments", headers=AUTH, json=spec(cold_start_timeout_s=20))
    controller = Controller(proxy, client)
    try:
        assert (await controller.desired())["deployments"][0]["replicas"] == 0
        health = (await client.get(f"{ops}/health")).json()
        assert health["status"] == "healthy" and health["total"] == 0  # idle at zero on purpose
        models = (await client.get(f"{url}/v1/models")).json()["data"]
        assert [m["id"] for m in models] == ["dep"]

        t0 = time.monotonic()
        plain = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "dep"}))
        stream = asyncio.create_task(
            client.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "dep", "stream": True})
        )
        body = await controller.desired(wait_s=5)
        woke_s = time.monotonic() - t0
        assert body["deployments"][0]["replicas"] == 1
        assert woke_s < 0.5, woke_s  # event-driven: no polling tick in between
        await asyncio.sleep(0.3)  # the requests wait, they are not refused
        assert not plain.done() and not stream.done()
        await controller.start("dep")
        await controller.report()
        for task in (plain, stream):
            r = await task
            assert r.status_code == 200, r.text
            assert int(r.headers["x-inferno-cold-start"]) >= 300
        assert "data: [DONE]" in stream.result().text
        # a request while an instance runs is not a cold start
        r = await client.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "dep"})
        assert r.status_code == 200 and "x-inferno-cold-start" not in r.headers
        metrics = (await client.get(f"{ops}/metrics")).text
        assert 'inferno_cold_start_seconds_count{model="dep"} 2.0' in metrics
        assert 'inferno_deployment_instances{deployment="dep",state="ready"} 1.0' in metrics
        status = (await client.get(f"{ops}/status", headers=AUTH)).json()
        assert status["deployments"]["dep"]["ready"] == 1
        assert (
            status["deployments"]["dep"]["instances"][0]["address"]
            == controller.backends["dep"].advertise_addr
        )
        assert status["orchestrator"]["connected"] is True
        # the dashboard's event log shows the decision and the instance
        await wait_for(
            lambda: any("instance dep-i ready" in e.detail for e in proxy.registry.events.since(0))
        )
        details = [e.detail for e in proxy.registry.events.since(0) if e.kind == "deployment"]
        assert any("1 instances: cold start" in d for d in details), details
    finally:
        await controller.aclose()


async def test_a_cold_start_that_does_not_come_in_time_is_503_with_retry_after(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    url, ops = urls(await make_proxy())
    await client.post(f"{ops}/v1/deployments", headers=AUTH, json=spec(cold_start_timeout_s=0.5))
    for stream in (False, True):
        r = await client.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "dep", "stream": stream})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "cold_start_timeout"
        assert int(r.headers["retry-after"]) >= 1


async def test_beyond_max_pending_requests_get_429_not_a_wait(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    url, ops = urls(await make_proxy())
    await client.post(f"{ops}/v1/deployments", headers=AUTH, json=spec(cold_start_timeout_s=2, max_pending=2))
    waiting = [
        asyncio.create_task(client.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "dep"}))
        for _ in range(2)
    ]
    await asyncio.sleep(0.2)
    r = await client.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "dep"})
    assert r.status_code == 429 and "max_pending" in r.json()["error"]["message"]
    assert "retry-after" in r.headers
    assert [(await t).status_code for t in waiting] == [503, 503]


async def test_a_fallback_fires_only_once_the_cold_start_failed(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    proxy = await make_proxy(fallbacks={"dep": ("fake",)})
    url, ops = urls(proxy)
    other = BackendServer(backend_config(f"{HOST}:{proxy.ops_address[1]}", node_id="other"))
    await other.start()
    try:
        await wait_for(lambda: len(proxy.registry.routable()) == 1)
        await client.post(f"{ops}/v1/deployments", headers=AUTH, json=spec(cold_start_timeout_s=0.6))
        t0 = time.monotonic()
        r = await client.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "dep"})
        assert r.status_code == 200 and r.json()["model"] == "fake"
        assert time.monotonic() - t0 >= 0.6  # it waited for the cold start first
    finally:
        await other.aclose()


async def test_a_restarted_proxy_keeps_deployments_replicas_and_keep_alive(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    proxy = await make_proxy()
    url, ops = urls(proxy)
    await client.post(f"{ops}/v1/deployments", headers=AUTH, json=spec(keep_alive_s=600))
    controller = Controller(proxy, client)
    try:
        assert (await controller.serve_first(url)).status_code == 200
        await proxy.aclose()  # persists what the autoscaler holds

        again = await make_proxy()
        _, ops2 = urls(again)
        view = (await client.get(f"{ops2}/v1/deployments/dep", headers=AUTH)).json()
        assert view["desired"] == 1  # not scaled to zero or restarted from min
        assert view["last_request"] is not None and time.time() - view["last_request"] < 30
        desired = (await client.get(f"{ops2}/v1/orchestrator/desired", headers=AUTH)).json()
        assert desired["deployments"][0]["replicas"] == 1
        await asyncio.sleep(0.5)  # several ticks: the count holds
        assert again.deployments.autoscaler.replicas("dep") == 1
    finally:
        await controller.aclose()


async def test_a_request_naming_no_model_cold_starts_the_deployment_doing_its_task(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    proxy = await make_proxy()
    url, ops = urls(proxy)
    await client.post(f"{ops}/v1/deployments", headers=AUTH, json=spec(cold_start_timeout_s=20))
    controller = Controller(proxy, client)
    try:
        assert (await controller.desired())["deployments"][0]["replicas"] == 0
        task = asyncio.create_task(client.post(f"{url}/inference", json={"prompt": "hi", "max_tokens": 4}))
        assert (await controller.desired(wait_s=5))["deployments"][0]["replicas"] == 1
        await controller.start("dep")
        r = await task
        assert r.status_code == 200, r.text
        assert "x-inferno-cold-start" in r.headers
    finally:
        await controller.aclose()


async def test_long_polls_are_bounded_so_they_cannot_take_the_ops_port(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    from inferno.deployments.drivers import MAX_POLLS

    _, ops = urls(await make_proxy())
    version = (await client.get(f"{ops}/v1/orchestrator/desired", headers=AUTH)).json()["version"]
    url = f"{ops}/v1/orchestrator/desired?after={version}&wait_s=5"
    held = [asyncio.create_task(client.get(url, headers=AUTH)) for _ in range(MAX_POLLS)]
    await asyncio.sleep(0.2)
    r = await client.get(url, headers=AUTH)
    assert r.status_code == 429 and "long polls" in r.json()["error"]["message"]
    assert (await client.get(f"{ops}/livez")).status_code == 200
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_the_admin_token_may_not_be_the_cluster_token(tmp_path: Path) -> None:
    from inferno.errors import ConfigError

    with pytest.raises(ConfigError, match="admin token is the cluster token"):
        ProxyServer(
            proxy_config(
                orchestrator="external",
                admin_token=SecretStr(ADMIN),
                cluster_token=SecretStr(ADMIN),
                state_dir=str(tmp_path / "s"),
            )
        )


async def test_a_restart_after_keep_alive_ran_out_publishes_zero_first(
    make_proxy: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    proxy = await make_proxy()
    url, ops = urls(proxy)
    await client.post(f"{ops}/v1/deployments", headers=AUTH, json=spec(keep_alive_s=0.5, downscale_delay_s=0))
    controller = Controller(proxy, client)
    try:
        assert (await controller.serve_first(url)).status_code == 200
        await proxy.aclose()  # persisted at 1 instance
        await asyncio.sleep(1.0)  # the proxy is down past the keep-alive
        again = await make_proxy()
        # the very first desired state the controller sees already says zero
        first = (
            await client.get(f"http://{HOST}:{again.ops_address[1]}/v1/orchestrator/desired", headers=AUTH)
        ).json()
        assert first["deployments"][0]["replicas"] == 0
    finally:
        await controller.aclose()
