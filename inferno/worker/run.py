"""The worker's composition root: build it from its config, run it until it is done.

The first SIGTERM (or SIGINT) stops leasing and lets the running jobs finish; a
second one releases their leases and kills the workloads (``Worker.signal``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import signal
import socket

from inferno.worker.client import WorkerClient, WorkerIdentity
from inferno.worker.config import WorkerConfig
from inferno.worker.engine import EngineRunner
from inferno.worker.health import WorkerHealth
from inferno.worker.loop import Worker
from inferno.worker.pacing import Backoff
from inferno.worker.runner import DevicePool, ProcessRunner, Runner, RunnerSettings
from inferno.worker.workloads import BuiltinWorkload

logger = logging.getLogger(__name__)


def default_names() -> tuple[str, str]:
    """(node, pod) when not given: the host name, and the host name with our pid."""
    host = socket.gethostname() or "localhost"
    return host, f"{host}-{os.getpid()}"


def new_worker_id() -> str:
    """Random per process: a restarted worker is a new worker to the proxy."""
    return "w-" + secrets.token_hex(6)


def build_runner(config: WorkerConfig) -> Runner:
    if config.engine is not None:
        return EngineRunner.create(
            config.engine,
            config.engine_options,
            node=config.pod_name,
            limit_s=config.limit_s,
            max_tokens_limit=config.max_tokens_limit,
            limits=config.request,
        )
    settings = RunnerSettings(
        workload=config.workload,
        ignore_args=config.ignore_args,
        workdir=config.workdir,
        max_output_bytes=config.max_output_bytes,
        discard_output=config.discard_output,
        limit_s=config.limit_s,
        kill_grace_s=config.kill_grace_s,
    )
    builtin = BuiltinWorkload.lookup(config.workload[0])
    return builtin(settings) if builtin is not None else ProcessRunner(settings)


def build_worker(config: WorkerConfig, runner: Runner, *, rng: random.Random | None = None) -> Worker:
    token = config.token.get_secret_value() if config.token else None
    client = WorkerClient(config.discovery_lb, token, timeout_s=config.request_timeout_s)
    identity = WorkerIdentity(new_worker_id(), config.node_name, config.pod_name)
    return Worker(
        client,
        runner,
        queues=config.queues,
        identity=identity,
        devices=DevicePool(config.glob),
        device_name=config.device_name,
        poll_wait_s=config.poll_wait_s,
        concurrency=config.concurrency,
        exit_when_empty=config.exit_when_empty,
        backoff=Backoff(config.backoff_s, config.backoff_max_s, rng),
    )


async def run_worker(config: WorkerConfig) -> int:
    """Run until stopped (or, with exit_when_empty, until the queues are empty); the exit code."""
    runner = build_runner(config)
    await runner.start()
    worker = build_worker(config, runner)
    health = WorkerHealth(worker, config.queues) if config.health_addr else None
    if health is not None and config.health_addr is not None:
        host, _, port = config.health_addr.rpartition(":")
        await health.start(host or "127.0.0.1", int(port))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.signal)
    what = f"engine {config.engine}" if config.engine else repr(config.workload[0])
    logger.info(
        "Worker %s (node %r, pod %r) leasing from %s at %s: %s, %d at a time",
        worker.identity.id,
        config.node_name,
        config.pod_name,
        ", ".join(config.queues),
        config.discovery_lb,
        what,
        config.concurrency,
    )
    try:
        return await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await worker.aclose()
        await runner.aclose()
        if health is not None:
            await health.aclose()
