"""`inferno bench --queue`: the queue-mode client against a fake queue frontend, over
real sockets, in process and as a real `python -m inferno bench` process."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from inferno.bench.control import start_control
from inferno.bench.queue import QueueLoad, QueueLoadConfig
from inferno.bench.queue_main import live_settings
from inferno.http.listener import HttpServer
from inferno.http.server import Request, Responder
from inferno.orchestrators.processes import free_port
from tests.conftest import HOST, wait_for
from tests.fake_queue import FakeQueueFrontend, fake_queue

PATHS = ("/stats", "/nodes", "/pods", "/fails", "/reqs-per-sec", "/parallelism")


def config(fake: FakeQueueFrontend, **overrides: Any) -> QueueLoadConfig:
    base: dict[str, Any] = {
        "target": fake.address,
        "queue": "sim",
        "args": ("0.5", "x y"),
        "limit_s": 7.0,
        "parallelism": 2,
        "max_parallelism": 8,
        "timeout_s": 5.0,
    }
    base.update(overrides)
    return QueueLoadConfig(**base)


class Running:
    """A QueueLoad running in this loop, with its control server."""

    def __init__(self, load: QueueLoad, task: asyncio.Task[None], control: HttpServer, base: str) -> None:
        self.load = load
        self.task = task
        self.control = control
        self.base = base
        self.http = httpx.AsyncClient(base_url=base, timeout=5)

    async def json(self, path: str, **params: str) -> Any:
        response = await self.http.get(path, params={"type": "json", **params})
        assert response.status_code == 200, response.text
        return response.json()


async def _start(cfg: QueueLoadConfig) -> Running:
    load = QueueLoad(cfg)
    task = asyncio.create_task(load.run())
    control = await start_control(load, lambda: live_settings(load), HOST, 0)
    host, port = control.bound[0]
    return Running(load, task, control, f"http://{host}:{port}")


@pytest.fixture
async def running(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeQueueFrontend, Running]]:
    fake_kwargs, cfg_kwargs = getattr(request, "param", ({}, {}))
    async with fake_queue(**fake_kwargs) as fake:
        run = await _start(config(fake, **cfg_kwargs))
        try:
            yield fake, run
        finally:
            run.load.stop(drain=False)
            await asyncio.wait_for(run.task, 10)
            await run.http.aclose()
            await run.control.aclose()


async def test_a_bounded_run_records_every_result_by_outcome_node_pod_and_device() -> None:
    async with fake_queue(pattern=("ok", "ok", "ok", "failure")) as fake:
        load = QueueLoad(config(fake, parallelism=4, requests=40))
        await asyncio.wait_for(load.run(), 20)
    stats = load.stats
    assert stats.results == 40 and stats.in_flight == 0 and fake.requests == 40
    assert stats.outcome_counts() == {"failure": 10, "success": 30}
    assert fake.max_in_flight == 4
    assert {"body": {"args": ["0.5", "x y"], "limit_s": 7.0}, "query": "wait=true"} in fake.bodies
    nodes = stats.node_view()
    assert set(nodes) == {"node-a", "node-b"} and sum(n["served"] for n in nodes.values()) == 40
    assert nodes["node-a"]["run_s"]["count"] == 20
    pods = stats.pod_view()
    assert sum(pods["pods"].values()) == 40 and set(pods["devices"]) == {"/dev/fake0", "/dev/fake1"}
    snap = stats.snapshot()
    times = snap["times_s"]
    assert all(times[k]["count"] == 40 for k in ("client_total", "queue_wait", "run", "overhead"))
    # the client saw at least the server's run time; the overhead is what is left of it
    assert times["client_total"]["min"] >= 0.01 and times["run"]["p50"] == pytest.approx(0.01, rel=0.02)
    assert times["overhead"]["p50"] == pytest.approx(times["client_total"]["p50"] - 0.012, abs=0.002)
    assert times["overhead"]["min"] >= -0.002 and times["queue_wait"]["max"] == 0.002
    assert snap["attempts"]["max"] == 2


@pytest.mark.parametrize("running", [({"nodes": ("node-a", "<b>evil&node</b>")}, {})], indirect=True)
async def test_every_control_endpoint_answers_in_all_three_types(
    running: tuple[FakeQueueFrontend, Running],
) -> None:
    _, run = running
    await wait_for(lambda: run.load.stats.results >= 4)
    for path in PATHS:
        plain = await run.http.get(path)
        assert plain.status_code == 200 and plain.headers["content-type"].startswith("text/plain"), path
        assert "<" not in plain.text.replace("<b>evil&node</b>", ""), path
        data = await run.json(path)
        assert isinstance(data, dict), path
        page = await run.http.get(path, params={"type": "html"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        assert page.text.startswith("<!DOCTYPE html>") and "<table>" in page.text and "<h1>" in page.text
        assert "<th>" in page.text and "<td" in page.text and "<pre" not in page.text
        assert '<a href="/nodes?type=html">nodes</a>' in page.text and "/reset" not in page.text
    stats = await run.json("/stats")
    assert stats["queue"] == "sim" and stats["parallelism"] == 2 and stats["results"] >= 4
    assert stats["outcomes"]["success"] >= 4 and stats["times_s"]["run"]["count"] >= 4
    nodes = await run.json("/nodes")
    assert set(nodes) == {"node-a", "<b>evil&node</b>"}
    nodes_page = (await run.http.get("/nodes", params={"type": "html"})).text
    assert "&lt;b&gt;evil&amp;node&lt;/b&gt;" in nodes_page and "<b>evil" not in nodes_page
    assert "evil&node" in (await run.http.get("/nodes")).text
    assert set(await run.json("/pods")) == {"pods", "devices"}
    assert (await run.json("/fails"))["fails"] == {}
    rate = await run.json("/reqs-per-sec")
    assert rate["window_s"] == 60 and "recent_rps" in rate
    par = await run.json("/parallelism")
    assert set(par) == {"parallelism", "max_parallelism", "slots", "in_flight"}
    assert (par["parallelism"], par["max_parallelism"], par["slots"]) == (2, 8, 2)
    assert "results per second" in (await run.http.get("/reqs-per-sec")).text.lower()


async def test_bad_queries_are_4xx_json_errors_and_the_server_goes_on(
    running: tuple[FakeQueueFrontend, Running],
) -> None:
    _, run = running
    http = run.http
    bad = [
        await http.get("/stats", params={"type": "xml"}),
        await http.get("/stats", params={"colour": "red"}),
        await http.get("/stats?type=json&type=html"),
        await http.get("/stats?" + "&".join(f"k{i}=1" for i in range(20))),
        await http.post("/parallelism", params={"value": "0"}),
        await http.post("/parallelism", params={"value": "nine"}),
        await http.post("/parallelism", params={"value": "9"}),
        await http.post("/parallelism", params={"value": "99999999999999999999"}),
        await http.post("/parallelism"),
        await http.get("/nope"),
        await http.post("/stats"),
    ]
    assert [r.status_code for r in bad] == [400] * 9 + [404, 405]
    for response in bad:
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["message"]
    assert "from 1 to 8 (--max-parallelism)" in bad[6].json()["error"]["message"]
    assert run.load.parallelism == 2
    assert (await http.get("/stats")).status_code == 200


@pytest.mark.parametrize("running", [({}, {"parallelism": 3})], indirect=True)
async def test_reset_keeps_the_requests_in_flight_and_counts_them_in_the_new_period(
    running: tuple[FakeQueueFrontend, Running],
) -> None:
    fake, run = running
    await wait_for(lambda: run.load.stats.results >= 3)
    fake.gate.clear()
    await wait_for(lambda: fake.held == 3)
    before = await run.json("/stats")
    assert before["results"] >= 3 and before["in_flight"] == 3
    reset = await run.json("/reset")
    assert reset == {"status": "reset", "in_flight": 3, "resets": 1}
    after = await run.json("/stats")
    assert after["results"] == 0 and after["in_flight"] == 3 and after["outcomes"] == {}
    assert after["times_s"]["client_total"]["count"] == 0 and await run.json("/nodes") == {}
    fake.gate.set()
    await wait_for(lambda: run.load.stats.results >= 3)
    later = await run.json("/stats")
    # the three that were in flight at the reset are counted now, though sent before it
    assert later["results"] == later["sent"] - later["in_flight"] + 3
    assert (await run.http.post("/reset")).status_code == 200  # the old POST still works


@pytest.mark.parametrize("running", [({"run_s": 0.05}, {})], indirect=True)
async def test_parallelism_steers_the_concurrency_the_frontend_sees_up_to_the_cap(
    running: tuple[FakeQueueFrontend, Running],
) -> None:
    fake, run = running
    await wait_for(lambda: fake.requests >= 4)
    assert fake.max_in_flight == 2
    raised = await run.http.post("/parallelism", params={"value": "6", "type": "json"})
    assert raised.status_code == 200 and raised.json()["parallelism"] == 6
    await wait_for(lambda: fake.in_flight == 6)
    assert fake.max_in_flight == 6
    over = await run.http.post("/parallelism", params={"value": "9"})
    assert over.status_code == 400 and run.load.parallelism == 6
    assert "(--max-parallelism)" in over.text
    await run.http.post("/parallelism", params={"value": "1"})
    await wait_for(lambda: fake.in_flight <= 1)
    fake.reset_peak()
    await asyncio.sleep(0.3)
    assert fake.max_in_flight == 1 and (await run.json("/parallelism"))["slots"] == 1
    capped = await run.http.post("/parallelism", params={"value": "8"})
    assert capped.status_code == 200
    await wait_for(lambda: fake.in_flight == 8)
    await asyncio.sleep(0.2)
    assert fake.max_in_flight == 8


@pytest.mark.parametrize(
    "running", [({"pattern": ("ok", "429", "500", "drop", "202", "ok")}, {"parallelism": 3})], indirect=True
)
async def test_errors_from_the_frontend_are_counted_and_never_end_the_client(
    running: tuple[FakeQueueFrontend, Running],
) -> None:
    fake, run = running
    await wait_for(lambda: fake.requests >= 60, timeout_s=15)
    assert not run.task.done()
    fails = await run.json("/fails")
    assert {r["class"] for r in fails["recent"]} >= {"http_429", "http_500", "connection_broken"}
    run.load.stop()  # drain, so what the fake answered and what the client counted can match
    await asyncio.wait_for(run.task, 10)
    answered = fake.answered
    stats = await run.json("/stats")
    # every answer is accounted for: a 202 was polled to its result, a dropped connection
    # is a failure (never resent, so never submitted twice)
    assert answered["poll"] == answered["202"] > 0
    assert stats["outcomes"] == {"success": answered["ok"] + answered["poll"]}
    assert stats["fails"] == {
        "http_429": answered["429"],
        "http_500": answered["500"],
        "connection_broken": answered["drop"],
    }
    assert stats["failed_requests"] == sum(stats["fails"].values()) and stats["in_flight"] == 0
    assert (
        fake.requests
        == stats["sent"]
        == answered["ok"] + answered["202"] + answered["429"] + answered["500"] + answered["drop"]
    )


async def test_connection_refused_and_deadlines_are_failures_of_their_own_class() -> None:
    refused = QueueLoad(QueueLoadConfig(target=f"{HOST}:{free_port()}", queue="q", duration_s=0.5))
    await asyncio.wait_for(refused.run(), 10)
    assert refused.stats.fail_counts().get("connect_error", 0) >= 2 and refused.stats.results == 0
    async with fake_queue(run_s=2.0) as fake:
        slow = QueueLoad(config(fake, timeout_s=0.2, duration_s=0.6))
        await asyncio.wait_for(slow.run(), 10)
    assert slow.stats.fail_counts().get("timeout", 0) >= 2 and slow.stats.results == 0


async def test_a_job_that_never_finishes_times_out_and_is_cancelled() -> None:
    async with fake_queue(pattern=("stuck",)) as fake:
        load = QueueLoad(config(fake, parallelism=1, timeout_s=1.5, requests=2))
        await asyncio.wait_for(load.run(), 15)
    assert load.stats.fail_counts() == {"timeout": 2} and load.stats.results == 0
    assert fake.answered["poll"] >= 2 and fake.cancelled == ["j-1", "j-2"]


async def test_an_answer_over_the_size_bound_is_a_failure_not_a_memory_cost() -> None:
    async with fake_queue(pattern=("huge", "ok")) as fake:
        load = QueueLoad(config(fake, parallelism=1, requests=4))
        await asyncio.wait_for(load.run(), 15)
    assert load.stats.results == 2 and load.stats.fail_counts() == {"connection_broken": 2}
    assert "response body is over" in load.stats.recent_failures[0]["detail"]


async def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    async with fake_queue(api_key="k-123") as fake:
        good = QueueLoad(config(fake, api_key="k-123", requests=4))
        await asyncio.wait_for(good.run(), 10)
        bad = QueueLoad(config(fake, api_key="wrong", requests=2))
        await asyncio.wait_for(bad.run(), 10)
    assert good.stats.results == 4
    assert bad.stats.results == 0 and bad.stats.fail_counts() == {"http_401": 2}


async def _http_json(client: httpx.AsyncClient, url: str, **params: str) -> Any:
    response = await client.get(url, params={"type": "json", **params})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
async def test_the_real_command_serves_its_control_port_and_ends_on_sigint_with_a_report() -> None:
    async with fake_queue(run_s=0.05, pattern=("ok",) * 9 + ("500",)) as fake:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "inferno",
            "bench",
            f"http://{fake.address}",
            "--queue",
            "sim",
            "--job-arg",
            "0.5",
            "--job-limit-s",
            "5",
            "--parallelism",
            "2",
            "--max-parallelism",
            "4",
            "--control-addr",
            f"{HOST}:{port}",
            "--output",
            "json",
            "--quiet",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        base = f"http://{HOST}:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:

                async def up() -> bool:
                    try:
                        return bool((await _http_json(client, "/stats"))["results"] >= 3)
                    except httpx.HTTPError:
                        return False

                await wait_for(up, timeout_s=20, step_s=0.1)
                for path in PATHS:
                    for kind in ("plain", "json", "html"):
                        response = await client.get(path, params={"type": kind})
                        assert response.status_code == 200, (path, kind, response.text)
                assert (await client.post("/parallelism", params={"value": "5"})).status_code == 400
                assert (await client.post("/parallelism", params={"value": "4"})).status_code == 200
                await wait_for(lambda: fake.in_flight == 4, timeout_s=10)
                assert fake.max_in_flight == 4 and fake.bodies[0]["body"] == {"args": ["0.5"], "limit_s": 5.0}
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    summary = report["summary"]
    assert summary["results"] >= 3 and summary["fails"].get("http_500", 0) >= 1
    assert summary["in_flight"] == 0 and report["meta"]["queue"] == "sim"
    assert set(report["nodes"]) == {"node-a", "node-b"} and report["meta"]["parallelism"] == 4


async def _bench(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "inferno",
        "bench",
        *args,
        "--quiet",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.slow
async def test_sigterm_ends_a_run_with_the_text_report_and_a_bounded_run_writes_html(tmp_path: Any) -> None:
    async with fake_queue(run_s=0.02) as fake:
        proc = await _bench(f"http://{fake.address}", "--queue", "sim", "-c", "3")
        try:
            await wait_for(lambda: fake.requests >= 10, timeout_s=20, step_s=0.05)
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()
        text = out.decode()
        assert text.startswith("inferno bench: queue sim") and "client_total" in text and "node-a" in text
        page = tmp_path / "report.html"
        timed = await _bench(
            f"http://{fake.address}",
            "--queue",
            "sim",
            "--duration-s",
            "0.5",
            "--output",
            "html",
            "--output-file",
            str(page),
        )
        _, err = await asyncio.wait_for(timed.communicate(), 20)
        assert timed.returncode == 0, err.decode()
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<h2>Nodes</h2>" in html and "<table>" in html
    assert "client_total" in err.decode()  # the text summary goes to stderr beside the file

    async def ok(request: Request, responder: Responder) -> None:
        responder.send(200, b"", b"")

    taken = HttpServer(ok)  # holds the port the bench is told to serve on
    host, port = await taken.start(HOST, 0)
    try:
        busy = await _bench(f"http://{HOST}:1", "--queue", "sim", "--control-addr", f"{host}:{port}")
        _, err = await asyncio.wait_for(busy.communicate(), 20)
    finally:
        await taken.aclose()
    assert (
        busy.returncode == 1
        and "cannot serve --control-addr" in err.decode()
        and "Traceback" not in err.decode()
    )
    refused = await _bench(
        f"http://{HOST}:{free_port()}",
        "--queue",
        "sim",
        "--duration-s",
        "0.3",
        "--output",
        "json",
        "--max-parallelism",
        "2",
    )
    out, _ = await asyncio.wait_for(refused.communicate(), 20)
    assert refused.returncode == 1  # no result at all
    report = json.loads(out)
    assert report["summary"]["fails"]["connect_error"] >= 1
    assert report["meta"]["parallelism"] == 2  # the default 8 is brought under the cap
    over = await _bench(f"http://{HOST}:1", "--queue", "sim", "-c", "3", "--max-parallelism", "2")
    _, err = await asyncio.wait_for(over.communicate(), 20)
    assert over.returncode == 2 and "--parallelism 3 is over --max-parallelism 2" in err.decode()
