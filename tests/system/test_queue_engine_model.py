"""A queue worker in engine mode with the real model: a GPU box that can only dial out
serves chat jobs (``inferno worker --queue chat --engine llamacpp``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Proc
from tests.system.queue_cluster import QueueCluster

pytestmark = [pytest.mark.slow, pytest.mark.model]


def test_chat_jobs_are_answered_by_smollm2_in_a_worker(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp", reason="needs the model runtime (make install)")
    c = QueueCluster(spawn, tmp_path, "--queue", "chat:10:65536")
    c.worker("m-pod", "--queue", "chat", "--engine", "llamacpp", "--threads", "1", workload=())
    body = {"messages": [{"role": "user", "content": "Name a primary color."}], "max_tokens": 8}
    with httpx.Client(timeout=120) as http:
        r = http.post(f"{c.url}/v1/queues/chat/jobs", json={"input": body}).json()
        bad = http.post(f"{c.url}/v1/queues/chat/jobs", json={"input": {"messages": "nope"}}).json()
    assert r["outcome"] == "success", r
    answer = r["answer"]
    assert answer["object"] == "chat.completion" and answer["model"] == "smollm2-135m-instruct"
    assert answer["choices"][0]["message"]["content"].strip()
    assert 0 < answer["usage"]["completion_tokens"] <= 8
    assert bad["outcome"] == "failure" and bad["error"].startswith("bad input"), bad
