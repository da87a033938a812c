"""The compiled hot path (``make native``): it loads, serves, fails over, refuses bad
input like the pure-Python one, and falls back to the sources when it is stale or
switched off. The rest of the suite runs the pure-Python reference (conftest)."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferno import native
from tests.conftest import HOST, start_process_cluster

pytestmark = pytest.mark.slow

#: `make test` builds the compiled modules first, so there they must be present and fresh
REQUIRED = os.environ.get("INFERNO_REQUIRE_NATIVE") == "1"


@pytest.fixture(autouse=True)
def _compiled_build() -> None:
    if native.fresh():
        return
    if REQUIRED:
        pytest.fail("no fresh compiled build: run `make native` (scripts/build_native.py)")
    pytest.skip("no fresh compiled build (`make native`)")


CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


def _probe(code: str, root: Path | None = None, pure: str = "0") -> str:
    """Run ``code`` in a fresh interpreter that imports inferno from ``root``."""
    env = {**os.environ, native.PURE_ENV: pure}
    cwd = None
    if root is not None:
        env["PYTHONPATH"] = str(root)
        cwd = str(root)
    out = subprocess.run(
        [sys.executable, "-P", "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


PROBE = "import inferno, inferno.http.server as s, inferno.native as n; print(inferno.NATIVE, n.active(), s.__file__)"


def test_the_build_loads_unless_switched_off() -> None:
    on = _probe(PROBE).split()
    assert on[:2] == ["True", "True"] and not on[2].endswith(".py")
    off = _probe(PROBE, pure="1").split()
    assert off[:2] == ["False", "False"] and off[2].endswith("server.py")


def test_a_stale_build_falls_back_to_the_sources(tmp_path: Path) -> None:
    copy = tmp_path / "tree"
    shutil.copytree(native.PACKAGE, copy / "inferno", ignore=shutil.ignore_patterns("__pycache__"))
    assert _probe(PROBE, copy).split()[:2] == ["True", "True"]
    # An edit after the build: the compiled modules would run the old code.
    source = copy / "inferno" / "http" / "messages.py"
    source.write_text(source.read_text() + "\nEDITED = True\n")
    stale = _probe(PROBE + "; import inferno.http.messages as m; print(m.EDITED)", copy).split()
    assert stale[:2] == ["False", "False"] and stale[2].endswith("server.py") and stale[3] == "True"


def _stream(client: httpx.Client, url: str) -> bytes:
    with client.stream("POST", url, json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        return b"".join(response.iter_raw())


def test_the_compiled_proxy_serves_fails_over_and_refuses_bad_input(
    spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(native.PURE_ENV, "0")  # the processes below load the compiled build
    cluster = start_process_cluster(spawn, 2, proxy_args=("--health-interval-s", "60"))
    log = Path(cluster.proxy.log_path).read_text()
    assert "Hot path: compiled (mypyc)" in log, log[-2000:]
    url = f"{cluster.url}/v1/chat/completions"
    with httpx.Client(timeout=10) as client:
        whole = client.post(url, json=CHAT)
        assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"]
        body = _stream(client, url)
        assert body.count(b"data: ") == 6 and body.endswith(b"data: [DONE]\n\n")

    # A backend SIGKILLed under load, streams and whole answers mixed: nothing fails.
    def one(i: int) -> bool:
        with httpx.Client(timeout=10) as client:
            if i % 2:
                return _stream(client, url).endswith(b"data: [DONE]\n\n")
            return client.post(url, json=CHAT).status_code == 200

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(240)]
        time.sleep(0.3)
        victim = cluster.backends["b1"].popen
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=5)
        results = [f.result(timeout=60) for f in futures]
    assert all(results), f"{results.count(False)} of {len(results)} failed"

    # Bad input: a clear 4xx, and the process keeps serving.
    with httpx.Client(timeout=10) as client:
        bad = client.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and "error" in bad.json()
    with socket.create_connection((HOST, int(cluster.url.rsplit(":", 1)[1])), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        assert sock.recv(200).startswith(b"HTTP/1.1 431")
    with httpx.Client(timeout=10) as client:
        assert client.post(url, json=CHAT).status_code == 200
    assert cluster.proxy.popen.poll() is None
