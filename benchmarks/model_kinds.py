"""model_kinds: embeddings (sentences/s) and image classification (images/s) per backend.

One backend serving both ``minilm`` and ``efficientnet-lite0`` behind the proxy,
measured with ``inferno bench`` in closed loop: embeddings with 1 and 16 texts
per request (concurrent requests are micro-batched by the engine), images with
the committed test photos. Each cell runs ``--repeats`` times; medians.

    python benchmarks/model_kinds.py [--duration 10] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    HOST,
    ROOT,
    inferno,
    machine,
    median,
    procs,
    proxy_cmd,
    wait_healthy,
    wait_port,
    write_result,
)
from inferno.orchestrators.processes import free_port

PHOTOS = sorted(str(p) for p in (ROOT / "tests" / "data" / "images").glob("*.jpg"))
#: (label, bench kind, items per request, concurrency)
CELLS = (
    ("embeddings, 1 text/request", "embeddings", 1, 1),
    ("embeddings, 1 text/request", "embeddings", 1, 8),
    ("embeddings, 16 texts/request", "embeddings", 16, 1),
    ("embeddings, 16 texts/request", "embeddings", 16, 4),
    ("images, 1/request", "image", 1, 1),
    ("images, 1/request", "image", 1, 4),
)


def bench(port: int, kind: str, items: int, concurrency: int, duration: float) -> dict[str, Any]:
    extra = [a for p in PHOTOS for a in ("--image", p)] if kind == "image" else ["--items", str(items)]
    out = subprocess.run(
        inferno(
            "bench",
            f"http://{HOST}:{port}",
            "--kind",
            kind,
            *extra,
            "-c",
            str(concurrency),
            "-d",
            str(duration),
            "--output",
            "json",
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=duration + 120,
        check=True,
    ).stdout
    return dict(json.loads(out)["summary"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="inferno-kinds-") as tmp, procs(Path(tmp)) as p:
        port, ops = free_port(), free_port()
        p.start("proxy", proxy_cmd(port, ops, None, "--log-level", "WARNING"))
        wait_port(ops)
        p.start(
            "backend",
            inferno(
                "backend",
                "--listen-addr",
                f"{HOST}:{free_port()}",
                "--ops-addr",
                f"{HOST}:{free_port()}",
                "--discovery-lb",
                f"{HOST}:{ops}",
                "--node-id",
                "media-1",
                "--engine",
                "minilm,efficientnet-lite0",
                "--onnx-threads",
                str(args.threads),
                "--log-level",
                "WARNING",
            ),
        )
        wait_healthy(ops, 1)
        bench(port, "embeddings", 16, 2, 2.0)  # warm-up
        bench(port, "image", 1, 2, 2.0)
        for label, kind, items, concurrency in CELLS:
            runs = [bench(port, kind, items, concurrency, args.duration) for _ in range(args.repeats)]
            row = {
                "cell": label,
                "kind": kind,
                "items": items,
                "concurrency": concurrency,
                "items_per_s": median([r["items_per_s"] for r in runs]),
                "rps": median([r["throughput_rps"] for r in runs]),
                "p50_ms": median([r["latency_s"]["p50"] * 1000 for r in runs]),
                "p99_ms": median([r["latency_s"]["p99"] * 1000 for r in runs]),
                "failed": sum(r["failed"] for r in runs),
                "runs_items_per_s": [round(r["items_per_s"], 1) for r in runs],
            }
            rows.append(row)
            print(
                f"{label:30} c={concurrency}: {row['items_per_s']:.1f} items/s {row['runs_items_per_s']}",
                flush=True,
            )
    write_result(
        "model_kinds",
        {"machine": machine(), "args": vars(args), "rows": rows, "command": " ".join(sys.argv)},
        render(rows, args),
    )


def render(rows: list[dict[str, Any]], args: Any) -> str:
    info = machine()
    lines = [
        "## model_kinds",
        "",
        f"One backend serving `minilm` (all-MiniLM-L6-v2 int8) and `efficientnet-lite0` behind the proxy, "
        f"{args.threads} ONNX Runtime threads each, {info['cores']} cores ({info['cpu']}); closed loop through "
        f"the proxy, {args.duration:g} s per run, median of {args.repeats} runs. Images are the committed test "
        "photos (451x300 to 640x427 JPEGs), decoded, resized and classified on the backend.",
        "",
        "| workload | concurrency | items/s (sentences or images) | req/s | p50 ms | p99 ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['concurrency']} | {r['items_per_s']:.1f} | {r['rps']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['failed']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
