"""What one embeddings or image request may cost a real backend process with the real
models: long thin images, 16-bit images, one bad image among good ones in a micro-batch,
and a big embeddings request beside small ones."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from inferno.orchestrators.processes import free_port
from tests.conftest import HOST, Proc, wait_http

pytestmark = pytest.mark.slow

CAT = Path(__file__).resolve().parents[1] / "data" / "images" / "cat.jpg"
#: small bounds, so the biggest request allowed takes a few seconds here, not a minute
EMBEDDING_FLAGS = ("--embedding-max-request-tokens", "8192", "--embedding-batch-tokens", "1024")
LONG_TEXT = "the quick brown fox jumps over the lazy dog " * 60  # truncated to 256 tokens


@pytest.fixture(scope="module")
def backend(tmp_path_factory: Any) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("media")
    port = free_port()
    proc = Proc(
        [
            "backend",
            "--engine",
            "minilm,efficientnet-lite0",
            "--listen-addr",
            f"{HOST}:{port}",
            "--ops-addr",
            f"{HOST}:{free_port()}",
            "--onnx-threads",
            "1",
            "--image-max-batch",
            "8",
            *EMBEDDING_FLAGS,
        ],
        str(logs / "backend.log"),
    )
    try:
        wait_http(f"http://{HOST}:{port}/health", timeout_s=120)
        yield f"http://{HOST}:{port}"
    finally:
        proc.stop(timeout_s=10)
        assert "Traceback" not in proc.output(), proc.output()[-3000:]


def _png(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _classify(http: httpx.Client, url: str, data: str) -> httpx.Response:
    return http.post(f"{url}/inference", json={"data": data, "top_k": 3})


def test_long_thin_images_get_400_at_once_and_the_backend_keeps_serving(backend: str) -> None:
    with httpx.Client(timeout=30) as http:
        for size in ((1, 200_000), (200_000, 1), (2, 5000)):
            data = _png(Image.new("L", size))
            assert len(data) < 2000  # a few hundred bytes on the wire
            started = time.monotonic()
            r = _classify(http, backend, data)
            assert r.status_code == 400, r.text
            assert "factor of 32" in r.json()["error"]["message"]
            assert time.monotonic() - started < 2.0
        r = _classify(http, backend, base64.b64encode(CAT.read_bytes()).decode())
        assert r.status_code == 200 and r.json()["predictions"][0]["index"] == 285
        assert http.get(f"{backend}/health").json()["status"] == "ok"


async def test_one_bad_image_in_a_micro_batch_fails_only_itself(backend: str) -> None:
    good = base64.b64encode(CAT.read_bytes()).decode()
    bad = _png(Image.new("L", (1, 200_000)))
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(3):
            # Sent together, so the batcher runs bad and good images in one batch.
            answers = await asyncio.gather(
                *(
                    http.post(f"{backend}/inference", json={"data": data, "top_k": 1})
                    for data in (good, bad, good, bad, good, good)
                )
            )
            statuses = [r.status_code for r in answers]
            assert statuses == [200, 400, 200, 400, 200, 200], [r.text[:200] for r in answers]


@contextlib.contextmanager
def _address_space_capped(headroom_bytes: int) -> Iterator[None]:
    """This process may map at most ``headroom_bytes`` more: an allocation past it is a
    MemoryError here, not the machine's OOM killer picking a victim."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (used + headroom_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


async def test_a_micro_batch_with_an_image_that_fails_late_answers_the_others() -> None:
    """The same batch, made for certain: every image is submitted before the batcher
    wakes. One image passes the header checks but runs out of memory while being
    prepared (a 1x20000 image with the aspect bound lifted: 4 GB once resized); only
    its own request fails."""
    from inferno.engines.vision.engine import EfficientNetEngine, default_cache_dir
    from inferno.errors import BadRequest

    engine = EfficientNetEngine(
        threads=1, max_pixels=10**7, max_batch=8, cache_dir=default_cache_dir(), max_aspect=10**6
    )
    await engine.start()
    good = CAT.read_bytes()
    bad = base64.b64decode(_png(Image.new("L", (1, 20_000))))
    try:
        await engine.classify(good, 1)  # the worker thread and ONNX's arena exist before the cap
        with _address_space_capped(1 << 30):
            answers = await asyncio.gather(
                *(engine.classify(raw, 1) for raw in (good, bad, good, good)), return_exceptions=True
            )
    finally:
        await engine.aclose()
    assert isinstance(answers[1], BadRequest), answers[1]
    for answer in (answers[0], answers[2], answers[3]):
        assert isinstance(answer, list) and answer[0].index == 285, answer


def test_a_16_bit_grayscale_png_classifies_like_the_8_bit_one(backend: str) -> None:
    gray = Image.open(CAT).convert("L")
    wide = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    assert wide.mode == "I;16"
    with httpx.Client(timeout=30) as http:
        eight = _classify(http, backend, _png(gray))
        sixteen = _classify(http, backend, _png(wide))
    assert eight.status_code == 200 and sixteen.status_code == 200, sixteen.text
    top8, top16 = eight.json()["predictions"], sixteen.json()["predictions"]
    assert top16[0]["index"] == top8[0]["index"], (top8, top16)
    assert abs(top16[0]["confidence"] - top8[0]["confidence"]) < 0.02


async def test_small_embeddings_are_served_while_a_big_request_runs(backend: str) -> None:
    async with httpx.AsyncClient(timeout=120) as http:

        async def timed(texts: list[str]) -> tuple[float, float, httpx.Response]:
            started = time.monotonic()
            r = await http.post(f"{backend}/v1/embeddings", json={"input": texts})
            return started, time.monotonic(), r

        big = asyncio.ensure_future(timed([LONG_TEXT] * 32))  # 8192 tokens: the most allowed
        await asyncio.sleep(0.3)  # the big request is running
        smalls = [await timed([f"a short text {i}"]) for i in range(3)]
        big_started, big_done, big_answer = await big
    assert big_answer.status_code == 200 and big_answer.json()["usage"]["prompt_tokens"] == 8192
    big_s = big_done - big_started
    for started, done, answer in smalls:
        assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 384
        assert done < big_done, "a small request waited for the whole big one"
        assert done - started < big_s / 2, (done - started, big_s)


def test_an_embeddings_request_over_the_token_cap_gets_400_before_any_work(backend: str) -> None:
    started = time.monotonic()
    r = httpx.post(f"{backend}/v1/embeddings", json={"input": [LONG_TEXT] * 33}, timeout=30)
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    assert error["param"] == "input" and "at most 8192" in error["message"]
    assert time.monotonic() - started < 3.0
    r = httpx.post(f"{backend}/v1/embeddings", json={"input": ["still serving"]}, timeout=30)
    assert r.status_code == 200
