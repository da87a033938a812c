"""Hostile clients and workers against the pull queues, and a hostile proxy against the
bench's control port: a real proxy (and a real fake frontend) on free ports, real
sockets. Every bad input is a 4xx JSON error and the server keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import SecretStr

from inferno.bench.control import start_control
from inferno.bench.queue import QueueLoad, QueueLoadConfig
from inferno.bench.queue_main import live_settings
from inferno.config import QueueConfig, QueueSpec
from inferno.http.listener import HttpServer
from inferno.http.server import Request, Responder
from inferno.proxy.server import ProxyServer
from tests.conftest import HOST, TEST_TOKEN, proxy_config, wait_for
from tests.fake_queue import fake_queue

WORKER = "hostile-worker-token-0123456789abcdef"
W_AUTH = {"Authorization": f"Bearer {WORKER}"}
ME = {"id": "w-1", "node": "node-a", "pod": "pod-1", "device": "/dev/fake0"}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


class Proxy:
    def __init__(self, proxy: ProxyServer, http: httpx.AsyncClient) -> None:
        self.proxy = proxy
        self.http = http
        self.url = f"http://{HOST}:{proxy.data_address[1]}"
        self.ops = f"http://{HOST}:{proxy.ops_address[1]}"

    async def submit(self, body: bytes, query: str = "wait=false") -> httpx.Response:
        return await self.http.post(f"{self.url}/v1/queues/q/jobs?{query}", content=body)

    async def lease(self, worker: dict[str, str] = ME) -> httpx.Response:
        body = {"queues": ["q"], "wait_s": 0, "worker": worker}
        return await self.http.post(f"{self.ops}/v1/lease", json=body, headers=W_AUTH)

    async def complete(self, lease_id: str, body: bytes) -> httpx.Response:
        url = f"{self.ops}/v1/leases/{lease_id}/complete"
        return await self.http.post(url, content=body, headers=W_AUTH)


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    config = proxy_config(
        queues=(QueueSpec(name="q"),),
        queue=QueueConfig(),
        worker_token=SecretStr(WORKER),
        cluster_token=SecretStr(TEST_TOKEN),
        state_dir=str(tmp_path / "state"),
    )
    server = ProxyServer(config)
    await server.start()
    # a short deadline: a request that hangs is the failure these tests look for
    async with httpx.AsyncClient(timeout=5.0) as http:
        yield Proxy(server, http)
    await server.aclose()


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["message"]


async def test_deep_nesting_in_input_or_answer_is_400_and_the_journal_keeps_committing(proxy: Proxy) -> None:
    # 300 levels fit a 1 KiB job but not orjson's serialiser (254): the journal's commit
    # used to raise, dropping its batch and leaving every submission in it hanging.
    deep = await proxy.submit(b'{"input":' + nested(300) + b"}")
    assert_error(deep, 400)
    assert "input" in deep.json()["error"]["message"]
    ok = await proxy.submit(b'{"args":["a"],"input":' + nested(64) + b"}")
    assert ok.status_code == 202, ok.text
    lease = await proxy.lease()
    assert lease.status_code == 200 and lease.json()["job_id"] == ok.json()["job_id"], lease.text
    assert lease.json()["input"] == orjson.loads(nested(64))
    lease_id = lease.json()["lease_id"]
    assert_error(await proxy.complete(lease_id, b'{"exit_code":0,"answer":' + nested(300) + b"}"), 400)
    # the refusal did not spend the lease; a sane completion is the result
    done = await proxy.complete(lease_id, b'{"exit_code":0,"answer":{"a":[1]}}')
    assert done.status_code == 200, done.text
    result = await proxy.http.get(f"{proxy.url}/v1/jobs/{ok.json()['job_id']}")
    assert result.status_code == 200 and result.json()["answer"] == {"a": [1]}
    assert (await proxy.submit(b'{"args":["b"]}')).status_code == 202


async def test_a_query_of_too_many_fields_is_400_not_500(proxy: Proxy) -> None:
    many = "&".join(f"k{i}=1" for i in range(9))
    assert_error(await proxy.submit(b"{}", many), 400)
    job = await proxy.submit(b"{}")
    assert job.status_code == 202
    assert_error(await proxy.http.get(f"{proxy.url}/v1/jobs/{job.json()['job_id']}?{many}"), 400)


async def test_a_completion_whose_next_is_refused_does_not_count(proxy: Proxy) -> None:
    job = await proxy.submit(b'{"args":["a"]}')
    lease_id = (await proxy.lease()).json()["lease_id"]
    bad_next = b'{"exit_code":0,"output":"x","next":{"queues":["q"],"wait_s":100000}}'
    assert_error(await proxy.complete(lease_id, bad_next), 400)
    # refused whole: the job is still running and the worker's retry is accepted
    state = await proxy.http.get(f"{proxy.url}/v1/jobs/{job.json()['job_id']}")
    assert state.status_code == 202 and state.json()["state"] == "running"
    assert (await proxy.complete(lease_id, b'{"exit_code":0,"output":"x"}')).status_code == 200


@pytest.mark.parametrize(
    "field, value",
    [("id", "w\nINFO forged line"), ("node", "n\x1b[2J"), ("pod", "p\x9b31m"), ("device", "d\u2028x")],
)
async def test_worker_names_with_control_characters_are_400(proxy: Proxy, field: str, value: str) -> None:
    await proxy.submit(b"{}")
    assert_error(await proxy.lease({**ME, field: value}), 400)
    lease = await proxy.lease()
    assert lease.status_code == 200, lease.text
    lease_id = lease.json()["lease_id"]
    assert_error(await proxy.complete(lease_id, b'{"exit_code":0,"device":"/dev/x\\r\\n"}'), 400)
    assert_error(await proxy.complete(lease_id, b'{"exit_code":0,"device_metrics":{"t\\u0007":1}}'), 400)
    assert (await proxy.complete(lease_id, b'{"exit_code":0,"device":"/dev/x"}')).status_code == 200


async def test_the_bench_control_port_refuses_odd_digits_and_escapes_names_in_text() -> None:
    evil = "evil\x1b[2J\nFAKE row\x9b31m"
    async with fake_queue(nodes=("node-a", evil)) as fake:
        load = QueueLoad(
            QueueLoadConfig(target=fake.address, queue="sim", parallelism=2, max_parallelism=8, timeout_s=5.0)
        )
        task = asyncio.create_task(load.run())
        control = await start_control(load, lambda: live_settings(load), HOST, 0)
        host, port = control.bound[0]
        try:
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as http:
                await wait_for(lambda: load.stats.results >= 4)
                for value in ("²", "٣", "१"):  # str.isdigit() says yes to all three
                    assert_error(await http.post("/parallelism", params={"value": value}), 400)
                assert load.parallelism == 2
                text = (await http.get("/nodes")).text
                assert "\x1b" not in text and "\x9b" not in text and "\nFAKE" not in text
                assert "evil\\x1b[2J\\x0aFAKE row\\x9b31m" in text
                assert evil in (await http.get("/nodes", params={"type": "json"})).json()
        finally:
            load.stop(drain=False)
            await asyncio.wait_for(task, 10)
            await control.aclose()


async def test_get_queues_needs_no_token_so_it_shows_no_job_id(proxy: Proxy) -> None:
    job = await proxy.submit(b'{"args":["a"]}')
    job_id = job.json()["job_id"]
    assert (await proxy.lease()).status_code == 200
    listing = await proxy.http.get(f"{proxy.ops}/queues")
    assert listing.status_code == 200
    running = listing.json()["queues"]["q"]["running_jobs"]
    assert len(running) == 1 and running[0]["pod"] == "pod-1"
    # without API keys the id alone reads and cancels the job: it must not leak here
    assert job_id not in listing.text


class InstantPolls:
    """A frontend that never holds a poll: every submission and poll is a 202 at once."""

    def __init__(self) -> None:
        self.polls = 0
        self.server = HttpServer(self, name="instant-polls")

    async def __call__(self, request: Request, responder: Responder) -> None:
        if request.method == "GET":
            self.polls += 1
        body = b'{"job_id":"j-1","state":"running"}' if request.method != "DELETE" else b"{}"
        responder.send(
            202 if request.method != "DELETE" else 200, b"Content-Type: application/json\r\n", body
        )


async def test_the_bench_does_not_busy_loop_on_a_proxy_that_answers_polls_at_once() -> None:
    fake = InstantPolls()
    host, port = await fake.server.start(HOST, 0)
    try:
        load = QueueLoad(
            QueueLoadConfig(target=f"{host}:{port}", queue="sim", parallelism=1, requests=1, timeout_s=1.0)
        )
        await asyncio.wait_for(load.run(), 10)
    finally:
        await fake.server.aclose()
    assert load.stats.fail_counts() == {"timeout": 1}
    assert 1 <= fake.polls <= 10, fake.polls  # a poll per FAST_POLL_S, not thousands
