"""Schemathesis against a live local cluster (fake engine), from the proxy's own
/openapi.json: no 5xx and no crash across a bounded number of generated cases.
``make fuzz`` runs the same with many more cases."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import start_process_cluster

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("INFERNO_FUZZ_EXAMPLES", "12"))


def test_schemathesis_finds_no_server_error(spawn: Any, tmp_path: Path) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.fail("schemathesis is not installed (make install-dev)")
    # Two fake text backends and the real embeddings and image models: generated
    # images and texts reach real decoders and tokenizers.
    cluster = start_process_cluster(
        spawn,
        3,
        engines=("fake", "fake", "minilm,efficientnet-lite0"),
        backend_args=("--fake-tokens-per-s", "100000", "--onnx-threads", "1"),
        ready_timeout_s=120,
    )
    schema = httpx.get(f"{cluster.url}/openapi.json", timeout=5).json()
    assert {"/inference", "/v1/chat/completions", "/v1/embeddings"} <= set(schema["paths"])
    out = subprocess.run(
        [
            cli,
            "run",
            f"{cluster.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(EXAMPLES),
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "20261130",
            "--request-timeout",
            "20",
            "--suppress-health-check",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=tmp_path,
    )
    report = out.stdout[-4000:] + out.stderr[-2000:]
    (tmp_path / "schemathesis.txt").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, report
    # Everything still serves, and nothing was logged as unhandled.
    r = httpx.post(f"{cluster.url}/inference", json={"prompt": "x", "max_tokens": 1}, timeout=10)
    assert r.status_code == 200
    for proc in (cluster.proxy, *cluster.backends.values()):
        assert proc.popen.poll() is None
        assert "Unhandled error" not in proc.output() and "Traceback" not in proc.output()
