"""dashboard_overhead: the proxy's CPU per request with a dashboard open and with none.

lb_overhead's measurement (wrk on ``/inference`` through the proxy, proxy CPU per
request from /proc) on one proxy in front of two fake backends, in rounds that
alternate (ABBA...) between no dashboard and one open dashboard: the page loaded
once and its live feed (``/dashboard/events``) read for the whole run by a curl
pinned to the load core, at the default 1 s interval (``--interval``). Reports the
median of each and their ratio.

    python benchmarks/dashboard_overhead.py [--rounds 8] [--duration 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    HOST,
    LOAD_CORE,
    PROXY_CORE,
    cpu_seconds,
    fake_backend,
    machine,
    median,
    procs,
    proxy_cmd,
    wait_healthy,
    wait_port,
    write_result,
    wrk,
    wrk_script,
)
from inferno.orchestrators.processes import free_port

BODY = '{"prompt":"hello","max_tokens":16}'


def open_dashboard(ops_port: int, out: Path) -> subprocess.Popen[bytes]:
    """A dashboard: the page and its script once, then its live feed, written to ``out``
    until the reader is stopped (by its PID)."""
    token = os.environ["INFERNO_CLUSTER_TOKEN"]
    auth = {"Authorization": f"Bearer {token}"}
    for path in ("/dashboard", "/dashboard/static/dashboard.js", "/dashboard/api/state"):
        httpx.get(f"http://{HOST}:{ops_port}{path}", headers=auth, timeout=5).raise_for_status()
    feed = f"http://{HOST}:{ops_port}/dashboard/events"
    cmd = [
        "taskset",
        "-c",
        LOAD_CORE,
        "curl",
        "-sN",
        "-o",
        str(out),
        "-H",
        f"Authorization: Bearer {token}",
        feed,
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--interval", type=float, default=1.0, help="--dashboard-interval-s")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"closed": [], "open": []}
    feed_bytes: list[int] = []
    with tempfile.TemporaryDirectory(prefix="inferno-dash-") as name:
        tmp = Path(name)
        script = wrk_script(tmp / "post.lua", BODY)
        with procs(tmp / "logs") as p:
            backends = [free_port(), free_port()]
            for i, port in enumerate(backends):
                p.start(f"backend{i}", fake_backend(port, free_port(), 0.0, f"fake-{i + 1}"), core=LOAD_CORE)
            for port in backends:
                wait_port(port)
            port, ops_port = free_port(), free_port()
            cmd = proxy_cmd(
                port,
                ops_port,
                backends,
                "--admission-max-in-flight-per-backend",
                "4096",
                "--dashboard-interval-s",
                str(args.interval),
            )
            proxy = p.start("proxy", cmd, core=PROXY_CORE)
            wait_port(port)
            wait_healthy(ops_port, 2)
            time.sleep(1.0)
            for rnd in range(args.rounds):
                for label in ("closed", "open") if rnd % 2 == 0 else ("open", "closed"):
                    out = tmp / f"feed-{rnd}.out"
                    feed = open_dashboard(ops_port, out) if label == "open" else None
                    wrk(port, script, 1.0, args.concurrency)  # warm-up
                    before = cpu_seconds([proxy.pid])
                    requests = wrk(port, script, args.duration, args.concurrency)
                    runs[label].append((cpu_seconds([proxy.pid]) - before) / requests * 1e6)
                    if feed is not None:
                        feed.terminate()
                        feed.wait(timeout=10)
                        feed_bytes.append(out.stat().st_size)
                    print(f"round {rnd + 1} dashboard {label:6}: {runs[label][-1]:.1f} us/req", flush=True)
    # The feed really flowed: at least one message per interval of each open run.
    assert all(size > 1000 for size in feed_bytes), feed_bytes
    write_result(
        "dashboard_overhead",
        {
            "machine": machine(),
            "args": vars(args),
            "runs": runs,
            "feed_bytes": feed_bytes,
            "command": " ".join(sys.argv),
        },
        render(runs, feed_bytes, args),
    )


def render(runs: dict[str, list[float]], feed_bytes: list[int], args: Any) -> str:
    info = machine()
    closed, opened = median(runs["closed"]), median(runs["open"])
    per_run = median([float(b) for b in feed_bytes]) if feed_bytes else 0.0
    return "\n".join(
        [
            "## dashboard_overhead",
            "",
            f"{info['cpu']}, {info['cores']} cores. Proxy pinned to core {PROXY_CORE}, wrk, two fake backends "
            f"and the dashboard's feed reader (curl) to core {LOAD_CORE}; `/inference`, concurrency "
            f"{args.concurrency}, {args.duration:g} s per run, {args.rounds} rounds alternating which goes first, "
            f"dashboard interval {args.interval:g} s; medians.",
            "",
            "| dashboard | proxy CPU µs/request (median) | runs |",
            "| --- | ---: | --- |",
            f"| none open | {closed:.1f} | {', '.join(f'{v:.0f}' for v in runs['closed'])} |",
            f"| one open (page loaded, live feed read) | {opened:.1f} | "
            f"{', '.join(f'{v:.0f}' for v in runs['open'])} |",
            "",
            f"Open / none: x{opened / closed:.3f} CPU per request. The feed sent a median of "
            f"{per_run / 1024:.0f} KiB per run.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
