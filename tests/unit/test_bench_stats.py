"""Load-tester statistics and workloads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from inferno.bench.stats import Sample, parse_server_timing, percentile, summarize, timeline
from inferno.bench.workload import Prompt, Workload, load_prompts


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100 and percentile(values, 100) == 100
    assert math.isnan(percentile([], 50))


def test_server_timing_parsing() -> None:
    parsed = parse_server_timing('queue;dur=0.25, backend;dur=12.5;desc="time to headers", total;dur=13')
    assert parsed == {"queue": 0.25, "backend": 12.5, "total": 13.0}
    assert parse_server_timing("junk, x;dur=abc") == {}


def test_summary_counts_errors_backends_and_split() -> None:
    samples = [
        Sample(0.0, 0.010, 200, backend="a", queue_ms=1.0, backend_ms=8.0),
        Sample(0.1, 0.020, 200, backend="b", queue_ms=2.0, backend_ms=16.0),
        Sample(0.2, 0.030, 200, backend="a", queue_ms=1.0, backend_ms=25.0),
        Sample(0.3, 0.001, 429),
        Sample(0.4, 1.000, 0, error="timeout"),
    ]
    s = summarize(samples, elapsed_s=1.0)
    assert (s["requests"], s["succeeded"], s["failed"]) == (5, 3, 2)
    assert s["errors"] == {"http_429": 1, "timeout": 1}
    assert s["backends"]["a"]["count"] == 2 and s["backends"]["b"]["share"] == pytest.approx(1 / 3)
    assert s["latency_s"]["p50"] == 0.020 and s["latency_s"]["max"] == 0.030
    assert s["split_ms"]["proxy_and_network"]["p50"] == pytest.approx(2.0)
    assert s["throughput_rps"] == 3.0


def test_stream_summary_and_timeline() -> None:
    samples = [
        Sample(0.0, 0.5, 200, ttft=0.1, itl=[0.01, 0.02], tokens=3),
        Sample(1.2, 0.5, 200, ttft=0.2, itl=[0.03], tokens=2),
    ]
    s = summarize(samples, elapsed_s=2.0)
    assert s["stream"]["tokens"] == 5 and s["stream"]["ttft_s"]["max"] == 0.2
    assert s["stream"]["itl_s"]["p50"] == 0.02
    tl = timeline(samples)
    assert [p["rps"] for p in tl] == [1.0, 1.0]


def test_jsonl_prompts_and_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text(
        json.dumps({"prompt": "hi"})
        + "\n\n"
        + json.dumps(
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "yo"}]}
        )
        + "\n"
    )
    prompts = load_prompts(str(good))
    assert [p.text for p in prompts] == ["hi", "yo"] and prompts[1].system == "be brief"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_prompts(str(bad))


def test_workload_bodies_per_kind() -> None:
    prompts = load_prompts(None)
    assert len(prompts) >= 20
    chat = json.loads(Workload("chat-stream", prompts, max_tokens=5).next_body())
    assert chat["stream"] is True and chat["messages"][0]["role"] == "user" and chat["max_tokens"] == 5
    batch = json.loads(Workload("batch", prompts, max_tokens=5, batch_size=3).next_body())
    assert len(batch["requests"]) == 3
    inference = Workload("inference", prompts, max_tokens=5, model="m")
    assert inference.path == b"/inference" and json.loads(inference.next_body())["model"] == "m"
    with pytest.raises(ValueError):
        Workload("nope", prompts, max_tokens=5)


def test_embedding_and_image_workloads_and_per_model_summary() -> None:
    import base64

    prompts = [Prompt("a"), Prompt("b"), Prompt("c")]
    embed = Workload("embeddings", prompts, max_tokens=5, batch_size=3, model="all-minilm-l6-v2")
    body = json.loads(embed.next_body())
    assert embed.path == b"/v1/embeddings" and embed.items == 3
    assert sorted(body["input"]) == ["a", "b", "c"] and body["model"] == "all-minilm-l6-v2"
    image = Workload("image", prompts, max_tokens=5, images=[b"\xff\xd8fake"])
    body = json.loads(image.next_body())
    assert image.path == b"/inference" and image.items == 1
    assert base64.b64decode(body["data"]) == b"\xff\xd8fake" and body["model_type"] == "any"
    samples = [
        Sample(start=0, latency=0.1, status=200, model="m1", items=4),
        Sample(start=0, latency=0.2, status=200, model="m1", items=4),
        Sample(start=0, latency=0.3, status=200, model="m2", items=1),
        Sample(start=0, latency=0.3, status=500, model="m2", items=1),
    ]
    summary = summarize(samples, 2.0)
    assert summary["items"] == 9 and summary["items_per_s"] == 4.5
    assert summary["models"]["m1"]["count"] == 2 and summary["models"]["m1"]["items_per_s"] == 4.0
    assert summary["models"]["m2"]["items"] == 1
