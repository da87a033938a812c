"""baseline_overhead: the proxy's CPU per request now and at a git revision, alternated.

Two proxies in front of the same two fake backends, this tree's and the one at
``--baseline REV`` (its ``inferno`` package through PYTHONPATH), pinned to the same
core and loaded one at a time by wrk in alternating order (ABBA...), so drift of
this machine's speed hits both alike. Two workloads: ``/inference`` answered whole,
and the same request streamed (16 chunks and ``[DONE]``). Reports, per workload,
the median proxy CPU µs per request of each, the spread of the rounds, and the
ratio now / before.

    python benchmarks/baseline_overhead.py --baseline REV [--rounds 6] [--duration 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    LOAD_CORE,
    PROXY_CORE,
    checkout,
    cpu_seconds,
    fake_backend,
    machine,
    median,
    procs,
    proxy_cmd,
    wait_port,
    write_result,
    wrk,
    wrk_script,
)
from inferno.orchestrators.processes import free_port

WORKLOADS = {
    "whole": '{"prompt":"hello there","max_tokens":16}',
    "streamed": '{"prompt":"hello there","max_tokens":16,"stream":true}',
}
TARGETS = ("now", "before")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    runs: dict[str, dict[str, list[float]]] = {w: {t: [] for t in TARGETS} for w in WORKLOADS}
    with tempfile.TemporaryDirectory(prefix="inferno-baseline-") as name:
        tmp = Path(name)
        baseline = checkout(args.baseline, tmp / "baseline")
        scripts = {
            workload: wrk_script(tmp / f"{workload}.lua", body) for workload, body in WORKLOADS.items()
        }
        with procs(tmp / "logs") as p:
            backends = [free_port(), free_port()]
            for i, port in enumerate(backends):
                p.start(f"backend{i}", fake_backend(port, free_port(), 0.0, f"fake-{i + 1}"), core=LOAD_CORE)
            for port in backends:
                wait_port(port)
            proxies: dict[str, tuple[int, int]] = {}
            for target in TARGETS:
                port = free_port()
                cmd = proxy_cmd(port, free_port(), backends, "--admission-max-in-flight-per-backend", "4096")
                env = {"PYTHONPATH": str(baseline)} if target == "before" else None
                proc = p.start(f"proxy-{target}", cmd, core=PROXY_CORE, env=env)
                proxies[target] = (port, proc.pid)
            for port, _ in proxies.values():
                wait_port(port)
            time.sleep(1.0)
            for rnd in range(args.rounds):
                for workload, script in scripts.items():
                    for target in TARGETS if rnd % 2 == 0 else TARGETS[::-1]:
                        port, pid = proxies[target]
                        wrk(port, script, 1.0, args.concurrency)  # warm-up
                        before = cpu_seconds([pid])
                        requests = wrk(port, script, args.duration, args.concurrency)
                        runs[workload][target].append((cpu_seconds([pid]) - before) / requests * 1e6)
                        print(
                            f"round {rnd + 1} {workload:8} {target:6}: {runs[workload][target][-1]:.1f} us/req",
                            flush=True,
                        )
    write_result(
        "baseline_overhead",
        {"machine": machine(), "args": vars(args), "runs": runs, "command": " ".join(sys.argv)},
        render(runs, args),
    )


def render(runs: dict[str, dict[str, list[float]]], args: Any) -> str:
    info = machine()
    lines = [
        "## baseline_overhead",
        "",
        f"{info['cpu']}, {info['cores']} cores. Proxy pinned to core {PROXY_CORE}, wrk and two fake backends to "
        f"core {LOAD_CORE}; `/inference` with 16 tokens, whole and streamed; concurrency {args.concurrency}, "
        f"{args.duration:g} s per run, {args.rounds} rounds alternating which proxy goes first; "
        f"this tree against `{args.baseline}`.",
        "",
        "| workload | proxy | CPU µs/request (median) | spread (min-max) | runs |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    ratios = []
    for workload, by_target in runs.items():
        for target, values in by_target.items():
            lines.append(
                f"| {workload} | {target} | {median(values):.1f} | {min(values):.0f}-{max(values):.0f} | "
                f"{', '.join(f'{v:.0f}' for v in values)} |"
            )
        ratios.append(f"{workload} x{median(by_target['now']) / median(by_target['before']):.3f}")
    lines += ["", "Now / before, CPU per request: " + ", ".join(ratios) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
