"""lb_overhead: the same two fake-engine backends, direct and behind Inferno, nginx, HAProxy.

For each target, concurrency (16, 64) and backend delay (0, 20 ms), wrk runs
``--repeats`` times; the table shows medians of requests/s, p50/p99 latency and
the proxy process's CPU time per request (user + system, from /proc). The proxy
is pinned to one core, wrk and the backends to the other. Then an open-loop run
at a fixed light rate measures the latency each proxy adds at p50.

With ``--baseline REV`` the proxy as it was at git revision REV runs too, as
target ``inferno-before``, in the same run: the "now vs before" table compares
their CPU per request cell by cell.

    python benchmarks/lb_overhead.py [--duration 5] [--repeats 3] [--quick] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    HOST,
    LOAD_CORE,
    PROXY_CORE,
    Procs,
    checkout,
    fake_backend,
    inferno,
    machine,
    median,
    procs,
    proxy_cmd,
    wait_port,
    write_result,
    wrk_output,
)
from inferno.orchestrators.processes import free_port

BODY = '{"prompt":"hello there","max_tokens":16}'
WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""


def nginx_conf(tmp: Path, port: int, backends: list[int]) -> Path:
    servers = "".join(f"    server {HOST}:{b};\n" for b in backends)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log {tmp}/nginx-access.log combined buffer=64k flush=1s;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream backends {{
{servers}    keepalive 64;
  }}
  server {{
    listen {HOST}:{port} reuseport;
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    return conf


def haproxy_conf(tmp: Path, port: int, backends: list[int]) -> Path:
    servers = "".join(f"  server b{i} {HOST}:{b}\n" for i, b in enumerate(backends))
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind {HOST}:{port}
  default_backend be
backend be
  balance roundrobin
{servers}""")
    return conf


def start_target(
    name: str, p: Procs, tmp: Path, backends: list[int], baseline: Path | None = None
) -> tuple[int, list[int]]:
    """Returns (port, pids whose CPU counts as the proxy's)."""
    if name == "direct":
        return backends[0], []
    port = free_port()
    if name in ("inferno", "inferno-before"):
        cmd = proxy_cmd(port, free_port(), backends, "--admission-max-in-flight-per-backend", "4096")
        # The older package shadows the installed one through PYTHONPATH.
        env = {"PYTHONPATH": str(baseline)} if name == "inferno-before" and baseline else None
        proc = p.start(f"{name}-proxy", cmd, core=PROXY_CORE, env=env)
    elif name == "nginx":
        proc = p.start(
            "nginx", ["nginx", "-c", str(nginx_conf(tmp, port, backends)), "-p", str(tmp)], core=PROXY_CORE
        )
    else:
        proc = p.start(
            "haproxy", ["haproxy", "-db", "-f", str(haproxy_conf(tmp, port, backends))], core=PROXY_CORE
        )
    wait_port(port)
    time.sleep(0.5)
    return port, [proc.pid]


def proxy_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for q in [proc, *proc.children(recursive=True)]:
                times = q.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        lat[pct] = float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "requests": total,
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sock.group(1) if sock else "",
    }


def open_loop_p50(port: int, rate: float, duration: float) -> float:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CORE,
            *inferno(
                "bench",
                f"http://{HOST}:{port}",
                "--rate",
                str(rate),
                "-d",
                str(duration),
                "--max-tokens",
                "16",
                "--output",
                "json",
                "--quiet",
            ),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    summary = json.loads(out)["summary"]
    if summary["failed"]:
        raise RuntimeError(f"open-loop run had failures: {summary['errors']}")
    return float(summary["latency_s"]["p50"]) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop rate for the latency check")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 3 s cells (a smoke run)")
    parser.add_argument("--baseline", default=None, help="also run the proxy as of this git revision")
    parser.add_argument("--only", default=None, help="comma-separated targets to run (e.g. direct,inferno)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats = 3.0, 1
    missing = [tool for tool in ("wrk", "nginx", "haproxy", "taskset") if not shutil.which(tool)]
    if missing:
        sys.exit(f"missing tools: {missing}; run `make bench-deps` (apt-get install wrk nginx haproxy)")
    targets = ["direct", "inferno", "nginx", "haproxy"]
    cells: list[dict[str, Any]] = []
    added: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="inferno-bench-") as tmpname:
        tmp = Path(tmpname)
        baseline = None
        if args.baseline:
            baseline = checkout(args.baseline, tmp / "baseline")
            targets.insert(2, "inferno-before")
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        if args.only:
            targets = [t for t in targets if t in args.only.split(",")]
        for delay in (0.0, 20.0):
            with procs(tmp / f"logs-{int(delay)}") as p:
                backends = [free_port(), free_port()]
                for i, port in enumerate(backends):
                    p.start(
                        f"backend{i}", fake_backend(port, free_port(), delay, f"fake-{i + 1}"), core=LOAD_CORE
                    )
                for port in backends:
                    wait_port(port)
                for target in targets:
                    proc_count = len(p.started)
                    port, pids = start_target(target, p, tmp, backends, baseline)
                    for concurrency in (16, 64):
                        wrk_output(port, script, 1.0, concurrency)  # warm-up
                        runs = []
                        for _ in range(args.repeats):
                            before = proxy_cpu(pids)
                            result = parse_wrk(
                                wrk_output(port, script, args.duration, concurrency, latency=True)
                            )
                            used = proxy_cpu(pids) - before
                            result["cpu_us_per_request"] = (
                                used / result["requests"] * 1e6 if pids else float("nan")
                            )
                            runs.append(result)
                        cell = {"target": target, "concurrency": concurrency, "delay_ms": delay, "runs": runs}
                        for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request"):
                            cell[key] = median([r[key] for r in runs])
                        cell["errors"] = sum(r["non_2xx"] for r in runs)
                        cells.append(cell)
                        print(
                            f"{target:14} c={concurrency:<3} delay={delay:>4}ms  {cell['rps']:9.0f} req/s  "
                            f"p50 {cell['p50_ms']:.2f} ms  p99 {cell['p99_ms']:.2f} ms  "
                            f"cpu {cell['cpu_us_per_request']:.1f} us/req",
                            flush=True,
                        )
                    if delay == 0.0:
                        p50s = [
                            open_loop_p50(port, args.rate, max(3.0, args.duration))
                            for _ in range(args.repeats)
                        ]
                        added[target] = median(p50s)
                    for proc in p.started[proc_count:]:
                        p.stop(proc)
    direct_p50 = added.get("direct", float("nan"))
    if args.only:  # a partial run: keep the full run's table, write this one aside
        print(render(cells, {k: v - direct_p50 for k, v in added.items() if k != "direct"}, added, args))
        return
    markdown = render(cells, {k: v - direct_p50 for k, v in added.items() if k != "direct"}, added, args)
    write_result(
        "lb_overhead",
        {
            "machine": machine(),
            "args": vars(args),
            "cells": cells,
            "open_loop_p50_ms": added,
            "command": " ".join(sys.argv),
        },
        markdown,
    )


def same_cell(cells: list[dict[str, Any]], target: str, like: dict[str, Any]) -> dict[str, Any]:
    """``target``'s cell with the same concurrency and backend delay as ``like``."""
    return next(
        c
        for c in cells
        if c["target"] == target
        and c["concurrency"] == like["concurrency"]
        and c["delay_ms"] == like["delay_ms"]
    )


def render(cells: list[dict[str, Any]], added_ms: dict[str, float], p50s: dict[str, float], args: Any) -> str:
    info = machine()
    lines = [
        "## lb_overhead",
        "",
        f"{info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, Python {info['python']}; "
        f"{info['nginx']}; {info['haproxy']}; {info['wrk']}. {info['date']}.",
        f"wrk -t1, {args.duration:g} s per cell, median of {args.repeats}; proxy pinned to core {PROXY_CORE}, "
        f"wrk and both fake backends to core {LOAD_CORE}. CPU = the proxy process's user+system time / requests.",
        "",
        "| target | conc. | backend delay | req/s | p50 ms | p99 ms | proxy CPU µs/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in cells:
        cpu = "-" if c["target"] == "direct" else f"{c['cpu_us_per_request']:.1f}"
        lines.append(
            f"| {c['target']} | {c['concurrency']} | {c['delay_ms']:g} ms | {c['rps']:.0f} | "
            f"{c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {cpu} |"
        )
    has_nginx = any(c["target"] == "nginx" for c in cells)
    if has_nginx:
        lines += [
            "",
            "Inferno relative to nginx (same cell):",
            "",
            "| conc. | delay | req/s ratio | CPU µs ratio |",
            "| ---: | ---: | ---: | ---: |",
        ]
    for c in cells:
        if c["target"] != "inferno" or not has_nginx:
            continue
        ng = same_cell(cells, "nginx", c)
        lines.append(
            f"| {c['concurrency']} | {c['delay_ms']:g} ms | {c['rps'] / ng['rps']:.2f} | "
            f"{c['cpu_us_per_request'] / ng['cpu_us_per_request']:.2f} |"
        )
    before = [c for c in cells if c["target"] == "inferno-before"]
    if before:
        lines += [
            "",
            f"Inferno now relative to Inferno at `{args.baseline}` (same run, same cell; "
            "CPU ratio > 1 means the proxy costs more now):",
            "",
            "| conc. | delay | CPU µs before | CPU µs now | CPU ratio | req/s ratio |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for old in before:
            new = same_cell(cells, "inferno", old)
            lines.append(
                f"| {old['concurrency']} | {old['delay_ms']:g} ms | {old['cpu_us_per_request']:.1f} | "
                f"{new['cpu_us_per_request']:.1f} | "
                f"{new['cpu_us_per_request'] / old['cpu_us_per_request']:.3f} | {new['rps'] / old['rps']:.3f} |"
            )
    lines += [
        "",
        f"Open loop at {args.rate:g} req/s, 0 ms backends (`inferno bench --rate`), p50:",
        "",
        "| target | p50 ms | added over direct |",
        "| --- | ---: | ---: |",
    ]
    for target, p50 in p50s.items():
        extra = "-" if target == "direct" else f"{added_ms[target]:+.3f} ms"
        lines.append(f"| {target} | {p50:.3f} | {extra} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
