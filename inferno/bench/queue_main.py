"""``inferno bench --queue NAME``: runs the queue load with its control endpoint and
progress line until the duration, the request count or SIGINT/SIGTERM, then returns
the final report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from inferno.bench import queue_views as views
from inferno.bench.control import start_control
from inferno.bench.queue import QueueLoad, QueueLoadConfig
from inferno.bench.render import View
from inferno.http.listener import HttpServer

logger = logging.getLogger(__name__)


def live_settings(load: QueueLoad) -> dict[str, Any]:
    cfg = load.cfg
    return {
        "target": cfg.target,
        "queue": cfg.queue,
        "args": list(cfg.args),
        "limit_s": cfg.limit_s,
        "parallelism": load.parallelism,
        "max_parallelism": cfg.max_parallelism,
        "delay_s": cfg.delay_s,
        "duration_s": cfg.duration_s,
        "timeout_s": cfg.timeout_s,
        "abandoned_at_exit": load.abandoned,
    }


async def _progress(load: QueueLoad, done: asyncio.Event) -> None:
    # As the other modes: a line rewritten in place on a terminal, a plain one every 5 s
    # into a file or a pipe.
    tty = sys.stderr.isatty()
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=1.0 if tty else 5.0)
        s = load.stats
        p50 = s.client.percentile(50) * 1000 if s.client.count else float("nan")
        line = (
            f"[{s.elapsed():7.1f}s] {s.results} results ({s.succeeded()} ok), "
            f"{sum(s.fail_counts().values())} failed requests, {s.rate.rate():.1f}/s, "
            f"p50 {p50:.1f} ms, in flight {s.in_flight}, parallelism {load.parallelism}"
        )
        if tty:
            print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
        elif not done.is_set():
            print(line, file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)


async def run_queue_bench(
    cfg: QueueLoadConfig, *, control_addr: tuple[str, int] | None = None, progress: bool = True
) -> View:
    """The whole run; SIGINT/SIGTERM end it early (in-flight requests are abandoned)."""
    load = QueueLoad(cfg)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, lambda: load.stop(drain=False))
            handled.append(sig)
    control: HttpServer | None = None
    done = asyncio.Event()
    ticker: asyncio.Task[None] | None = None
    try:
        if control_addr is not None:
            control = await start_control(load, lambda: live_settings(load), *control_addr)
        if progress:
            ticker = asyncio.create_task(_progress(load, done))
        await load.run()
    finally:
        done.set()
        if ticker is not None:
            await ticker
        if control is not None:
            await control.aclose()
        for sig in handled:
            loop.remove_signal_handler(sig)
    return views.report_view(load.stats, live_settings(load))
