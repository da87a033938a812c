"""model_throughput: the real model through the proxy, 1 and 2 backends, rising concurrency.

Streams chat completions (so tokens and time to first token are counted) with
``inferno bench`` in closed loop for ``--duration`` seconds per cell, and
reports aggregate tokens/s, latency and TTFT, marking where throughput stops
growing (saturation).

    python benchmarks/model_throughput.py [--duration 12] [--levels 1,2,4,8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    HOST,
    RESULTS,
    inferno,
    machine,
    procs,
    proxy_cmd,
    wait_healthy,
    wait_port,
    write_result,
)
from inferno.orchestrators.processes import free_port


def run_cell(port: int, concurrency: int, duration: float, max_tokens: int) -> dict[str, Any]:
    out = subprocess.run(
        inferno(
            "bench",
            f"http://{HOST}:{port}",
            "--kind",
            "chat-stream",
            "-c",
            str(concurrency),
            "-d",
            str(duration),
            "--max-tokens",
            str(max_tokens),
            "--output",
            "json",
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=duration + 180,
        check=True,
    ).stdout
    s = json.loads(out)["summary"]
    return {
        "concurrency": concurrency,
        "rps": s["throughput_rps"],
        "tokens_per_s": s.get("stream", {}).get("tokens_per_s", 0.0),
        "p50_s": s["latency_s"]["p50"],
        "p99_s": s["latency_s"]["p99"],
        "ttft_p50_s": s.get("stream", {}).get("ttft_s", {}).get("p50", float("nan")),
        "failed": s["failed"],
        "served": {k: v["count"] for k, v in s["backends"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    rows: list[dict[str, Any]] = []
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="inferno-model-") as tmp:
        for n_backends in (1, 2):
            with procs(Path(tmp) / f"b{n_backends}") as p:
                port, ops = free_port(), free_port()
                p.start("proxy", proxy_cmd(port, ops, None, "--log-level", "WARNING"))
                wait_port(ops)
                for i in range(n_backends):
                    p.start(
                        f"backend{i}",
                        inferno(
                            "backend",
                            "--listen-addr",
                            f"{HOST}:{free_port()}",
                            "--ops-addr",
                            f"{HOST}:{free_port()}",
                            "--discovery-lb",
                            f"{HOST}:{ops}",
                            "--node-id",
                            f"model-{i + 1}",
                            "--threads",
                            str(max(1, cores // n_backends)),
                            "--n-parallel",
                            "4",
                            "--log-level",
                            "WARNING",
                        ),
                    )
                wait_healthy(ops, n_backends)
                run_cell(port, 1, 3.0, args.max_tokens)  # warm-up
                for level in levels:
                    row = {"backends": n_backends, **run_cell(port, level, args.duration, args.max_tokens)}
                    rows.append(row)
                    print(
                        f"backends={n_backends} c={level:<2} {row['tokens_per_s']:7.1f} tok/s "
                        f"p50 {row['p50_s']:.2f}s ttft {row['ttft_p50_s'] * 1000:.0f} ms",
                        flush=True,
                    )
    write_result(
        "model_throughput",
        {"machine": machine(), "args": vars(args), "rows": rows, "command": " ".join(sys.argv)},
        render(rows, args),
    )


def render(rows: list[dict[str, Any]], args: Any) -> str:
    info = machine()
    lines = [
        "## model_throughput",
        "",
        f"SmolLM2-135M-Instruct Q4_1 on llama.cpp (xllamacpp), {info['cores']} cores ({info['cpu']}). "
        f"Streaming chat, max_tokens {args.max_tokens}, closed loop, {args.duration:g} s per cell; "
        "each backend gets cores/backends threads and 4 slots.",
        "",
        "| backends | concurrency | tokens/s | req/s | p50 s | p99 s | TTFT p50 ms | failed |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['backends']} | {r['concurrency']} | {r['tokens_per_s']:.1f} | {r['rps']:.2f} | "
            f"{r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['ttft_p50_s'] * 1000:.0f} | {r['failed']} |"
        )
    for n in sorted({r["backends"] for r in rows}):
        series = [r for r in rows if r["backends"] == n]
        knee = series[-1]
        for here, nxt in itertools.pairwise(series):
            if nxt["tokens_per_s"] < here["tokens_per_s"] * 1.10:
                knee = here
                break
        peak = max(r["tokens_per_s"] for r in series)
        lines.append("")
        lines.append(
            f"{n} backend(s): saturates at concurrency {knee['concurrency']} (~{knee['tokens_per_s']:.0f} tokens/s; "
            f"peak {peak:.0f}): more concurrency adds under 10 % throughput and only queueing latency."
        )
    return "\n".join(lines) + "\n"


def rerender() -> None:
    """Rewrite the table from the saved JSON (no new measurement)."""
    data = json.loads((RESULTS / "model_throughput.json").read_text())
    args = argparse.Namespace(**data["args"])
    (RESULTS / "model_throughput.md").write_text(render(data["rows"], args))


if __name__ == "__main__":
    if sys.argv[1:] == ["--rerender"]:
        rerender()
    else:
        main()
