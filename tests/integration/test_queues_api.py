"""The pull queues through a real proxy on free ports: the test plays the worker over
the real lease, heartbeat, complete and release routes (docs/queues.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from inferno.config import QueueConfig, QueueSpec
from inferno.proxy.server import ProxyServer
from tests.conftest import HOST, TEST_TOKEN, proxy_config, wait_for

WORKER = "test-worker-token-0123456789abcdef"
W_AUTH = {"Authorization": f"Bearer {WORKER}"}
C_AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
ME = {"id": "w-test", "node": "node-a", "pod": "pod-1", "device": "/dev/fake0"}


class Cluster:
    def __init__(self, proxy: ProxyServer, http: httpx.AsyncClient) -> None:
        self.proxy = proxy
        self.http = http
        self.url = f"http://{HOST}:{proxy.data_address[1]}"
        self.ops = f"http://{HOST}:{proxy.ops_address[1]}"

    async def submit(self, queue: str = "q", wait: bool = False, **body: Any) -> httpx.Response:
        headers = body.pop("headers", {})
        params = {} if wait else {"wait": "false"}
        return await self.http.post(
            f"{self.url}/v1/queues/{queue}/jobs", json=body, params=params, headers=headers
        )

    async def lease(self, *queues: str, wait_s: float = 0.0, auth: dict[str, str] = W_AUTH) -> httpx.Response:
        body = {"queues": list(queues or ("q",)), "wait_s": wait_s, "worker": ME}
        return await self.http.post(f"{self.ops}/v1/lease", json=body, headers=auth)

    async def act(self, lease_id: str, action: str, body: Any = None) -> httpx.Response:
        return await self.http.post(
            f"{self.ops}/v1/leases/{lease_id}/{action}", json=body or {}, headers=W_AUTH
        )

    async def job(self, job_id: str, **params: Any) -> httpx.Response:
        return await self.http.get(f"{self.url}/v1/jobs/{job_id}", params=params)

    async def snapshot(self, queue: str = "q") -> dict[str, Any]:
        r = await self.http.get(f"{self.ops}/queues")
        assert r.status_code == 200
        row: dict[str, Any] = r.json()["queues"][queue]
        return row


@pytest.fixture
async def queues(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[ProxyServer] = []
    clients: list[httpx.AsyncClient] = []

    async def factory(*specs: QueueSpec, **overrides: Any) -> Cluster:
        config = proxy_config(
            queues=specs or (QueueSpec(name="q"), QueueSpec(name="other")),
            queue=overrides.pop("queue", QueueConfig()),
            worker_token=SecretStr(WORKER),
            cluster_token=SecretStr(TEST_TOKEN),
            state_dir=str(tmp_path / "state"),
            **overrides,
        )
        proxy = ProxyServer(config)
        await proxy.start()
        started.append(proxy)
        http = httpx.AsyncClient(timeout=10.0)
        clients.append(http)
        return Cluster(proxy, http)

    yield factory
    for http in clients:
        await http.aclose()
    for proxy in started:
        await proxy.aclose()


async def test_submit_lease_heartbeat_complete_and_fetch(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    r = await c.submit(args=["0.5", "x"], limit_s=3)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["state"] == "waiting"
    lease = await c.lease()
    assert lease.status_code == 200, lease.text
    work = lease.json()
    assert work["job_id"] == job_id and work["args"] == ["0.5", "x"] and work["limit_s"] == 3
    assert work["attempt"] == 1 and work["lease_s"] == 30
    assert (await c.job(job_id)).json()["state"] == "running"
    assert (await c.act(work["lease_id"], "heartbeat")).status_code == 200
    done = await c.act(work["lease_id"], "complete", {"exit_code": 0, "output": "ok", "run_s": 0.25})
    assert done.status_code == 200, done.text
    result = (await c.job(job_id)).json()
    assert result["outcome"] == "success" and result["output"] == "ok" and result["attempts"] == 1
    assert result["node"] == "node-a" and result["pod"] == "pod-1" and result["device"] == "/dev/fake0"
    assert result["run_s"] == 0.25 and result["total_s"] >= result["wait_s"]
    # the same lease completing again (a worker unsure the first counted): 200, and nothing changes
    again = await c.act(work["lease_id"], "complete", {"exit_code": 1})
    assert again.status_code == 200 and again.json()["repeated"] is True
    assert (await c.job(job_id)).json()["outcome"] == "success"
    # its heartbeat, though, is stale: the job is done
    assert (await c.act(work["lease_id"], "heartbeat")).status_code == 409
    row = await c.snapshot()
    assert row["completed"] == {"success": 1} and row["stale_completions"] == 1


async def test_waiting_client_gets_the_result_and_a_long_poll_answers_on_arrival(
    queues: Callable[..., Any],
) -> None:
    c: Cluster = await queues()
    assert (await c.lease(wait_s=0.2)).status_code == 204
    poll = asyncio.create_task(c.lease(wait_s=20))
    await wait_for(lambda: c.proxy.queues is not None and c.proxy.queues.queues["q"].polling() == 1)
    t0 = time.monotonic()
    submit = asyncio.create_task(c.submit(wait=True, args=["a"]))
    lease = await poll
    assert lease.status_code == 200 and time.monotonic() - t0 < 10  # not the 20 s poll
    work = lease.json()
    await c.act(work["lease_id"], "complete", {"exit_code": 3, "error": "exit status 3", "run_s": 0.1})
    r = await submit
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "failure" and r.json()["exit_code"] == 3


async def test_bad_submissions_get_clear_4xx(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues(QueueSpec(name="q", max_size=2, max_message_bytes=256))
    r = await c.submit("nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await c.submit(args=["x" * 400])
    assert r.status_code == 413
    for body in ({"args": "x"}, {"args": [1]}, {"limit_s": -1}, {"extra": 1}, {"priority": "urgent"}):
        r = await c.submit(**body)
        assert r.status_code == 400, (body, r.text)
    r = await c.http.post(f"{c.url}/v1/queues/q/jobs?wait=false", content=b"{nope")
    assert r.status_code == 400
    r = await c.submit(headers={"Idempotency-Key": "a b"})
    assert r.status_code == 400
    r = await c.http.post(f"{c.url}/v1/queues/q/jobs", params={"wait": "maybe"}, json={})
    assert r.status_code == 400
    assert (await c.submit()).status_code == 202
    assert (await c.submit()).status_code == 202
    full = await c.submit()
    assert full.status_code == 429 and full.headers["retry-after"] == "1"
    assert (await c.job("j-unknown")).status_code == 404
    row = await c.snapshot()
    assert (
        row["rejected"]["full"] == 1 and row["rejected"]["too_large"] == 1 and row["rejected"]["invalid"] >= 7
    )


async def test_idempotency_key_returns_the_first_job(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    first = await c.submit(args=["1"], headers={"Idempotency-Key": "k-1"})
    second = await c.submit(args=["2"], headers={"Idempotency-Key": "k-1"})
    assert first.json()["job_id"] == second.json()["job_id"]
    work = (await c.lease()).json()
    assert work["args"] == ["1"]
    assert (await c.lease()).status_code == 204  # one job, not two
    await c.act(work["lease_id"], "complete", {"exit_code": 0})
    third = await c.submit(wait=True, headers={"Idempotency-Key": "k-1"})
    assert third.status_code == 200 and third.json()["outcome"] == "success"
    elsewhere = await c.submit("other", headers={"Idempotency-Key": "k-1"})
    assert elsewhere.status_code == 409


async def test_expired_lease_redelivers_then_dead_letters(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues(queue=QueueConfig(lease_s=0.3, max_attempts=2))
    job_id = (await c.submit(args=["poison"])).json()["job_id"]
    first = (await c.lease()).json()
    assert first["attempt"] == 1
    second = (await c.lease(wait_s=5)).json()  # the first lease expires: redelivered
    assert second["job_id"] == job_id and second["attempt"] == 2
    late = await c.act(first["lease_id"], "complete", {"exit_code": 0})
    assert late.status_code == 409
    assert (await c.act(first["lease_id"], "heartbeat")).status_code == 409

    async def dead() -> bool:
        return (await c.job(job_id)).json().get("outcome") == "dead_lettered"

    deadline = time.monotonic() + 5
    while not await dead():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    row = await c.snapshot()
    assert row["dead"] == 1 and row["redeliveries"]["expired"] == 1 and row["backlog"] == 0
    # dead letters need the cluster (or admin) token, not the worker token
    listing = await c.http.get(f"{c.ops}/v1/queues/q/dead", headers=W_AUTH)
    assert listing.status_code == 401
    listing = await c.http.get(f"{c.ops}/v1/queues/q/dead", headers=C_AUTH)
    assert [j["job_id"] for j in listing.json()["data"]] == [job_id]
    back = await c.http.post(f"{c.ops}/v1/queues/q/dead/{job_id}/requeue", headers=C_AUTH)
    assert back.status_code == 200 and back.json()["state"] == "waiting"
    again = (await c.lease()).json()
    assert again["job_id"] == job_id and again["attempt"] == 1
    await c.act(again["lease_id"], "complete", {"exit_code": 0})
    assert (await c.job(job_id)).json()["outcome"] == "success"


async def test_release_redelivers_at_once_first_in_its_class(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    a = (await c.submit(args=["a"])).json()["job_id"]
    await c.submit(args=["b"])
    work = (await c.lease()).json()
    assert work["job_id"] == a
    assert (await c.act(work["lease_id"], "release", {"reason": "stopping"})).status_code == 200
    again = (await c.lease()).json()
    assert again["job_id"] == a and again["attempt"] == 2  # its original arrival: still first
    assert (await c.snapshot())["redeliveries"]["released"] == 1


async def test_priorities_with_ageing(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    low = (await c.submit(args=["low"], priority="low")).json()["job_id"]
    high = (await c.submit(args=["high"], headers={"X-Priority": "high"})).json()["job_id"]
    assert (await c.lease()).json()["job_id"] == high
    assert (await c.lease()).json()["job_id"] == low


async def test_worker_token_only_leases_and_reports(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    assert (await c.lease(auth={})).status_code == 401
    assert (await c.lease(auth=C_AUTH)).status_code == 204  # the cluster token leases too
    assert (await c.lease(auth={"Authorization": "Bearer " + "x" * 32})).status_code == 401
    reg = await c.http.post(f"{c.ops}/registration", json={"address": "127.0.0.1:9"}, headers=W_AUTH)
    assert reg.status_code == 401
    assert (await c.http.get(f"{c.ops}/v1/deployments", headers=W_AUTH)).status_code == 401
    await c.submit()
    assert (await c.lease()).status_code == 200


async def test_cancel_waiting_and_running(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    waiting = (await c.submit()).json()["job_id"]
    r = await c.http.delete(f"{c.url}/v1/jobs/{waiting}")
    assert r.status_code == 200 and r.json()["outcome"] == "cancelled"
    assert (await c.lease()).status_code == 204  # removed unrun
    running = (await c.submit()).json()["job_id"]
    work = (await c.lease()).json()
    assert (await c.http.delete(f"{c.url}/v1/jobs/{running}")).json()["outcome"] == "cancelled"
    assert (await c.act(work["lease_id"], "heartbeat")).status_code == 409  # the worker stops
    assert (await c.http.delete(f"{c.url}/v1/jobs/{running}")).status_code == 409
    assert (await c.snapshot())["completed"] == {"cancelled": 2}


async def test_client_disconnect_while_waiting_removes_the_job_unrun(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    async with httpx.AsyncClient(timeout=0.3) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(f"{c.url}/v1/queues/q/jobs", json={"args": ["x"]})

    async def gone() -> bool:
        row = await c.snapshot()
        return bool(row["disconnects"]["waiting"] == 1 and row["backlog"] == 0)

    deadline = time.monotonic() + 5
    while not await gone():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await c.lease()).status_code == 204


async def test_complete_with_next_chains_the_next_lease(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    await c.submit(args=["1"])
    await c.submit(args=["2"])
    work = (await c.lease()).json()
    nxt = {"queues": ["q"], "wait_s": 0, "worker": ME}
    r = await c.act(work["lease_id"], "complete", {"exit_code": 0, "next": nxt})
    assert r.status_code == 200 and r.json()["next"]["args"] == ["2"]
    r = await c.act(r.json()["next"]["lease_id"], "complete", {"exit_code": 0, "next": nxt})
    assert r.json() == {"status": "ok", "next": None}
    bad = {"queues": ["nope"], "wait_s": 0, "worker": ME}
    await c.submit()
    work = (await c.lease()).json()
    assert (await c.act(work["lease_id"], "complete", {"exit_code": 0, "next": bad})).status_code == 404
    # the refused "next" did not consume the completion
    assert (await c.act(work["lease_id"], "complete", {"exit_code": 0})).status_code == 200


async def test_two_queues_leased_in_the_order_given(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    await c.submit("q", args=["q"])
    await c.submit("other", args=["o"])
    assert (await c.lease("other", "q")).json()["queue"] == "other"
    assert (await c.lease("other", "q")).json()["queue"] == "q"


async def test_bad_worker_bodies_get_4xx(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues(queue=QueueConfig(max_result_bytes=2048))
    for body in ({"queues": "q"}, {"queues": ["q"], "wait_s": 1e9}, {"queues": ["q"], "wait_s": "x"}):
        r = await c.http.post(f"{c.ops}/v1/lease", json=body, headers=W_AUTH)
        assert r.status_code == 400, (body, r.text)
    r = await c.http.post(f"{c.ops}/v1/lease", json={"queues": ["nope"]}, headers=W_AUTH)
    assert r.status_code == 404
    await c.submit()
    work = (await c.lease()).json()
    big = await c.act(work["lease_id"], "complete", {"exit_code": 0, "output": "x" * 4096})
    assert big.status_code == 413
    bad: list[dict[str, Any]] = [{"exit_code": "zero"}, {"run_s": -1}, {"device_metrics": {"t": "hot"}}]
    for body in bad:
        assert (await c.act(work["lease_id"], "complete", body)).status_code == 400
    assert (await c.act(work["lease_id"], "frobnicate")).status_code == 404
    assert (await c.act(work["lease_id"], "complete", {"exit_code": 0})).status_code == 200


async def test_metrics_are_exposed_per_queue(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    await c.submit()
    await c.submit()
    work = (await c.lease()).json()
    await c.act(work["lease_id"], "complete", {"exit_code": 0, "run_s": 0.5})
    text = (await c.http.get(f"{c.ops}/metrics")).text
    assert 'inferno_jobqueue_waiting{queue="q"} 1.0' in text
    assert 'inferno_jobqueue_backlog{queue="q"} 1.0' in text
    assert 'inferno_jobqueue_completed_total{outcome="success",queue="q"} 1.0' in text
    assert 'inferno_jobqueue_run_seconds_count{queue="q"} 1.0' in text
    assert 'inferno_jobqueue_max_run_seconds{queue="q"} 0.5' in text
    assert 'inferno_jobqueue_waiting{queue="other"} 0.0' in text


async def test_job_ids_and_idempotency_keys_are_scoped_to_the_api_key(
    queues: Callable[..., Any], tmp_path: Path
) -> None:
    from inferno.security import KeyStore, connect

    store = KeyStore(connect(tmp_path / "state"))
    alice, _ = store.create("alice")
    bob, _ = store.create("bob")
    c: Cluster = await queues(require_api_key=True)
    a_auth = {"Authorization": f"Bearer {alice}"}
    b_auth = {"Authorization": f"Bearer {bob}"}
    assert (await c.submit()).status_code == 401
    job_id = (await c.submit(headers={**a_auth, "Idempotency-Key": "same"})).json()["job_id"]
    theirs = await c.submit(headers={**b_auth, "Idempotency-Key": "same"})
    assert theirs.status_code == 202 and theirs.json()["job_id"] != job_id  # a job of bob's own
    assert (await c.http.get(f"{c.url}/v1/jobs/{job_id}", headers=b_auth)).status_code == 404
    assert (await c.http.delete(f"{c.url}/v1/jobs/{job_id}", headers=b_auth)).status_code == 404
    mine = await c.http.get(f"{c.url}/v1/jobs/{job_id}", headers=a_auth)
    assert mine.status_code == 202 and mine.json()["job_id"] == job_id


async def test_a_worker_that_hangs_up_its_long_poll_is_not_handed_jobs(queues: Callable[..., Any]) -> None:
    c: Cluster = await queues()
    async with httpx.AsyncClient(timeout=0.3) as flaky:
        with pytest.raises(httpx.ReadTimeout):
            await flaky.post(f"{c.ops}/v1/lease", json={"queues": ["q"], "wait_s": 30}, headers=W_AUTH)
    assert c.proxy.queues is not None
    await wait_for(lambda: c.proxy.queues is not None and c.proxy.queues.queues["q"].polling() == 0)
    job_id = (await c.submit()).json()["job_id"]
    work = (await c.lease()).json()
    assert work["job_id"] == job_id and work["attempt"] == 1


async def test_pollers_past_the_cap_get_429_and_lose_their_connection(queues: Callable[..., Any]) -> None:
    from inferno.config import HttpConfig

    c: Cluster = await queues(queue=QueueConfig(max_pollers=2))
    polls = [asyncio.create_task(c.lease(wait_s=5)) for _ in range(2)]
    await wait_for(lambda: c.proxy.queues is not None and c.proxy.queues.queues["q"].polling() == 2)
    refused = await c.lease(wait_s=5)
    assert refused.status_code == 429 and refused.headers.get("connection") == "close"
    await c.submit()
    await c.submit()
    assert sorted(r.status_code for r in await asyncio.gather(*polls)) == [200, 200]
    # Long polls hold ops connections: the cap must leave room for registrations and probes.
    with pytest.raises(ValueError, match="more than half"):
        proxy_config(
            queues=(QueueSpec(name="q"),),
            queue=QueueConfig(max_pollers=200),
            http=HttpConfig(max_ops_connections=256),
        )


async def test_api_key_budgets_and_model_lists_apply_to_jobs(
    queues: Callable[..., Any], tmp_path: Path
) -> None:
    from inferno.security import KeyStore, connect

    store = KeyStore(connect(tmp_path / "state"))
    limited, _ = store.create("limited", rpm=2)
    chat_only, _ = store.create("chat-only", models=("smol",))
    queue_ok, _ = store.create("queue-ok", models=("queue:q",))
    c: Cluster = await queues(require_api_key=True)

    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    assert (await c.submit(headers=auth(limited))).status_code == 202
    assert (await c.submit(headers=auth(limited))).status_code == 202
    over = await c.submit(headers=auth(limited))
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
    assert (await c.submit(headers=auth(chat_only))).status_code == 403
    assert (await c.submit(headers=auth(queue_ok))).status_code == 202
    assert (await c.submit("other", headers=auth(queue_ok))).status_code == 403
    usage = (await c.http.get(f"{c.ops}/usage")).json()["usage"]
    assert {(u["key_name"], u["model"], u["requests"]) for u in usage} >= {
        ("limited", "queue:q", 2),
        ("queue-ok", "queue:q", 1),
    }
