"""End to end through `inferno up` with the real SmolLM2 model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.conftest import Proc

pytestmark = [pytest.mark.slow, pytest.mark.model]
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pytest.importorskip("xllamacpp", reason="needs the model runtime (make install)")
    log = Path(tmp_path_factory.mktemp("up")) / "up.log"
    # The cluster `make run` starts (README), on free ports.
    # (a 5 s lease: the README's kill demo waits out one; the proxy reads it from the environment)
    up = Proc(
        ["up", "--free-ports", "--models", "llamacpp*2,minilm+efficientnet-lite0", "--queue", "sim"],
        str(log),
        env={"INFERNO_PROXY_QUEUE_LEASE_S": "5"},
    )
    deadline = time.monotonic() + 180
    while "INFERNO_READY" not in up.output():
        if time.monotonic() > deadline or up.popen.poll() is not None:
            up.stop()
            pytest.fail(f"inferno up did not become ready:\n{up.output()[-3000:]}")
        time.sleep(0.2)
    match = re.search(r"INFERNO_READY proxy=(\S+) ops=(\S+)", up.output())
    assert match
    children = psutil.Process(up.pid).children(recursive=True)
    yield {"url": match.group(1), "ops": match.group(2), "proc": up}
    # Ctrl-C stops everything and leaves no orphans.
    up.popen.send_signal(signal.SIGINT)
    assert up.popen.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    up.stop()


def test_answers_come_from_the_model_alternating_backends(cluster: dict[str, Any]) -> None:
    served = []
    with httpx.Client(timeout=60) as http:
        for _ in range(4):
            r = http.post(
                f"{cluster['url']}/inference",
                json={"prompt": "What is the capital of France?", "max_tokens": 32, "temperature": 0},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert "Paris" in body["text"], body
            assert body["model"] == MODEL and body["usage"]["completion_tokens"] > 0
            served.append(r.headers["x-inferno-backend"])
    assert served in (
        ["backend-1", "backend-2", "backend-1", "backend-2"],
        ["backend-2", "backend-1", "backend-2", "backend-1"],
    )
    logs = cluster["proc"].output()
    for rid_line in ("Routing request", "Processing inference request", "Inference completed in"):
        assert rid_line in logs


def test_openai_client_chat_and_stream(cluster: dict[str, Any]) -> None:
    ai = openai.OpenAI(base_url=f"{cluster['url']}/v1", api_key="unused", max_retries=0, timeout=60)
    assert {m.id for m in ai.models.list().data} == {MODEL, "all-minilm-l6-v2", "efficientnet-lite0"}
    done = ai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a primary color."}],
        max_tokens=24,
        temperature=0,
    )
    text = done.choices[0].message.content or ""
    assert len(text.strip()) > 0 and done.usage and done.usage.completion_tokens > 0
    arrivals = []
    started = time.monotonic()
    for chunk in ai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write two sentences about the sea."}],
        max_tokens=48,
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic() - started, chunk.choices[0].delta.content))
    assert len(arrivals) > 5
    assert len("".join(t for _, t in arrivals).strip()) > 10
    # token by token: the stream spans real generation time, not one buffered burst
    assert arrivals[-1][0] - arrivals[0][0] > 0.05


def _bench(url: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "inferno", "bench", url, "--output", "json", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    summary: dict[str, Any] = json.loads(out.stdout)["summary"]
    return summary


def test_twice_the_real_models_capacity_is_200_or_429_and_ejects_nobody(cluster: dict[str, Any]) -> None:
    # The README's own load: /inference with 32 tokens. Capacity first (closed loop,
    # enough concurrency to fill every slot), then twice that as an open loop.
    capacity = _bench(cluster["url"], "-c", "4", "-d", "6", "--max-tokens", "32")["throughput_rps"]
    assert capacity > 0
    rate = 2 * capacity
    summary = _bench(
        cluster["url"], "--rate", f"{rate:.2f}", "-d", "20", "--max-tokens", "32", "--timeout-s", "90"
    )
    statuses = {int(k): v for k, v in summary["statuses"].items()}
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.get(200, 0) > 0
    workers = httpx.get(f"{cluster['ops']}/workers", timeout=5).json()["workers"]
    assert all(w["ejections"] == 0 and w["status"] == "healthy" for w in workers), workers
    assert len(workers) == 3
    assert "Backend ejected" not in cluster["proc"].output()
    print(f"capacity {capacity:.2f} req/s; at {rate:.2f} req/s for 20 s: {statuses}")


ROOT = Path(__file__).resolve().parents[2]


def _shell_blocks(text: str) -> list[str]:
    """The ```bash blocks of a Markdown text, one command per block."""
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


QUEUES = "### Pull queues: workers that dial out"


def test_the_readmes_pull_queue_section_works_as_written(cluster: dict[str, Any], tmp_path: Path) -> None:
    """The README's queue walk-through pasted into one shell (it uses job control):
    two workers, a job, a worker killed mid-job (its job comes back, attempt 2), the
    test client, and stopping the workers left. Only the ports differ (free ports), and
    the lease is 5 s rather than 30, so the demo waits less."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(QUEUES, 1)[1].split("\n## ", 1)[0]
    ops = cluster["ops"].removeprefix("http://")
    script = "\n".join(_shell_blocks(section))
    for old, new in (
        ("http://127.0.0.1:8080", cluster["url"]),
        ("localhost:8080", cluster["url"].removeprefix("http://")),
        ("127.0.0.1:6100", ops),
        ("localhost:6100", ops),
        ("/tmp/inferno-", f"{tmp_path}/inferno-"),
    ):
        script = script.replace(old, new)
    (tmp_path / ".inferno").symlink_to(Path.cwd() / ".inferno")  # where `inferno up` keeps its state
    bin_dir = str(Path(sys.executable).parent)
    out = subprocess.run(
        ["bash", "-c", "set -m -o pipefail\n" + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    decoder, results = json.JSONDecoder(), []
    for at in [m.start() for m in re.finditer(r'\{"job_id"', out.stdout)]:  # curl ends no line
        results.append(decoder.raw_decode(out.stdout, at)[0])
    assert [r["outcome"] for r in results] == ["success", "success"], out.stdout[-2000:]
    first, killed = results
    assert first["pod"] in ("w1", "w2") and first["run_s"] >= 0.5
    assert killed["attempts"] == 2 and killed["wait_s"] >= 4, killed  # back after the (5 s) lease
    assert "runs on w" in out.stdout and "results 40" in out.stdout and "success     40" in out.stdout


def test_the_readme_and_banner_examples_work_as_written(cluster: dict[str, Any], tmp_path: Path) -> None:
    """Every curl example in the README's first ten minutes, and every one the banner
    printed, run by bash exactly as written (only the port differs: free ports here)."""
    readme = (ROOT / "README.md").read_text()
    first_ten = readme.split("## Your first ten minutes", 1)[1].split("\n## ", 1)[0]
    first_ten = first_ten.split(QUEUES, 1)[0]  # the queues' blocks run in one shell (below)
    port = cluster["url"].rsplit(":", 1)[1]
    ops_port = cluster["ops"].rsplit(":", 1)[1]
    commands = [
        block.replace("localhost:8080", f"127.0.0.1:{port}").replace(
            "localhost:6100", f"127.0.0.1:{ops_port}"
        )
        for block in _shell_blocks(first_ten)
        if block.startswith("curl") or block.startswith("printf")
    ]
    banner = cluster["proc"].output().split("Try it:", 1)[1].split("Press Ctrl-C", 1)[0]
    commands += [c.strip() for c in banner.split("\n\n") if c.strip()]
    assert len(commands) >= 7, commands
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    for command in commands:
        out = subprocess.run(
            ["bash", "-c", "set -o pipefail; " + command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0 and out.stdout, (command, out.stderr)
        assert '"error"' not in out.stdout, (command, out.stdout[:500])
        if "/v1/embeddings" in command:
            assert len(json.loads(out.stdout)["data"][0]["embedding"]) == 384
        elif '"data"' in command:
            assert json.loads(out.stdout)["predictions"][0]["index"] in {281, 282, 285}
        elif '"stream": true' in command:
            assert "data: [DONE]" in out.stdout


def _stream_text(raw: str) -> tuple[str, list[dict[str, Any]]]:
    events = [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: {")]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))
    return text, events


def _wait_all_healthy(ops: str, count: int, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = httpx.get(f"{ops}/workers", timeout=5).json()["workers"]
        if sum(w["status"] == "healthy" and w.get("circuit", "closed") == "closed" for w in workers) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"not {count} healthy backends within {timeout_s}s")


def test_streams_survive_a_killed_backend_byte_for_byte(cluster: dict[str, Any]) -> None:
    """The cluster `make run` starts, streamed chat at concurrency 4 and 16, backend-1
    SIGKILLed mid-stream each time (inferno up restarts it): zero failed streams, and at
    temperature 0 each one's text is byte-identical to the same request unbroken."""
    url, ops, up = cluster["url"], cluster["ops"], cluster["proc"]

    def body(i: int) -> dict[str, Any]:
        return {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Write two sentences about the number {i}."}],
            "max_tokens": 40,
            "temperature": 0,
            "seed": 7,
            "stream": True,
        }

    def run(indices: list[int], on_chunks: threading.Event | None = None) -> dict[int, str]:
        results: dict[int, str] = {}

        def one(i: int) -> None:
            try:
                parts = []
                with (
                    httpx.Client(timeout=120) as http,
                    http.stream("POST", f"{url}/v1/chat/completions", json=body(i)) as r,
                ):
                    assert r.status_code == 200
                    on_victim = r.headers["x-inferno-backend"] == "backend-1"
                    for chunk in r.iter_text():
                        parts.append(chunk)
                        if on_chunks is not None and on_victim and len(parts) >= 4:
                            on_chunks.set()  # a stream on the victim is mid-way: kill it now
                raw = "".join(parts)
                assert raw.endswith("data: [DONE]\n\n") and '"error"' not in raw, raw[-400:]
                text, events = _stream_text(raw)
                assert len({(e["id"], e["created"]) for e in events}) == 1
                results[i] = text
            except Exception as exc:  # reported by the caller
                results[i] = f"FAILED: {exc!r}"[:500]

        threads = [threading.Thread(target=one, args=(i,)) for i in indices]
        for thread in threads:
            thread.start()
        if on_chunks is not None:
            assert on_chunks.wait(60), "no stream started"
            victim = next(
                p for p in psutil.Process(up.pid).children(recursive=True) if "backend-1" in p.cmdline()
            )
            victim.send_signal(signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=180)
        return results

    _wait_all_healthy(ops, 3)
    reference = run(list(range(16)))
    assert not [t for t in reference.values() if t.startswith("FAILED")], reference
    for concurrency in (4, 16):
        _wait_all_healthy(ops, 3)
        before = up.output().count("migrated from")
        got = run(list(range(concurrency)), threading.Event())
        wrong = {i: (got[i], reference[i]) for i in got if got[i] != reference[i]}
        assert not wrong, wrong
        assert up.output().count("migrated from") > before, up.output()[-3000:]
    print(f"migrations: {up.output().count('migrated from')}")
