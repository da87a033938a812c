"""End to end through `inferno up` with the real SmolLM2 model."""

from __future__ import annotations

import re
import signal
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
    up = Proc(["up", "--free-ports", "--backends", "2"], str(log))
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
    assert [m.id for m in ai.models.list().data] == [MODEL]
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
