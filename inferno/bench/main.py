"""``inferno bench``: runs the load (in one or several processes), shows progress,
serves the optional control endpoint, and writes the report."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import queue as queue_mod
import sys
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import Any

from inferno.bench import report as reports
from inferno.bench.runner import LoadShape, Runner
from inferno.bench.stats import Sample, error_class, summarize
from inferno.bench.workload import Workload, load_images, load_prompts
from inferno.errors import BadRequest
from inferno.http.listener import HttpServer
from inferno.http.loop import run_loop
from inferno.http.responses import JSON_HEADERS, dumps
from inferno.http.router import Router
from inferno.http.server import Request, Responder


@dataclass(frozen=True)
class BenchConfig:
    target: str
    kind: str = "inference"
    shape: LoadShape = dataclasses.field(default_factory=lambda: LoadShape(requests=100))
    processes: int = 1
    prompts_path: str | None = None
    max_tokens: int = 32
    model: str | None = None
    #: texts per embeddings request, items per batch request
    items: int = 4
    #: photos for the image kind (default: a synthetic one)
    images: tuple[str, ...] = ()
    control_addr: str | None = None
    progress: bool = True
    seed: int = 0


def parse_target(url: str) -> str:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme != "http" or not parsed.hostname:
        raise ValueError(f"expected http://host:port, got {url!r}")
    return f"{parsed.hostname}:{parsed.port or 80}"


class Recorder:
    """All samples of the run (from every process), resettable for long runs."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.started = time.perf_counter()
        self.failures: deque[dict[str, Any]] = deque(maxlen=50)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        if not sample.ok:
            self.failures.append(
                {
                    "at_s": round(sample.start, 3),
                    "class": error_class(sample),
                    "status": sample.status,
                    "backend": sample.backend,
                }
            )

    def reset(self) -> None:
        self.samples = []
        self.failures.clear()
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


TEXT_HEADERS = b"Content-Type: text/plain\r\n"


class Control:
    """``--control-addr``: steer a long run. JSON by default, ``?format=text`` for text."""

    def __init__(self, recorder: Recorder, set_parallelism: Any, get_parallelism: Any) -> None:
        self._rec = recorder
        self._set = set_parallelism
        self._get = get_parallelism

        self._router = Router()
        self._router.add("GET", "/stats", self._stats)
        self._router.add("GET", "/nodes", self._nodes)
        self._router.add("GET", "/fails", self._fails)
        self._router.add("POST", "/reset", self._reset)
        self._router.add("POST", "/parallelism", self._parallelism)

    async def __call__(self, request: Request, responder: Responder) -> None:
        await self._router(request, responder)

    @staticmethod
    def _as_text(request: Request) -> bool:
        return urllib.parse.parse_qs(request.query).get("format") == ["text"]

    async def _stats(self, request: Request, responder: Responder) -> None:
        summary = summarize(self._rec.samples, self._rec.elapsed())
        summary["parallelism"] = self._get()
        if self._as_text(request):
            body = reports.text({"meta": {}, "summary": summary}).encode()
            responder.send(200, TEXT_HEADERS, body)
            return
        responder.send(200, JSON_HEADERS, dumps(summary))

    async def _reset(self, request: Request, responder: Responder) -> None:
        self._rec.reset()
        responder.send(200, JSON_HEADERS, b'{"status":"reset"}')

    async def _parallelism(self, request: Request, responder: Responder) -> None:
        value = urllib.parse.parse_qs(request.query).get("value", [""])[0]
        if not value.isdigit() or not 1 <= int(value) <= 100_000:
            raise BadRequest("value must be an integer from 1 to 100000", param="value")
        self._set(int(value))
        responder.send(200, JSON_HEADERS, dumps({"parallelism": int(value)}))

    async def _nodes(self, request: Request, responder: Responder) -> None:
        nodes = summarize(self._rec.samples, self._rec.elapsed())["backends"]
        if self._as_text(request):
            lines = [f"{name} {v['count']} {v['share'] * 100:.1f}%" for name, v in nodes.items()]
            responder.send(200, TEXT_HEADERS, "\n".join(lines).encode())
            return
        responder.send(200, JSON_HEADERS, dumps(nodes))

    async def _fails(self, request: Request, responder: Responder) -> None:
        errors = summarize(self._rec.samples, self._rec.elapsed())["errors"]
        if self._as_text(request):
            body = "\n".join(f"{k} {v}" for k, v in errors.items()).encode()
            responder.send(200, TEXT_HEADERS, body)
            return
        responder.send(200, JSON_HEADERS, dumps({"errors": errors, "recent": list(self._rec.failures)}))


def _share(total: int, index: int, parts: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def _child(index: int, cfg: BenchConfig, out: Any, parallelism: Any) -> None:
    """One load process: runs its share and streams samples back in batches."""
    n = cfg.processes
    shape = cfg.shape
    share = dataclasses.replace(
        shape,
        concurrency=max(1, _share(shape.concurrency, index, n)),
        rate=shape.rate / n,
        burst_size=max(1, _share(shape.burst_size, index, n)),
        ramp_to=max(1, _share(shape.ramp_to, index, n)),
        requests=None if shape.requests is None else _share(shape.requests, index, n),
    )
    buffer: list[Sample] = []
    workload = Workload(
        cfg.kind,
        load_prompts(cfg.prompts_path),
        max_tokens=cfg.max_tokens,
        model=cfg.model,
        batch_size=cfg.items,
        images=load_images(cfg.images) if cfg.kind == "image" else None,
        seed=cfg.seed + index,
    )
    runner = Runner(cfg.target, workload, share, buffer.append, seed=cfg.seed + index)

    async def main() -> None:
        async def flush_forever() -> None:
            while True:
                await asyncio.sleep(0.25)
                if buffer:
                    out.put(buffer[:])
                    buffer.clear()
                wanted = _share(parallelism.value, index, n)
                if wanted != runner.parallelism and shape.mode in ("closed", "ramp"):
                    runner.parallelism = max(1, wanted)

        flusher = asyncio.create_task(flush_forever())
        try:
            await runner.run()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        if buffer:
            out.put(buffer[:])

    run_loop(main(), server=False)
    out.put(None)


async def _progress(recorder: Recorder, in_flight: Any, stop: asyncio.Event) -> None:
    # On a terminal one line is rewritten in place each second; into a file or a pipe
    # (CI logs) a plain line every 5 s, without carriage returns.
    tty = sys.stderr.isatty()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0 if tty else 5.0)
        samples = recorder.samples
        ok = [s.latency for s in samples[-2000:] if s.ok]
        ok.sort()
        p50 = ok[len(ok) // 2] * 1000 if ok else float("nan")
        elapsed = recorder.elapsed()
        failed = sum(1 for s in samples if not s.ok)
        rate = len(samples) / elapsed if elapsed else 0.0
        line = (
            f"[{elapsed:6.1f}s] {len(samples)} done, {failed} failed, "
            f"{rate:.1f} req/s, p50 {p50:.1f} ms, in flight {in_flight()}"
        )
        if tty:
            print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
        elif not stop.is_set():
            print(line, file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)


async def run_bench(cfg: BenchConfig) -> tuple[dict[str, Any], list[Sample]]:
    recorder = Recorder()
    stop = asyncio.Event()
    control_server: HttpServer | None = None
    if cfg.processes == 1:
        workload = Workload(
            cfg.kind,
            load_prompts(cfg.prompts_path),
            max_tokens=cfg.max_tokens,
            model=cfg.model,
            batch_size=cfg.items,
            images=load_images(cfg.images) if cfg.kind == "image" else None,
            seed=cfg.seed,
        )
        runner = Runner(cfg.target, workload, cfg.shape, recorder.add, seed=cfg.seed)

        def set_par(value: int) -> None:
            runner.parallelism = value

        get_par: Any = lambda: runner.parallelism  # noqa: E731
        in_flight: Any = lambda: runner.in_flight  # noqa: E731
    else:
        ctx = multiprocessing.get_context("spawn")
        par = ctx.Value("i", cfg.shape.concurrency)
        out = ctx.Queue()

        def set_par(value: int) -> None:
            par.value = value

        get_par = lambda: par.value  # noqa: E731
        in_flight = lambda: "-"  # noqa: E731
    if cfg.control_addr:
        host, _, port = cfg.control_addr.rpartition(":")
        control_server = HttpServer(Control(recorder, set_par, get_par), name="bench-control")
        await control_server.start(host or "127.0.0.1", int(port))
    progress = asyncio.create_task(_progress(recorder, in_flight, stop)) if cfg.progress else None
    recorder.reset()
    try:
        if cfg.processes == 1:
            await runner.run()
        else:
            procs = [
                ctx.Process(target=_child, args=(i, cfg, out, par), daemon=True) for i in range(cfg.processes)
            ]
            for proc in procs:
                proc.start()
            finished = 0
            bound = (cfg.shape.duration_s or 3600.0) + cfg.shape.timeout_s + 60.0
            deadline = time.monotonic() + bound
            while finished < len(procs) and time.monotonic() < deadline:
                try:
                    batch = out.get_nowait()
                except queue_mod.Empty:
                    await asyncio.sleep(0.05)
                    continue
                if batch is None:
                    finished += 1
                else:
                    for sample in batch:
                        recorder.add(sample)
            for proc in procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.terminate()
    finally:
        elapsed = recorder.elapsed()
        stop.set()
        if progress is not None:
            await progress
        if control_server is not None:
            await control_server.aclose()
    meta = {
        "target": cfg.target,
        "kind": cfg.kind,
        "mode": cfg.shape.mode,
        "processes": cfg.processes,
        "shape": dataclasses.asdict(cfg.shape),
        "max_tokens": cfg.max_tokens,
    }
    return reports.build(recorder.samples, elapsed, meta), recorder.samples
