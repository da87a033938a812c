"""Runs the controller until SIGTERM or SIGINT; the instances keep running after it."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from inferno.controller.client import ProxyClient
from inferno.controller.config import ControllerConfig
from inferno.controller.loop import Backoff, Controller
from inferno.orchestrators import Orchestrator, OrchestratorContext

logger = logging.getLogger(__name__)

#: the file the container's health check reads: touched after every reconcile step
ALIVE_FILE = "controller.alive"


def build_controller(config: ControllerConfig) -> Controller:
    state_dir = Path(config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    context = OrchestratorContext(
        state_dir=str(state_dir),
        discovery_lb=config.discovery_lb or config.proxy_ops,
        cluster_token=config.cluster_token.get_secret_value() if config.cluster_token else None,
        model_dir=config.model_dir,
        options=config.orchestrator_options,
    )
    orchestrator = Orchestrator.create(config.orchestrator, context)
    client = ProxyClient(
        config.proxy_ops, config.admin_token.get_secret_value(), timeout_s=config.request_timeout_s
    )
    return Controller(
        orchestrator,
        client,
        reconcile_interval_s=config.reconcile_interval_s,
        wait_s=config.poll_wait_s,
        reconcile_timeout_s=config.reconcile_timeout_s,
        backoff=Backoff(config.backoff_initial_s, config.backoff_max_s),
        alive_file=state_dir / ALIVE_FILE,
    )


async def run_controller(config: ControllerConfig) -> None:
    controller = build_controller(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("Starting controller for proxy %s (orchestrator %s)", config.proxy_ops, config.orchestrator)
    await controller.start()
    try:
        await stop.wait()
    finally:
        await controller.aclose()
