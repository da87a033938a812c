"""queues: the pull queues' dispatch overhead, the proxy's CPU per job, and scaling.

Real processes: ``inferno proxy --queue q`` pinned to one core (durable: the journal
in ``--state-dir``, the default; and ``--queue-memory-only``), ``inferno worker``
processes (the built-in ``sleep`` workload: no process spawned, or ``/bin/true``:
one real process per job) and this script's own lean load client (asyncio, raw
keep-alive sockets, one connection per lane, each lane submitting
``POST /v1/queues/q/jobs?wait=true`` back to back), workers and client pinned to the
other core. Every figure is a median over ``--repeats`` runs; the two modes are
alternated so that drift of the machine hits both alike.

- overhead per job = client total - queue wait - run time (p50, p99), and the
  proxy's own ``overhead_s`` (arrival to accepted completion, less wait and run);
- proxy CPU µs per job (utime + stime from /proc over the measured window / jobs);
- no-op jobs/s with 1, 2, 4, 8, 16 worker slots (lanes = 2 x slots);
- 2 s jobs from 1 to 16 slots (lanes = slots): jobs/s and the ratio per doubling;
- ``/bin/true`` per job: jobs/s, overhead and the worker's CPU per job (with its
  reaped children).

    python benchmarks/queues.py [--repeats 3] [--duration 3] [--quick]

``INFERNO_BENCH_PROFILE=DIR`` runs each proxy under cProfile (the profile is
written to DIR at exit): for finding costs, not for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    CLK_TCK,
    HOST,
    LOAD_CORE,
    PROXY_CORE,
    checkout,
    inferno,
    machine,
    median,
    procs,
    wait_port,
    write_result,
)
from inferno.orchestrators.processes import free_port

Sample = tuple[float, float, float, float]  # client total, wait_s, run_s, proxy overhead_s


def cpu_s(pid: int, children: bool = False) -> float:
    """utime + stime of ``pid`` (and of its reaped children)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        if children:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / CLK_TCK
    return 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the load client -------------------------------------------------------------------
async def _lane(port: int, request: bytes, deadline: float, limit: int, out: list[Sample]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        done = 0
        while done < limit and time.monotonic() < deadline:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            elapsed = time.perf_counter() - t0
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{head.splitlines()[0]!r} {body[:200]!r}")
            r = orjson.loads(body)
            out.append((elapsed, r["wait_s"], r["run_s"], r["overhead_s"]))
            done += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def load(
    port: int, lanes: int, seconds: float, arg: str, per_lane: int = 1 << 30
) -> tuple[list[Sample], float]:
    """``lanes`` lanes for ``seconds`` (or ``per_lane`` jobs each): samples, wall time."""
    body = orjson.dumps({"args": [arg]})
    request = (
        f"POST /v1/queues/q/jobs?wait=true HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    out: list[Sample] = []

    async def run() -> float:
        t0 = time.perf_counter()
        deadline = time.monotonic() + seconds
        await asyncio.wait_for(
            asyncio.gather(*(_lane(port, request, deadline, per_lane, out) for _ in range(lanes))),
            seconds + 60,
        )
        return time.perf_counter() - t0

    return out, asyncio.run(run())


# -- the processes ---------------------------------------------------------------------
class Bench:
    def __init__(self, p: Any, tmp: Path) -> None:
        self.p = p
        self.tmp = tmp
        self.proxies: dict[str, tuple[int, int, Any]] = {}
        self.workers: list[Any] = []

    def proxy(self, mode: str, code: Path | None = None) -> None:
        """A proxy for ``mode`` (``durable`` or ``memory``, with a ``-before`` suffix when
        it runs the ``inferno`` package in ``code``)."""
        port, ops = free_port(), free_port()
        memory = mode.startswith("memory")
        extra = ["--queue-memory-only"] if memory else ["--state-dir", str(self.tmp / f"state-{mode}")]
        cmd = inferno(
            "proxy",
            "--insecure",
            "--listen-addr",
            f"{HOST}:{port}",
            "--ops-addr",
            f"{HOST}:{ops}",
            "--queue",
            "q:4096",
            "--log-level",
            "WARNING",
            *extra,
        )
        env = None
        profile_dir = os.environ.get("INFERNO_BENCH_PROFILE")
        if profile_dir:
            out = Path(profile_dir) / f"proxy-{mode}.prof"
            cmd = [cmd[0], "-m", "cProfile", "-o", str(out), "-m", "inferno", *cmd[3:]]
        if code is not None:  # -P: not the working directory's inferno, the checkout's
            cmd = [cmd[0], "-P", *cmd[1:]]
            env = {"PYTHONPATH": str(code)}
        proc = self.p.start(f"proxy-{mode}", cmd, core=PROXY_CORE, env=env)
        wait_port(port)
        self.proxies[mode] = (port, ops, proc)

    def start_workers(self, mode: str, slots: int, workload: list[str]) -> str:
        """Workers for ``slots`` slots: one process up to 2 slots, else two of slots/2."""
        self.stop_workers()
        _, ops, _ = self.proxies[mode]
        processes = 1 if slots <= 2 else 2
        for i in range(processes):
            cmd = inferno(
                "worker",
                "--discovery-lb",
                f"{HOST}:{ops}",
                "--queue",
                "q",
                "--concurrency",
                str(slots // processes),
                "--poll-wait-s",
                "20",
                "--log-level",
                "WARNING",
                "--",
                *workload,
            )
            self.workers.append(self.p.start(f"worker-{mode}-{slots}-{i}", cmd, core=LOAD_CORE))
        self.wait_polling(ops, slots)
        return f"{processes} x --concurrency {slots // processes}"

    def wait_polling(self, ops: int, slots: int) -> None:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                q = httpx.get(f"http://{HOST}:{ops}/queues", timeout=2).json()["queues"]["q"]
                if q["workers_polling"] >= slots:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{slots} worker slots not polling within 60 s")

    def stop_workers(self) -> None:
        for proc in self.workers:
            self.p.stop(proc)
        self.workers.clear()

    def measure(
        self, mode: str, lanes: int, seconds: float, arg: str, per_lane: int = 1 << 30
    ) -> dict[str, Any]:
        port, _, proxy = self.proxies[mode]
        load(port, lanes, min(1.0, seconds), arg)  # warm-up
        cpu0 = cpu_s(proxy.pid)
        wcpu0 = sum(cpu_s(w.pid, children=True) for w in self.workers)
        ccpu0 = time.process_time()
        samples, wall = load(port, lanes, seconds, arg, per_lane)
        ccpu = time.process_time() - ccpu0
        cpu = cpu_s(proxy.pid) - cpu0
        wcpu = sum(cpu_s(w.pid, children=True) for w in self.workers) - wcpu0
        n = len(samples)
        overhead = [total - wait - run for total, wait, run, _ in samples]
        return {
            "jobs": n,
            "jobs_per_s": n / wall,
            "overhead_p50_ms": pct(overhead, 0.5) * 1e3,
            "overhead_p99_ms": pct(overhead, 0.99) * 1e3,
            "proxy_overhead_p50_ms": pct([s[3] for s in samples], 0.5) * 1e3,
            "total_p50_ms": pct([s[0] for s in samples], 0.5) * 1e3,
            "proxy_cpu_us_per_job": cpu / n * 1e6 if n else float("nan"),
            "worker_cpu_us_per_job": wcpu / n * 1e6 if n else float("nan"),
            "client_cpu_us_per_job": ccpu / n * 1e6 if n else float("nan"),
        }


def med(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: median([r[key] for r in runs]) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--levels", default="1,2,4,8,16")
    parser.add_argument("--long-job-s", type=float, default=2.0)
    parser.add_argument("--long-jobs-per-lane", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1.5 s runs, one 2 s job per lane")
    parser.add_argument("--label", default="", help="a note shown with the tables (e.g. the change measured)")
    parser.add_argument(
        "--baseline", default="", help="a git revision whose proxy runs side by side (no-op runs only)"
    )
    parser.add_argument(
        "--only",
        choices=("noop", "long"),
        help="only the no-op runs (results/queues.*) or only the 2 s jobs and /bin/true (results/queues_long.*)",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.duration, args.long_jobs_per_lane = 1, 1.5, 1
    levels = [int(v) for v in args.levels.split(",")]
    modes: tuple[str, ...] = ("durable", "memory")
    if args.baseline:
        modes += ("durable-before", "memory-before")
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    noop: dict[str, dict[int, list[dict[str, Any]]]] = {m: {n: [] for n in levels} for m in modes}
    unloaded: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    long_runs: dict[int, list[dict[str, Any]]] = {n: [] for n in levels}
    spawn: list[dict[str, Any]] = []
    layout: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="inferno-queues-") as name, procs(Path(name) / "logs") as p:
        bench = Bench(p, Path(name))
        code = checkout(args.baseline, Path(name) / "before") if args.baseline else None
        for mode in modes:
            bench.proxy(mode, code if mode.endswith("-before") else None)
        for rnd in range(args.repeats):
            order = modes if rnd % 2 == 0 else modes[::-1]
            for mode in order if args.only != "long" else ():
                layout[1] = bench.start_workers(mode, 1, ["sleep"])
                unloaded[mode].append(bench.measure(mode, 1, args.duration, "0"))
                print(f"round {rnd + 1} {mode} unloaded: {fmt(unloaded[mode][-1])}", flush=True)
                for n in levels:
                    layout[n] = bench.start_workers(mode, n, ["sleep"])
                    noop[mode][n].append(bench.measure(mode, 2 * n, args.duration, "0"))
                    print(f"round {rnd + 1} {mode} {n:2} slots: {fmt(noop[mode][n][-1])}", flush=True)
            if args.only == "noop":
                continue
            bench.start_workers("durable", 1, ["/bin/true"])
            spawn.append(bench.measure("durable", 2, args.duration, "0"))
            print(f"round {rnd + 1} /bin/true: {fmt(spawn[-1])}", flush=True)
        for n in levels if args.only != "noop" else ():
            bench.start_workers("durable", n, ["sleep"])
            long_runs[n].append(
                bench.measure("durable", n, 1e6, str(args.long_job_s), per_lane=args.long_jobs_per_lane)
            )
            print(f"{args.long_job_s:g} s jobs, {n:2} slots: {fmt(long_runs[n][-1])}", flush=True)
        bench.stop_workers()
    data = {
        "machine": machine(),
        "args": vars(args),
        "command": " ".join(sys.argv),
        "layout": {str(k): v for k, v in layout.items()},
        "unloaded": {m: med(r) for m, r in unloaded.items()},
        "noop": {m: {str(n): med(r) for n, r in by.items()} for m, by in noop.items()},
        "long": {str(n): med(r) for n, r in long_runs.items() if r},
        "spawn": med(spawn) if spawn else None,
        "runs": {"unloaded": unloaded, "noop": noop, "long": long_runs, "spawn": spawn},
    }
    if args.only != "long":
        write_result("queues", data, render(data, args, levels))
    if args.only != "noop":
        head = [
            "## queues_long",
            "",
            f"{data['machine']['cpu']}, {data['machine']['cores']} cores, {data['machine']['date']}. "
            f"`{data['command']}`. Pinning as in `queues` above; worker slots: "
            + ", ".join(f"{n}: {layout[n]}" for n in levels if n in layout)
            + f"; medians of {args.repeats} (the /bin/true runs), one run per slot count (the long jobs).",
        ]
        write_result(
            "queues_long",
            data,
            "\n".join([*head, *render_long(data["long"], data["spawn"], args, levels), ""]),
        )


def fmt(r: dict[str, Any]) -> str:
    return (
        f"{r['jobs_per_s']:7.0f} jobs/s, overhead p50 {r['overhead_p50_ms']:.2f} ms p99 "
        f"{r['overhead_p99_ms']:.2f} ms, proxy {r['proxy_cpu_us_per_job']:.0f} CPU-us/job, "
        f"workers {r['worker_cpu_us_per_job']:.0f}, client {r['client_cpu_us_per_job']:.0f} CPU-us/job"
    )


def render(data: dict[str, Any], args: Any, levels: list[int]) -> str:
    info = data["machine"]
    noop, unloaded = data["noop"], data["unloaded"]
    top = str(levels[-1])
    lines = [
        "## queues",
        "",
        f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['inferno']}, {info['date']}. "
        f"`{data['command']}`{f' ({args.label})' if args.label else ''}. The proxy (`--queue q:4096`, "
        f"`--log-level WARNING`) pinned to core {PROXY_CORE}; the workers (`inferno worker ... -- sleep`, "
        f"the built-in no-op, job arg `0`) and the load client (this script: asyncio, raw keep-alive "
        f"sockets, one per lane, `POST /v1/queues/q/jobs?wait=true`) to core {LOAD_CORE}. "
        f"{args.duration:g} s per run after a 1 s warm-up, medians of {args.repeats} runs, the modes "
        "alternated. Worker slots: "
        + ", ".join(f"{n}: {data['layout'][str(n)]}" for n in levels if str(n) in data["layout"])
        + "; lanes = 2 x slots (1 lane, 1 slot unloaded).",
        "",
        "| | durable (journal in `--state-dir`) | memory (`--queue-memory-only`) | target |",
        "| --- | ---: | ---: | --- |",
    ]

    def row(label: str, key: str, src: dict[str, Any], spec: str, target: str) -> str:
        return f"| {label} | {src['durable'][key]:{spec}} | {src['memory'][key]:{spec}} | {target} |"

    def at(n: str) -> dict[str, Any]:
        return {m: noop[m][n] for m in noop}

    lines += [
        row("overhead p50, unloaded (1 lane, 1 slot), ms", "overhead_p50_ms", unloaded, ".2f", "≤ 2 ms"),
        row("overhead p99, unloaded, ms", "overhead_p99_ms", unloaded, ".2f", ""),
        row("proxy's own overhead_s p50, unloaded, ms", "proxy_overhead_p50_ms", unloaded, ".2f", ""),
        row("proxy CPU-µs per job, unloaded", "proxy_cpu_us_per_job", unloaded, ".0f", ""),
        row(
            f"overhead p50 at {top} slots, {2 * int(top)} lanes, ms",
            "overhead_p50_ms",
            at(top),
            ".2f",
            "≤ 2 ms",
        ),
        row(f"overhead p99 at {top} slots, ms", "overhead_p99_ms", at(top), ".2f", ""),
        row(f"proxy CPU-µs per job at {top} slots", "proxy_cpu_us_per_job", at(top), ".0f", "≤ 300"),
        row(f"worker CPU-µs per job at {top} slots", "worker_cpu_us_per_job", at(top), ".0f", ""),
        row(f"load client CPU-µs per job at {top} slots", "client_cpu_us_per_job", at(top), ".0f", ""),
        "",
        "No-op jobs/s by worker slots (lanes = 2 x slots; target ≥ 1,000 from one proxy, durable ≥ ½ memory):",
        "",
        "| slots | durable jobs/s | memory jobs/s | durable / memory | durable overhead p50 / p99 ms | "
        "durable proxy CPU-µs/job |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in levels:
        d, m = noop["durable"][str(n)], noop["memory"][str(n)]
        lines.append(
            f"| {n} | {d['jobs_per_s']:,.0f} | {m['jobs_per_s']:,.0f} | {d['jobs_per_s'] / m['jobs_per_s']:.2f} | "
            f"{d['overhead_p50_ms']:.2f} / {d['overhead_p99_ms']:.2f} | {d['proxy_cpu_us_per_job']:.0f} |"
        )
    if args.baseline:
        lines += [
            "",
            f"Before (`{args.baseline}`) and after, side by side in this run (the same workers and client):",
            "",
            "| mode | slots | jobs/s before → after | proxy CPU-µs/job before → after | "
            "overhead p50 ms before → after |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for mode in ("durable", "memory"):
            pairs = [("unloaded", unloaded[f"{mode}-before"], unloaded[mode])]
            pairs += [(str(n), noop[f"{mode}-before"][str(n)], noop[mode][str(n)]) for n in levels]
            for label, b, a in pairs:
                lines.append(
                    f"| {mode} | {label} | {b['jobs_per_s']:,.0f} → {a['jobs_per_s']:,.0f} | "
                    f"{b['proxy_cpu_us_per_job']:.0f} → {a['proxy_cpu_us_per_job']:.0f} | "
                    f"{b['overhead_p50_ms']:.2f} → {a['overhead_p50_ms']:.2f} |"
                )
    return "\n".join([*lines, ""])


def render_long(long_: dict[str, Any], spawn: dict[str, Any], args: Any, levels: list[int]) -> list[str]:
    lines = [
        "",
        f"{args.long_job_s:g} s jobs (durable, lanes = slots, {args.long_jobs_per_lane} job(s) per lane; "
        "the bar: ≥ 1.9x per doubling):",
        "",
        "| slots | jobs/s | x per doubling | overhead p50 ms |",
        "| ---: | ---: | ---: | ---: |",
    ]
    prev = None
    for n in levels:
        r = long_[str(n)]
        ratio = f"{r['jobs_per_s'] / prev:.2f}" if prev else "-"
        lines.append(f"| {n} | {r['jobs_per_s']:.2f} | {ratio} | {r['overhead_p50_ms']:.2f} |")
        prev = r["jobs_per_s"]
    lines += [
        "",
        "A real process per job (`inferno worker ... -- /bin/true`, 1 slot, 2 lanes, durable): "
        f"{spawn['jobs_per_s']:,.0f} jobs/s, overhead p50 {spawn['overhead_p50_ms']:.2f} ms "
        f"(the spawn is inside run_s), the worker's CPU with its children "
        f"{spawn['worker_cpu_us_per_job']:,.0f} µs per job, the proxy's {spawn['proxy_cpu_us_per_job']:.0f} µs.",
    ]
    return lines


if __name__ == "__main__":
    main()
