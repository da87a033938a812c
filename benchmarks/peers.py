"""peers: Inferno's proxy side by side with the LLM gateways that install from PyPI.

Gateways: Inferno (``inferno proxy``), smg (Shepherd Model Gateway), vllm-router,
sglang-router, LiteLLM, Envoy (stock, and with connect-failure/reset retries),
and nginx as the reference for what a lean C proxy costs; "direct" is one backend
without a gateway. The backends are two fake-engine ``inferno backend`` processes.
Each PyPI peer gets its own virtualenv under build/peers/ on first run.

The matrix: OpenAI chat (``POST /v1/chat/completions``, max_tokens 4) answered
whole ("chat") and streamed, concurrency 16 and 64, backend delay 0 and 20 ms;
wrk -t1 --latency on the load core, the gateway pinned to the proxy core; per
cell req/s, p50, p99, errors and the gateway's process tree's CPU per request;
a warm-up, then ``--repeats`` x ``--duration`` s, medians. A long-stream cell
(256 tokens at 1,000 tokens/s) gives CPU per relayed chunk. Then per gateway: a
backend SIGKILLed under load (failed requests, how long failures lasted), and the
start-up time to the first answered chat.

    python benchmarks/peers.py [--duration 4] [--repeats 3] [--quick]
        [--only inferno,smg] [--cells chat-0,streamed-0,long,kill,startup]
        [--inferno-pythonpath DIR | --inferno-rev REV]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peer_render
from benchmarks.common import (
    HOST,
    LOAD_CORE,
    ROOT,
    Procs,
    checkout,
    fake_backend,
    machine,
    median,
    procs,
    wait_port,
    write_result,
    wrk_output,
    wrk_script,
)
from benchmarks.lb_overhead import parse_wrk, proxy_cpu
from benchmarks.peer_targets import (
    CHAT,
    EXTRA_GATEWAYS,
    GATEWAYS,
    Gateway,
    Options,
    ensure_installed,
    inferno_tree_version,
    peer_version,
    spawn,
    verify,
    wait_ready,
)
from inferno.orchestrators.processes import free_port

PATH = "/v1/chat/completions"
MATRIX_CELLS = ["chat-0", "streamed-0", "chat-20", "streamed-20"]
ALL_CELLS = [*MATRIX_CELLS, "long", "kill", "startup"]
LONG_TOKENS = 256
LONG_RATE = 1000.0  # tokens/s of the long-stream backends
# LiteLLM answers ~100x fewer requests per CPU second: only the whole-answer cells, shorter.
LITELLM_CELLS = {"chat-0", "chat-20"}
KILL = {"duration_s": 5.0, "kill_at_s": 2.0, "concurrency": 16, "delay_ms": 20.0, "tokens_per_s": 1000.0}
KILL_MAX_TOKENS = 16


def body(stream: bool, max_tokens: int = 4) -> dict[str, Any]:
    return {**CHAT, "max_tokens": max_tokens, **({"stream": True} if stream else {})}


def socket_errors(text: str) -> int:
    return sum(int(n) for n in re.findall(r"\d+", text))


def start_backends(p: Procs, delay_ms: float, tokens_per_s: float = 1e9) -> list[Any]:
    """Two fake backends on the load core; returns their Popen objects (ports in .port)."""
    started = []
    for i in range(2):
        port = free_port()
        proc = p.start(
            f"backend-{delay_ms:g}ms-{tokens_per_s:g}-{i}-{port}",
            fake_backend(port, free_port(), delay_ms, f"fake-{i + 1}", tokens_per_s),
            core=LOAD_CORE,
            env={"PYTHONPATH": str(ROOT)},
        )
        proc.port = port  # type: ignore[attr-defined]
        started.append(proc)
    for proc in started:
        wait_port(proc.port)
    return started


def settle(pids: list[int], timeout_s: float = 15.0) -> None:
    """Bounded wait until the gateway is idle (< 10 % of a core), so no backlog of the last run is counted."""
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        before = proxy_cpu(pids)
        time.sleep(0.1)
        if proxy_cpu(pids) - before < 0.01:
            return


def measure(
    gw: Gateway, script: Path, seconds: float, concurrency: int, repeats: int, warmup_s: float = 1.0
) -> dict[str, Any]:
    """Warm-up, then ``repeats`` wrk runs, each from an idle gateway; medians and every run."""
    wrk_output(gw.port, script, warmup_s, concurrency, path=PATH, timeout_s=10)
    runs = []
    for _ in range(repeats):
        settle(gw.pids)
        before = proxy_cpu(gw.pids)
        result: dict[str, Any] = parse_wrk(
            wrk_output(gw.port, script, seconds, concurrency, latency=True, path=PATH, timeout_s=10)
        )
        used = proxy_cpu(gw.pids) - before
        result["cpu_us_per_request"] = (
            used / result["requests"] * 1e6 if gw.pids and result["requests"] else None
        )
        runs.append(result)
    cell: dict[str, Any] = {"runs": runs}
    for key in ("rps", "p50_ms", "p99_ms"):
        cell[key] = median([r[key] for r in runs])
    cpus = [r["cpu_us_per_request"] for r in runs if r["cpu_us_per_request"] is not None]
    cell["cpu_us_per_request"] = median(cpus) if cpus else None
    cell["errors"] = sum(r["non_2xx"] + socket_errors(r["socket_errors"]) for r in runs)
    return cell


def log_cell(cell: dict[str, Any]) -> None:
    cpu = cell.get("cpu_us_per_request")
    print(
        f"{cell['gateway']:14} {cell['cell']:12} c={cell['concurrency']:<3} {cell['rps']:9.0f} req/s  "
        f"p50 {cell['p50_ms']:.2f} ms  p99 {cell['p99_ms']:.2f} ms  "
        f"cpu {'-' if cpu is None else f'{cpu:.1f}'} us/req  errors {cell['errors']}",
        flush=True,
    )


def run_gateway_cells(
    name: str,
    p: Procs,
    tmp: Path,
    ports: list[int],
    opts: Options,
    cells: list[str],
    args: argparse.Namespace,
    scripts: dict[str, Path],
    out: dict[str, Any],
    chunks: float | None = None,
) -> None:
    """Start ``name`` on these backends, verify it, run ``cells`` at each concurrency, stop it."""
    count = len(p.started)
    gw = spawn(name, p, tmp, ports, opts)
    try:
        wait_ready(gw)
        check = verify(gw)
        out["verify"].setdefault(name, []).append(check)
        out["commands"].setdefault(name, gw.describe())
        for cell_name in cells:
            mode = "streamed" if cell_name.startswith("streamed") or cell_name == "long" else "chat"
            seconds, repeats, warmup = args.duration, args.repeats, min(1.0, args.duration)
            if name == "litellm":  # slow to answer: a longer warm-up, so the runs see its steady state
                seconds, warmup = args.litellm_duration, 3.0
            for concurrency in args.concurrency:
                cell = measure(gw, scripts[cell_name], seconds, concurrency, repeats, warmup)
                cell.update(gateway=name, cell=cell_name, concurrency=concurrency, verified=check[mode]["ok"])
                cell["duration_s"] = seconds
                if chunks and cell["cpu_us_per_request"] is not None:
                    cell["chunks_per_stream"] = chunks
                    cell["cpu_us_per_chunk"] = cell["cpu_us_per_request"] / chunks
                out["cells"].append(cell)
                log_cell(cell)
    except Exception as exc:  # one gateway failing must not lose the others' results
        print(f"!! {name}: {exc}", flush=True)
        out["failures"].append({"gateway": name, "cells": cells, "error": repr(exc)})
    finally:
        for proc in p.started[count:]:
            p.stop(proc)


def count_events(port: int, max_tokens: int) -> int:
    """The ``data:`` events of one stream straight from a backend (the chunks a gateway relays)."""
    with (
        httpx.Client(timeout=30, trust_env=False) as client,
        client.stream("POST", f"http://{HOST}:{port}{PATH}", json=body(True, max_tokens)) as resp,
    ):
        return sum(1 for line in resp.iter_lines() if line.startswith("data:"))


# -- kill under load ----------------------------------------------------------------------


async def load_with_kill(port: int, kill: Any, cfg: dict[str, float]) -> dict[str, Any]:
    """Closed loop at ``concurrency`` (half the lanes streamed), ``kill()`` at ``kill_at_s``."""
    url = f"http://{HOST}:{port}{PATH}"
    conc = int(cfg["concurrency"])
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    records: list[tuple[float, float, bool, bool, str]] = []
    start = time.monotonic()
    end = start + cfg["duration_s"]
    killed_at: list[float] = []

    async def lane(client: httpx.AsyncClient, streamed: bool) -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            ok, why = False, ""
            try:
                if streamed:
                    async with client.stream("POST", url, json=body(True, KILL_MAX_TOKENS)) as resp:
                        last = ""
                        async for line in resp.aiter_lines():
                            if line.startswith("data:"):
                                last = line
                        ok = resp.status_code == 200 and last.strip() == "data: [DONE]"
                        why = "" if ok else f"status {resp.status_code}, last event {last[:60]!r}"
                else:
                    resp = await client.post(url, json=body(False, KILL_MAX_TOKENS))
                    ok = resp.status_code == 200 and '"choices"' in resp.text
                    why = "" if ok else f"status {resp.status_code}"
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            records.append((t0 - start, time.monotonic() - start, streamed, ok, why))
            if not ok:
                await asyncio.sleep(0.005)  # a failing gateway must not turn the loop into a spin

    async def killer() -> None:
        await asyncio.sleep(cfg["kill_at_s"])
        killed_at.append(time.monotonic() - start)
        kill()

    async with httpx.AsyncClient(limits=limits, timeout=10, trust_env=False) as client:
        await asyncio.gather(killer(), *(lane(client, i % 2 == 1) for i in range(conc)))
    t_kill = killed_at[0]
    failed = [r for r in records if not r[3]]
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[r[4]] = reasons.get(r[4], 0) + 1
    after = [r for r in records if r[1] >= t_kill]
    return {
        "requests": len(records),
        "failed": len(failed),
        "failed_chat": sum(1 for r in failed if not r[2]),
        "failed_streamed": sum(1 for r in failed if r[2]),
        "requests_after_kill": len(after),
        "first_failure_s": min(r[1] for r in failed) - t_kill if failed else None,
        "last_failure_s": max(r[1] for r in failed) - t_kill if failed else None,
        "run_left_after_kill_s": cfg["duration_s"] - t_kill,
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
    }


def kill_once(name: str, tmp: Path, opts: Options, run: int) -> dict[str, Any]:
    """Fresh backends and gateway, the loaded run with one backend SIGKILLed, everything stopped."""
    with procs(tmp / f"logs-kill-{name}-{run}") as p:
        backends = start_backends(p, KILL["delay_ms"], KILL["tokens_per_s"])
        gw = spawn(name, p, tmp, [b.port for b in backends], opts)
        wait_ready(gw)
        result = asyncio.run(load_with_kill(gw.port, backends[0].kill, KILL))
        result["killed_backend_returncode"] = backends[0].wait(timeout=5)
        return result


def kill_under_load(name: str, tmp: Path, opts: Options, repeats: int, out: dict[str, Any]) -> None:
    """``repeats`` kill runs (one kill is a small sample of what is in flight); sums and extremes."""
    try:
        runs = [kill_once(name, tmp, opts, i) for i in range(repeats)]
    except Exception as exc:
        print(f"!! kill {name}: {exc}", flush=True)
        out["failures"].append({"gateway": name, "cells": ["kill"], "error": repr(exc)})
        return
    result: dict[str, Any] = {"gateway": name, "runs": runs}
    for key in ("requests", "failed", "failed_chat", "failed_streamed", "requests_after_kill"):
        result[key] = sum(r[key] for r in runs)
    firsts = [r["first_failure_s"] for r in runs if r["first_failure_s"] is not None]
    lasts = [r["last_failure_s"] for r in runs if r["last_failure_s"] is not None]
    result["first_failure_s"] = min(firsts) if firsts else None
    result["last_failure_s"] = max(lasts) if lasts else None
    result["run_left_after_kill_s"] = min(r["run_left_after_kill_s"] for r in runs)
    reasons: dict[str, int] = {}
    for r in runs:
        for why, n in r["reasons"].items():
            reasons[why] = reasons.get(why, 0) + n
    result["reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
    out["kill"].append(result)
    print(
        f"{name:14} kill: {result['failed']}/{result['requests']} failed over {repeats} runs "
        f"({', '.join(str(r['failed']) for r in runs)}; chat {result['failed_chat']}, streamed "
        f"{result['failed_streamed']}), failures {result['first_failure_s']} .. {result['last_failure_s']} s "
        f"after the kill; {result['reasons']}",
        flush=True,
    )


# -- start-up -----------------------------------------------------------------------------


def startup_once(
    name: str,
    p: Procs,
    tmp: Path,
    ports: list[int],
    opts: Options,
    out: dict[str, Any],
    timeout_s: float = 120.0,
) -> float:
    """Seconds from spawning ``name`` to its first 200 chat answer, polling every 10 ms."""
    count = len(p.started)
    start = time.monotonic()
    gw = spawn(name, p, tmp, ports, opts)
    out["commands"].setdefault(name, gw.describe())
    url = f"http://{HOST}:{gw.port}{PATH}"
    try:
        with httpx.Client(timeout=2, trust_env=False) as client:
            while time.monotonic() - start < timeout_s:
                try:
                    if client.post(url, json=CHAT).status_code == 200:
                        return time.monotonic() - start
                except httpx.HTTPError:
                    pass
                if gw.proc is not None and gw.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {gw.proc.returncode}")
                time.sleep(0.01)
        raise RuntimeError(f"{name}: no 200 within {timeout_s:g}s")
    finally:
        for proc in p.started[count:]:
            p.stop(proc)


def startups(gateways: list[str], tmp: Path, opts: Options, repeats: int, out: dict[str, Any]) -> None:
    with procs(tmp / "logs-startup") as p:
        ports = [b.port for b in start_backends(p, 0.0)]
        for name in gateways:
            if name == "direct":
                continue
            try:
                runs = [startup_once(name, p, tmp, ports, opts, out) for _ in range(repeats)]
            except Exception as exc:
                print(f"!! startup {name}: {exc}", flush=True)
                out["failures"].append({"gateway": name, "cells": ["startup"], "error": repr(exc)})
                continue
            out["startup"].append({"gateway": name, "runs_s": runs, "median_s": median(runs)})
            print(
                f"{name:14} start-up {median(runs):.3f} s (runs {', '.join(f'{r:.3f}' for r in runs)})",
                flush=True,
            )


# -- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--litellm-duration", type=float, default=5.0, help="seconds per wrk run for LiteLLM")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 2 s cells (a smoke run)")
    parser.add_argument(
        "--only", default=None, help=f"comma-separated gateways, of {','.join(GATEWAYS + EXTRA_GATEWAYS)}"
    )
    parser.add_argument("--cells", default=None, help=f"comma-separated parts, of {','.join(ALL_CELLS)}")
    parser.add_argument("--concurrency", default="16,64", help="comma-separated wrk connection counts")
    parser.add_argument("--inferno-pythonpath", default=None, help="run the Inferno target from this tree")
    parser.add_argument("--inferno-rev", default=None, help="run the Inferno target as of this git revision")
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument("--kill-repeats", type=int, default=3, help="kill-under-load runs per gateway")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats, args.litellm_duration, args.startup_repeats = 2.0, 1, 4.0, 1
        args.kill_repeats = 1
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


def main() -> None:
    args = parse_args()
    missing = [tool for tool in ("wrk", "nginx", "taskset") if not shutil.which(tool)]
    if missing:
        sys.exit(f"missing tools: {missing}; run `make bench-deps`")
    gateways = (
        GATEWAYS if not args.only else [g for g in GATEWAYS + EXTRA_GATEWAYS if g in args.only.split(",")]
    )
    cells = ALL_CELLS if not args.cells else [c for c in ALL_CELLS if c in args.cells.split(",")]
    if args.only and "direct" not in gateways and "long" in cells:
        gateways = ["direct", *gateways]  # the long cell's chunk count comes from the direct backend
    # This process (the kill test's client) runs on the load core, like wrk.
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    for name in gateways:
        ensure_installed(name)
    out: dict[str, Any] = {
        "cells": [],
        "kill": [],
        "startup": [],
        "verify": {},
        "commands": {},
        "failures": [],
    }
    with tempfile.TemporaryDirectory(prefix="peers-") as tmpname:
        tmp = Path(tmpname)
        tree = Path(args.inferno_pythonpath).resolve() if args.inferno_pythonpath else ROOT
        if args.inferno_rev:
            tree = checkout(args.inferno_rev, tmp / "inferno-rev")
        opts = Options(inferno_tree=tree)
        inferno_ver = f"rev {args.inferno_rev}" if args.inferno_rev else inferno_tree_version(tree)
        if not args.inferno_rev and (tree / "inferno" / "_native.stamp").exists():
            inferno_ver += (
                "; `inferno`: the compiled hot path (`make native`), `inferno-pure`: INFERNO_PURE_PYTHON=1"
            )
        started = time.monotonic()
        for delay in (0.0, 20.0):
            wanted = [c for c in cells if c in MATRIX_CELLS and c.endswith(f"-{delay:g}")]
            if not wanted:
                continue
            scripts = {
                c: wrk_script(tmp / f"{c}.lua", peer_json(body(c.startswith("streamed")))) for c in wanted
            }
            with procs(tmp / f"logs-{delay:g}") as p:
                ports = [b.port for b in start_backends(p, delay)]
                for name in gateways:
                    mine = [c for c in wanted if name != "litellm" or c in LITELLM_CELLS]
                    if mine:
                        run_gateway_cells(name, p, tmp, ports, opts, mine, args, scripts, out)
        if "long" in cells:
            scripts = {"long": wrk_script(tmp / "long.lua", peer_json(body(True, LONG_TOKENS)))}
            with procs(tmp / "logs-long") as p:
                ports = [b.port for b in start_backends(p, 0.0, LONG_RATE)]
                chunks = count_events(ports[0], LONG_TOKENS)
                out["long_stream"] = {
                    "max_tokens": LONG_TOKENS,
                    "tokens_per_s": LONG_RATE,
                    "data_events": chunks,
                }
                print(f"long stream: {chunks} data: events per stream", flush=True)
                for name in gateways:
                    if name != "litellm":
                        run_gateway_cells(name, p, tmp, ports, opts, ["long"], args, scripts, out, chunks)
        if "kill" in cells:
            for name in gateways:
                if name != "direct":
                    kill_under_load(name, tmp, opts, args.kill_repeats, out)
        if "startup" in cells:
            startups(gateways, tmp, opts, args.startup_repeats, out)
        elapsed = time.monotonic() - started
    info = machine()
    data = {
        "machine": info,
        "args": {k: v for k, v in vars(args).items()},
        "command": " ".join(sys.argv),
        "elapsed_s": round(elapsed, 1),
        "gateways": gateways,
        "tmp": tmpname,
        "versions": {
            "inferno": inferno_ver,
            **{g: peer_version(g) for g in gateways if not g.startswith(("direct", "inferno"))},
        },
        "kill_config": {**KILL, "max_tokens": KILL_MAX_TOKENS, "repeats": args.kill_repeats},
        **out,
    }
    markdown = peer_render.render(data)
    partial = bool(args.only or args.cells or args.inferno_pythonpath or args.inferno_rev)
    write_result("peers-partial" if partial else "peers", data, markdown)


def peer_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


if __name__ == "__main__":
    main()
