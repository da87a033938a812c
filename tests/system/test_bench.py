"""`inferno bench` as a user runs it: against a real cluster, every output format."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferno.orchestrators.processes import free_port
from tests.conftest import HOST

pytestmark = pytest.mark.slow


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferno", "bench", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`inferno up` with the fake engine, as a user would start it."""
    from tests.conftest import Proc

    up = Proc(
        ["up", "--engine", "fake", "--free-ports", "--backends", "2"],
        str(tmp_path_factory.mktemp("bench") / "up.log"),
    )
    deadline = time.monotonic() + 30
    while "INFERNO_READY" not in up.output():
        if time.monotonic() > deadline or up.popen.poll() is not None:
            up.stop()
            pytest.fail(up.output()[-2000:])
        time.sleep(0.1)
    match = re.search(r"INFERNO_READY proxy=(\S+)", up.output())
    assert match
    yield match.group(1)
    up.stop()


def test_text_json_and_html_outputs(cluster_url: str, tmp_path: Path) -> None:
    text = bench(cluster_url, "-n", "300", "-c", "8", "--max-tokens", "4")
    assert text.returncode == 0, text.stderr
    assert "requests 300  ok 300  failed 0" in text.stdout
    assert (
        re.search(r"backend\s+count", text.stdout)
        and "backend-1" in text.stdout
        and "backend-2" in text.stdout
    )
    out = bench(
        cluster_url, "-n", "200", "-c", "4", "--output", "json", "--kind", "chat-stream", "--max-tokens", "5"
    )
    data = json.loads(out.stdout)
    summary = data["summary"]
    assert summary["succeeded"] == 200 and summary["stream"]["tokens"] == 1000
    assert {"p50", "p90", "p99", "p99.9", "max"} <= set(summary["latency_s"])
    assert set(summary["backends"]) == {"backend-1", "backend-2"}
    assert "queue" in summary["split_ms"]
    page = tmp_path / "report.html"
    html = bench(
        cluster_url,
        "-d",
        "1.5",
        "--rate",
        "100",
        "--arrival",
        "poisson",
        "--output",
        "html",
        "--output-file",
        str(page),
    )
    assert html.returncode == 0, html.stderr
    content = page.read_text()
    assert (
        content.count("<svg") == 4 and "<script" not in content and "http://" not in content.split("<pre>")[0]
    )
    assert "Latency histogram" in content and "Requests per backend" in content


def test_burst_ramp_batch_and_processes(cluster_url: str) -> None:
    burst = json.loads(
        bench(
            cluster_url, "-n", "60", "--burst-size", "20", "--burst-interval", "0.2", "--output", "json"
        ).stdout
    )
    assert burst["meta"]["mode"] == "burst" and burst["summary"]["succeeded"] == 60
    ramp = json.loads(
        bench(
            cluster_url, "-d", "1.5", "-c", "1", "--ramp-to", "6", "--ramp-step", "0.2", "--output", "json"
        ).stdout
    )
    assert ramp["meta"]["mode"] == "ramp" and ramp["summary"]["failed"] == 0
    batch = json.loads(bench(cluster_url, "-n", "20", "--kind", "batch", "--output", "json").stdout)
    assert batch["summary"]["succeeded"] == 20
    multi = json.loads(
        bench(cluster_url, "-n", "400", "-c", "8", "--processes", "2", "--output", "json").stdout
    )
    assert multi["summary"]["succeeded"] == 400 and multi["meta"]["processes"] == 2


def test_control_endpoint_steers_a_running_bench(cluster_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inferno",
            "bench",
            cluster_url,
            "-d",
            "6",
            "-c",
            "2",
            "--quiet",
            "--control-addr",
            f"{HOST}:{port}",
            "--output",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                stats = httpx.get(f"{base}/stats", timeout=1).json()
                if stats["requests"] > 0:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert stats["parallelism"] == 2
        assert httpx.post(f"{base}/parallelism", params={"value": "6"}, timeout=2).json() == {
            "parallelism": 6
        }
        assert httpx.post(f"{base}/parallelism", params={"value": "zero"}, timeout=2).status_code == 400
        assert httpx.get(f"{base}/stats", timeout=2).json()["parallelism"] == 6
        assert set(httpx.get(f"{base}/nodes", timeout=2).json()) <= {"backend-1", "backend-2"}
        assert httpx.get(f"{base}/fails", timeout=2).json()["errors"] == {}
        assert "latency" in httpx.get(f"{base}/stats", params={"format": "text"}, timeout=2).text
        assert httpx.post(f"{base}/reset", timeout=2).json() == {"status": "reset"}
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert json.loads(out)["summary"]["failed"] == 0
