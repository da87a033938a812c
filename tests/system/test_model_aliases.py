"""Model aliases (``--model-alias``) against real processes, with the official openai client."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import start_process_cluster

pytestmark = pytest.mark.slow


def test_an_alias_reaches_the_real_model_and_openai_clients_work_unchanged(spawn: Any) -> None:
    cluster = start_process_cluster(
        spawn, 2, proxy_args=("--model-alias", "gpt-4o-mini=fake", "--model-alias", "gone=nowhere")
    )
    ai = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0, timeout=10)
    listed = {m.id for m in ai.models.list().data}
    assert listed == {"fake", "gpt-4o-mini"}  # an alias of an unserved model is not listed
    reply = ai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.model == "fake" and reply.choices[0].message.content
    with httpx.Client(timeout=10) as http:
        r = http.post(
            f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 2, "model": "gpt-4o-mini"}
        )
        assert r.status_code == 200 and r.json()["model"] == "fake"
        assert r.headers["x-inferno-model"] == "fake"
        batch = http.post(
            f"{cluster.url}/batch_inference",
            json={"requests": [{"prompt": "a", "max_tokens": 1, "model": "gpt-4o-mini"}]},
        ).json()
        assert batch["succeeded"] == 1 and batch["results"][0]["response"]["model"] == "fake"
        # Unknown models, and aliases of models nobody serves, are a 404 listing what is served.
        for name in ("gone", "unknown-model"):
            r = http.post(f"{cluster.url}/inference", json={"prompt": "x", "model": name})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            assert "fake" in r.json()["error"]["message"] and name not in r.json()["error"]["message"]
        # With no model named, the header still says which model answered.
        r = http.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1})
        assert r.headers["x-inferno-model"] == "fake"


def test_bad_alias_specs_are_refused_at_start(spawn: Any) -> None:
    for spec in ("no-equals", "a=b\nc", "a=b"):
        args = ["proxy", "--listen-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0", "--model-alias", spec]
        if spec == "a=b":
            args += ["--model-alias", "b=c"]  # an alias of an alias
        proc = spawn(args, f"alias-{abs(hash(spec))}")
        assert proc.popen.wait(timeout=30) == 2, proc.output()
