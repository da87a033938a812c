"""soak: steady load for a long time, sampling RSS; the slope after warm-up must be ~0.

Starts a proxy and two fake backends, drives them with ``inferno bench`` in open
loop, samples the RSS of every process every ``--interval`` seconds, drops the
warm-up, and fits a least-squares line: growth per hour. Writes a table and an
HTML page with the RSS plot.

    python benchmarks/soak.py [--duration 600] [--rate 300]      # 10 min default; 1 h: --duration 3600
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    HOST,
    RESULTS,
    fake_backend,
    inferno,
    machine,
    procs,
    proxy_cmd,
    rss_bytes,
    wait_port,
    write_result,
)
from inferno.bench.report import _svg_lines
from inferno.orchestrators.processes import free_port


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, bytes), in MiB per hour."""
    n = len(points)
    if n < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return (cov / var) * 3600 / 2**20 if var else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--warmup-fraction", type=float, default=0.2)
    args = parser.parse_args()
    samples: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="inferno-soak-") as tmp, procs(Path(tmp)) as p:
        backends = [free_port(), free_port()]
        watched: dict[str, int] = {}
        for i, port in enumerate(backends):
            watched[f"backend-{i + 1}"] = p.start(
                f"b{i}", fake_backend(port, free_port(), 5.0, f"soak-{i + 1}")
            ).pid
            wait_port(port)
        port = free_port()
        watched["proxy"] = p.start("proxy", proxy_cmd(port, free_port(), backends)).pid
        wait_port(port)
        load = subprocess.Popen(
            inferno(
                "bench",
                f"http://{HOST}:{port}",
                "--rate",
                str(args.rate),
                "-d",
                str(args.duration),
                "--max-tokens",
                "8",
                "--output",
                "json",
                "--output-file",
                f"{tmp}/bench.json",
                "--quiet",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        try:
            while time.monotonic() - started < args.duration and load.poll() is None:
                now = time.monotonic() - started
                for name, pid in watched.items():
                    samples.setdefault(name, []).append((now, float(rss_bytes(pid))))
                time.sleep(args.interval)
        finally:
            if load.poll() is None:
                load.wait(timeout=args.duration + 120)
        bench_summary = Path(f"{tmp}/bench.json").read_text() if Path(f"{tmp}/bench.json").exists() else "{}"
    warmup = args.duration * args.warmup_fraction
    result: dict[str, Any] = {}
    for name, points in samples.items():
        steady = [(t, v) for t, v in points if t >= warmup]
        result[name] = {
            "rss_start_mib": points[0][1] / 2**20,
            "rss_end_mib": points[-1][1] / 2**20,
            "slope_mib_per_hour": slope_per_hour(steady),
        }
    import json

    summary = json.loads(bench_summary).get("summary", {})
    write_result(
        "soak",
        {
            "machine": machine(),
            "args": vars(args),
            "processes": result,
            "samples": samples,
            "load": summary,
            "command": " ".join(sys.argv),
        },
        render(result, summary, args),
    )
    xs = [t for t, _ in samples["proxy"]]
    page = _svg_lines(
        "RSS over time (MiB)", xs, {name: [v / 2**20 for _, v in pts] for name, pts in samples.items()}, "MiB"
    )
    (RESULTS / "soak.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>soak</title>"
        f"<body style='max-width:720px;font:14px sans-serif'>"
        f"<h1>inferno soak</h1><pre>{render(result, summary, args)}</pre>{page}</body>"
    )


def render(result: dict[str, Any], load: dict[str, Any], args: Any) -> str:
    lines = [
        "## soak",
        "",
        f"{args.duration:g} s at {args.rate:g} req/s open loop (fake backends, 5 ms latency); RSS sampled every "
        f"{args.interval:g} s; slope fitted after the first {args.warmup_fraction:.0%} (warm-up). "
        f"Requests: {load.get('requests', '?')}, failed: {load.get('failed', '?')}. Plot: results/soak.html.",
        "",
        "| process | RSS start MiB | RSS end MiB | growth after warm-up MiB/hour |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, r in result.items():
        lines.append(
            f"| {name} | {r['rss_start_mib']:.1f} | {r['rss_end_mib']:.1f} | {r['slope_mib_per_hour']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
