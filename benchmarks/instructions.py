"""instructions: the proxy's user-space instructions per request, counted by callgrind.

CPU time per request moves with whatever else the two cores run; an instruction
count does not (the same binary, inputs and environment give the same total). So
this is how a change to the hot path is judged here, beside the wall-clock tables
of lb_overhead and peers. For each variant (this tree compiled, this tree pure
Python, and with ``--baseline REV`` that revision) the proxy runs under
``valgrind --tool=callgrind`` in front of two fake backends; a warm-up of 300
requests, counters zeroed, then ``--requests`` chat requests (whole, then
streamed, ``max_tokens`` 4) from 16 keep-alive connections; the dump's total
divided by the requests. Syscalls per request come from ``strace -c`` on the same
load without valgrind. Kernel time is not in the instruction count.

    python benchmarks/instructions.py [--requests 1000] [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    HOST,
    LOAD_CORE,
    ROOT,
    Procs,
    checkout,
    fake_backend,
    machine,
    procs,
    proxy_cmd,
    wait_port,
    write_result,
)
from inferno import native
from inferno.orchestrators.processes import free_port

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


async def _load(port: int, count: int, conns: int, stream: bool) -> int:
    """``count`` requests over ``conns`` keep-alive connections; returns the 200s."""
    body = json.dumps({**CHAT, "stream": True} if stream else CHAT).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    request = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    left = count
    ok = 0

    async def lane() -> None:
        nonlocal left, ok
        reader, writer = await asyncio.open_connection(HOST, port)
        while left > 0:
            left -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            ok += b" 200 " in head.split(b"\r\n", 1)[0]
            if b"chunked" in head.lower():
                while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) > 0:
                    await reader.readexactly(size + 2)
                await reader.readexactly(2)
            else:
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
        writer.close()

    await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(conns))), 900)
    return ok


def load(port: int, count: int, stream: bool) -> None:
    ok = asyncio.run(_load(port, count, 16, stream))
    if ok != count:
        raise RuntimeError(f"{count - ok} of {count} requests failed")


def start_proxy(p: Procs, tmp: Path, tree: Path, pure: bool, wrap: list[str]) -> tuple[int, int]:
    port = free_port()
    cmd = proxy_cmd(port, free_port(), BACKENDS, "--admission-max-in-flight-per-backend", "4096")
    cmd += ["--log-level", "WARNING"]
    cmd = [*wrap, cmd[0], "-P", *cmd[1:]]
    env = {"PYTHONPATH": str(tree), "INFERNO_PURE_PYTHON": "1" if pure else "0"}
    proc = p.start(f"proxy-{len(p.started)}", cmd, env=env)
    wait_port(port, 240)
    return port, proc.pid


BACKENDS: list[int] = []


def instructions(p: Procs, tmp: Path, tree: Path, pure: bool, stream: bool, count: int) -> float:
    out = tmp / f"cg-{len(p.started)}"
    port, pid = start_proxy(
        p, tmp, tree, pure, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    )
    load(port, 300, stream)
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, timeout=60, check=False)
    load(port, count, stream)
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, timeout=120, check=False)
    time.sleep(1)
    dump = max(glob.glob(f"{out}*"), key=os.path.getmtime)
    text = Path(dump).read_text(errors="replace")
    match = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert match, dump
    p.stop(p.started[-1])
    return int(match.group(1)) / count


def syscalls(p: Procs, tmp: Path, tree: Path, pure: bool, stream: bool, count: int) -> dict[str, float]:
    port, pid = start_proxy(p, tmp, tree, pure, [])
    load(port, 300, stream)
    trace = tmp / f"strace-{len(p.started)}.txt"
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-o", str(trace), "-p", str(pid)], stderr=subprocess.DEVNULL
    )
    time.sleep(1)
    load(port, count, stream)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    p.stop(p.started[-1])
    found = re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", trace.read_text(), re.M)
    return {
        m.group(2): int(m.group(1)) / count for m in found if m.group(2) in ("read", "write", "epoll_pwait")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--baseline", default=None, help="also count the proxy as of this git revision")
    args = parser.parse_args()
    missing = [t for t in ("valgrind", "callgrind_control", "strace") if not shutil.which(t)]
    if missing:
        sys.exit(f"missing tools: {missing}; run `make bench-deps`")
    variants: list[tuple[str, Path, bool]] = []
    with tempfile.TemporaryDirectory(prefix="inferno-instr-") as name, procs(Path(name) / "logs") as p:
        tmp = Path(name)
        if native.fresh():
            variants.append(("compiled", ROOT, False))
        variants.append(("pure Python", ROOT, True))
        if args.baseline:
            variants.append((f"at {args.baseline}", checkout(args.baseline, tmp / "baseline"), True))
        for i in range(2):
            port = free_port()
            p.start(f"backend{i}", fake_backend(port, free_port(), 0.0, f"fake-{i + 1}"), core=LOAD_CORE)
            BACKENDS.append(port)
        for port in BACKENDS:
            wait_port(port)
        rows: list[dict[str, Any]] = []
        for label, tree, pure in variants:
            for stream in (False, True):
                row = {
                    "variant": label,
                    "mode": "streamed" if stream else "chat",
                    "k_instructions": instructions(p, tmp, tree, pure, stream, args.requests) / 1000,
                    "syscalls": syscalls(p, tmp, tree, pure, stream, args.requests),
                }
                rows.append(row)
                print(row, flush=True)
    write_result("instructions", {"machine": machine(), "args": vars(args), "rows": rows}, render(rows, args))


def render(rows: list[dict[str, Any]], args: Any) -> str:
    lines = [
        "## instructions",
        "",
        f"callgrind, the proxy's user-space instructions per request, {args.requests} requests after a "
        "300-request warm-up, 16 keep-alive connections, two fake backends at 0 ms, `max_tokens` 4; "
        "syscalls per request from `strace -c` on the same load (`python benchmarks/instructions.py`).",
        "",
        "| proxy | request | k instructions / request | vs pure Python | read | write | epoll_wait |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    pure = {r["mode"]: r["k_instructions"] for r in rows if r["variant"] == "pure Python"}
    for r in rows:
        s = r["syscalls"]
        lines.append(
            f"| {r['variant']} | {r['mode']} | {r['k_instructions']:.1f} | "
            f"{r['k_instructions'] / pure[r['mode']]:.2f} | {s.get('read', 0):.2f} | {s.get('write', 0):.2f} | "
            f"{s.get('epoll_pwait', 0):.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
