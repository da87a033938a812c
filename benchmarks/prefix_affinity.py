"""prefix_affinity vs round_robin: a shared-prefix chat workload on the real model.

Two llama.cpp backends (``--slots`` each, 4 by default). The workload has ``--groups`` long shared
prefixes (a different "document" as the system prompt of each group) and short
varying questions, sent as streaming chats in closed loop. With prefix affinity a
group's requests land on one backend, whose llama.cpp slots keep that prefix in
their prompt cache; with round robin every backend sees every group and keeps
re-reading prefixes. Both policies run in this one process, one after the other
and then again (ABAB), on the same backends restarted fresh; medians of the
repeats are reported with their ratio.

    python benchmarks/prefix_affinity.py [--duration 25] [--repeats 2] [--groups 4]
"""

from __future__ import annotations

import argparse
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

TOPICS = ("lighthouses", "volcanoes", "honeybees", "glaciers", "railways", "coral reefs", "comets", "bridges")
QUESTIONS = (
    "Summarise the text in one sentence.",
    "What is the main subject?",
    "Name one fact from the text.",
    "Is the text about nature or machines?",
    "Give the text a short title.",
    "What would a child ask about this?",
)


def document(topic: str) -> str:
    """A long, deterministic system prompt (~350 tokens) about one topic."""
    sentences = [
        f"This reference note is about {topic}.",
        f"Scholars have studied {topic} for centuries and written many careful reports about them.",
        f"The history of {topic} includes surprising discoveries, patient measurement and much debate.",
        f"Modern observers describe {topic} with instruments, photographs and long-running records.",
        f"People who live near {topic} tell stories that mix science, tradition and local memory.",
    ]
    body = " ".join(sentences[i % len(sentences)] + f" Paragraph {i} adds detail." for i in range(14))
    return f"You answer questions about the note below, briefly.\n\nNOTE:\n{body}"


def write_prompts(path: Path, groups: int) -> None:
    with path.open("w") as f:
        for question in QUESTIONS:
            for topic in TOPICS[:groups]:
                messages = [
                    {"role": "system", "content": document(topic)},
                    {"role": "user", "content": question},
                ]
                f.write(json.dumps({"messages": messages}) + "\n")


def run_policy(policy: str, prompts: Path, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    with procs(logdir / policy) as p:
        port, ops = free_port(), free_port()
        p.start("proxy", proxy_cmd(port, ops, None, "--policy", policy, "--log-level", "WARNING"))
        wait_port(ops)
        for i in range(2):
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
                    f"llama-{i + 1}",
                    "--threads",
                    "1",
                    "--n-parallel",
                    str(args.slots),
                    "--log-level",
                    "WARNING",
                ),
            )
        wait_healthy(ops, 2)
        out = subprocess.run(
            inferno(
                "bench",
                f"http://{HOST}:{port}",
                "--kind",
                "chat-stream",
                "--prompts",
                str(prompts),
                "-c",
                str(args.concurrency),
                "-d",
                str(args.duration),
                "--max-tokens",
                str(args.max_tokens),
                "--output",
                "json",
                "--quiet",
            ),
            capture_output=True,
            text=True,
            timeout=args.duration + 240,
            check=True,
        ).stdout
    s = json.loads(out)["summary"]
    stream = s.get("stream", {})
    return {
        "policy": policy,
        "requests": s["succeeded"],
        "failed": s["failed"],
        "rps": s["throughput_rps"],
        "tokens_per_s": stream.get("tokens_per_s", 0.0),
        "ttft_p50_ms": stream.get("ttft_s", {}).get("p50", float("nan")) * 1000,
        "ttft_p90_ms": stream.get("ttft_s", {}).get("p90", float("nan")) * 1000,
        "latency_p50_s": s["latency_s"]["p50"],
        "served": {k: v["count"] for k, v in s["backends"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=25.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--groups", type=int, default=4, choices=range(1, len(TOPICS) + 1))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--slots", type=int, default=4, help="llama.cpp slots per backend")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="inferno-affinity-") as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        write_prompts(prompts, args.groups)
        for repeat in range(args.repeats):
            for policy in ("round_robin", "prefix_affinity"):
                row = {"repeat": repeat + 1, **run_policy(policy, prompts, args, Path(tmp))}
                rows.append(row)
                print(
                    f"{policy:16} run {repeat + 1}: TTFT p50 {row['ttft_p50_ms']:.0f} ms, "
                    f"{row['tokens_per_s']:.1f} tok/s, {row['rps']:.2f} req/s, served {row['served']}",
                    flush=True,
                )
    write_result(
        "prefix_affinity",
        {"machine": machine(), "args": vars(args), "rows": rows, "command": " ".join(sys.argv)},
        render(rows, args),
    )


def render(rows: list[dict[str, Any]], args: Any) -> str:
    info = machine()
    med: dict[str, dict[str, float]] = {}
    for policy in ("round_robin", "prefix_affinity"):
        mine = [r for r in rows if r["policy"] == policy]
        med[policy] = {
            k: median([r[k] for r in mine]) for k in ("ttft_p50_ms", "ttft_p90_ms", "tokens_per_s", "rps")
        }
    rr, pa = med["round_robin"], med["prefix_affinity"]
    lines = [
        "## prefix_affinity",
        "",
        f"Two SmolLM2 backends (1 thread, {args.slots} llama.cpp slots each) on {info['cores']} cores ({info['cpu']}); "
        f"{args.groups} groups of streaming chats, each group sharing a ~350-token system prompt, "
        f"short varying questions, max_tokens {args.max_tokens}, closed loop at concurrency {args.concurrency}, "
        f"{args.duration:g} s per run, runs alternated ABAB ({args.repeats} each); medians.",
        "",
        "| policy | TTFT p50 ms | TTFT p90 ms | tokens/s | req/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for policy in ("round_robin", "prefix_affinity"):
        m = med[policy]
        lines.append(
            f"| `{policy}` | {m['ttft_p50_ms']:.0f} | {m['ttft_p90_ms']:.0f} | {m['tokens_per_s']:.1f} | {m['rps']:.2f} |"
        )
    lines += [
        "",
        f"prefix_affinity / round_robin: TTFT p50 x{pa['ttft_p50_ms'] / rr['ttft_p50_ms']:.2f}, "
        f"tokens/s x{pa['tokens_per_s'] / rr['tokens_per_s']:.2f}, req/s x{pa['rps'] / rr['rps']:.2f}.",
        "",
        "Every run: " + "; ".join(f"{r['policy']} #{r['repeat']} served {r['served']}" for r in rows) + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
