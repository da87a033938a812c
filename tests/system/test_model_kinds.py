"""Embeddings, image classification and text side by side, through the proxy, with the
real models: reference vectors and photos, per-model routing, aliases, fallbacks and
unknown models, against real processes."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import TEST_TOKEN, start_process_cluster

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "data"
REFERENCE = json.loads((DATA / "minilm_reference.json").read_text())
PHOTOS = json.loads((DATA / "images" / "reference.json").read_text())
#: ImageNet-1k classes that are right for each committed photo
RIGHT_CLASSES = {
    "cat.jpg": {281, 282, 283, 284, 285},  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee.jpg": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket.jpg": {657, 744, 812},  # missile, projectile, space shuttle
}
TEXT, IMAGE_NODE = ("b1", "b2"), "b3"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: Any) -> Any:
    from tests.conftest import Proc

    procs: list[Proc] = []
    logs = tmp_path_factory.mktemp("mixed")

    def spawn(args: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, str(logs / f"{name}.log"), env)
        procs.append(proc)
        return proc

    cluster = start_process_cluster(
        spawn,
        3,
        engines=("llamacpp", "fake", "minilm,efficientnet-lite0"),
        backend_args=("--threads", "1", "--onnx-threads", "1"),
        proxy_args=(
            "--model-alias",
            "text-embedding-3-small=all-minilm-l6-v2",
            "--fallback",
            "smollm2-135m-instruct=fake",
        ),
        ready_timeout_s=120,
    )
    yield cluster
    for proc in procs:
        proc.stop(timeout_s=5.0)


def _image(name: str) -> str:
    return base64.b64encode((DATA / "images" / name).read_bytes()).decode()


def test_models_are_listed_with_their_tasks(mixed: Any) -> None:
    listed = {m["id"]: m for m in httpx.get(f"{mixed.url}/v1/models", timeout=10).json()["data"]}
    assert {k: v["task"] for k, v in listed.items()} == {
        "smollm2-135m-instruct": "text-generation",
        "fake": "text-generation",
        "all-minilm-l6-v2": "embeddings",
        "efficientnet-lite0": "image-classification",
        "text-embedding-3-small": "embeddings",
    }
    assert listed["text-embedding-3-small"]["alias_of"] == "all-minilm-l6-v2"


def test_embeddings_match_independent_reference_vectors(mixed: Any) -> None:
    texts = [item["text"] for item in REFERENCE["items"]]
    # The official client (base64 on the wire) through an alias.
    ai = openai.OpenAI(base_url=f"{mixed.url}/v1", api_key="unused", max_retries=0, timeout=30)
    reply = ai.embeddings.create(model="text-embedding-3-small", input=texts)
    assert reply.model == "all-minilm-l6-v2"
    assert reply.usage.prompt_tokens == sum(item["tokens"] for item in REFERENCE["items"])
    vectors = np.array([d.embedding for d in reply.data])
    assert vectors.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    reference = np.array([item["embedding"] for item in REFERENCE["items"]])
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    # Sensible similarity ordering.
    sim = vectors @ vectors.T
    food, bread, baby, horse = 0, 1, 2, 3
    assert sim[food, bread] > sim[food, horse] > sim[food, baby]
    assert sim[8, 9] > sim[8, 6]  # the capital of France: answer nearer its question
    # A single string, floats on the wire, and the serving backend.
    r = httpx.post(f"{mixed.url}/v1/embeddings", json={"input": texts[0]}, timeout=30)
    assert r.status_code == 200 and r.headers["x-inferno-backend"] == IMAGE_NODE
    assert r.headers["x-inferno-model"] == "all-minilm-l6-v2"
    one = np.array(r.json()["data"][0]["embedding"])
    assert float(one @ reference[0]) >= 0.999


def test_photos_are_classified_as_the_reference_says(mixed: Any) -> None:
    with httpx.Client(timeout=30) as http:
        for name, reference in PHOTOS.items():
            for model_type in ("efficientnet-lite0", "any"):
                r = http.post(
                    f"{mixed.url}/inference",
                    json={"data": _image(name), "model_type": model_type, "top_k": 5},
                )
                assert r.status_code == 200, r.text
                body = r.json()
                top = body["predictions"]
                assert len(top) == 5 and top[0]["index"] == reference[0]["index"], (name, top)
                assert top[0]["index"] in RIGHT_CLASSES[name] and top[0]["class"] == reference[0]["class"]
                assert abs(top[0]["confidence"] - reference[0]["confidence"]) < 1e-3
                assert body["worker_id"] == IMAGE_NODE and body["model"] == "efficientnet-lite0"
                assert body["processing_time"] > 0


def test_each_models_requests_reach_only_its_backends(mixed: Any) -> None:
    seen: dict[str, set[str]] = {"text": set(), "fake": set(), "embeddings": set(), "image": set()}
    with httpx.Client(timeout=60) as http:
        for _ in range(6):
            r = http.post(f"{mixed.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
            seen["text"].add(r.headers["x-inferno-backend"])
            r = http.post(
                f"{mixed.url}/v1/chat/completions",
                json={"model": "fake", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
            )
            seen["fake"].add(r.headers["x-inferno-backend"])
            r = http.post(f"{mixed.url}/v1/embeddings", json={"input": ["a", "b"]})
            seen["embeddings"].add(r.headers["x-inferno-backend"])
        batch = http.post(
            f"{mixed.url}/batch_inference",
            json={
                "requests": [
                    {"data": _image("coffee.jpg"), "model_type": "any", "top_k": 1},
                    {"prompt": "Hello", "max_tokens": 2, "model": "fake"},
                ]
            },
        ).json()
    assert seen["text"] == set(TEXT)  # no model named: any text backend, never the image one
    assert seen["fake"] == {"b2"}
    assert seen["embeddings"] == {IMAGE_NODE}
    assert batch["succeeded"] == 2
    image, text = batch["results"]
    assert image["backend"] == IMAGE_NODE and image["response"]["predictions"][0]["class"] == "espresso"
    assert text["backend"] == "b2"
    metrics = httpx.get(f"{mixed.ops}/metrics", timeout=10).text
    assert 'inferno_model_requests_total{code="200",model="all-minilm-l6-v2"}' in metrics
    workers = httpx.get(f"{mixed.ops}/workers", timeout=10).json()
    tasks = {w["node_id"]: w["tasks"] for w in workers["workers"]}
    assert tasks[IMAGE_NODE] == {
        "all-minilm-l6-v2": "embeddings",
        "efficientnet-lite0": "image-classification",
    }


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"data": "not base64!!"}, 400, "base64"),
        ({"data": base64.b64encode(b"just some text").decode()}, 400, "not a supported image"),
        (
            {"data": base64.b64encode((DATA / "images" / "cat.jpg").read_bytes()[:2000]).decode()},
            400,
            "corrupt",
        ),
        ({"data": base64.b64encode(_png(20000, 20000)).decode()}, 400, "pixels"),  # a 20 kB bomb
        ({"data": "AAAA", "top_k": 0}, 400, "top_k"),
        ({"data": "AAAA", "model_type": "resnet-9000"}, 404, "available"),
        ({"data": "AAAA", "model": "a", "model_type": "b"}, 400, "different"),
        ({"data": "AAAA", "extra": 1}, 400, "unknown field"),
    ],
)
def test_bad_images_get_4xx_and_the_backend_keeps_serving(
    mixed: Any, body: dict[str, Any], status: int, fragment: str
) -> None:
    r = httpx.post(f"{mixed.url}/inference", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]
    ok = httpx.post(f"{mixed.url}/inference", json={"data": _image("cat.jpg"), "top_k": 1}, timeout=30)
    assert ok.status_code == 200


def test_unknown_models_and_bad_embedding_input(mixed: Any) -> None:
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{mixed.url}/v1/embeddings", json={"model": "no-such-model", "input": "x"})
        assert r.status_code == 404 and "all-minilm-l6-v2" in r.json()["error"]["message"]
        bads: list[dict[str, Any]] = [{"input": []}, {"input": [""]}, {"input": 3}, {}]
        for bad in bads:
            r = http.post(f"{mixed.url}/v1/embeddings", json=bad)
            assert r.status_code == 400, (bad, r.text)
        r = http.post(f"{mixed.url}/v1/embeddings", json={"input": "x", "dimensions": 100})
        assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
        r = http.post(f"{mixed.url}/v1/embeddings", json={"input": "x", "dimensions": 384})
        assert r.status_code == 200


def test_fallback_when_a_models_backends_are_all_down(mixed: Any) -> None:
    """Runs last in this module: it kills the llama.cpp backend."""
    chat = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 3,
    }
    r = httpx.post(f"{mixed.url}/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == "smollm2-135m-instruct"
    os.kill(mixed.backends["b1"].popen.pid, signal.SIGKILL)
    mixed.backends["b1"].popen.wait(timeout=10)
    with httpx.Client(timeout=30) as http:
        for _ in range(5):  # the first may find it still registered: the tries fail, then fall back
            r = http.post(f"{mixed.url}/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "fake" and r.headers["x-inferno-model"] == "fake"
            assert r.headers["x-inferno-backend"] == "b2"
        # No fallback configured for a model nobody serves: a 404, not a substitute.
        r = http.post(f"{mixed.url}/v1/chat/completions", json={**chat, "model": "other"})
        assert r.status_code == 404
    metrics = httpx.get(f"{mixed.ops}/metrics", timeout=10).text
    assert "inferno_fallbacks_total 5.0" in metrics


def test_dashboard_try_it_box_classifies_a_photo_and_embeds_text(mixed: Any) -> None:
    """The try-it box's image and embeddings kinds, on the real models (the page shrinks
    a photo to 320 px before sending it, as done here)."""
    import io

    from PIL import Image

    photo = Image.open(DATA / "images" / "cat.jpg").convert("RGB")
    photo.thumbnail((320, 320))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    auth = {"Authorization": f"Bearer {TEST_TOKEN}"}
    url = f"{mixed.ops}/dashboard/api/try"
    with httpx.Client(timeout=30) as http:
        image = http.post(
            url, headers=auth, json={"kind": "image", "image": base64.b64encode(buffer.getvalue()).decode()}
        ).json()
        assert image["status"] == 200 and image["backend"] == IMAGE_NODE, image
        assert image["model"] == "efficientnet-lite0" and image["path"] == "/inference"
        assert image["answer"].split(" (")[0] == PHOTOS["cat.jpg"][0]["class"], image["answer"]
        embedding = http.post(url, headers=auth, json={"kind": "embeddings", "prompt": "a cat"}).json()
        assert embedding["status"] == 200 and embedding["answer"].startswith("384 dimensions: [")
