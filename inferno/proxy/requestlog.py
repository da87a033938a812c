"""The proxy's per-request log lines: one per try (routing), one per answer.

With ``--log-format json`` each line also carries its facts as keys (request id,
backend, model, status, timings), built only then. Both go through
``fast_info``: no LogRecord on the request path.
"""

from __future__ import annotations

import logging

from inferno.observability.logging import fast_info, json_logs
from inferno.registry.worker import WorkerInfo

# The lines keep the forwarder's logger name: log pipelines filter on it.
logger = logging.getLogger("inferno.proxy.forward")


def log_route(request_id: str, address: str, attempt: int) -> None:
    fields = {"request_id": request_id, "backend": address, "attempt": attempt} if json_logs() else None
    fast_info(logger, "Routing request %s to %s", request_id, address, fields=fields)


def log_answer(
    request_id: str,
    route: bytes,
    worker: WorkerInfo,
    status: int,
    model: str,
    t0: float,
    t_send: float,
    now: float,
) -> None:
    """Who answered, with what, and where the time went (queue, backend, total)."""
    queue_ms = (t_send - t0) * 1000.0
    backend_ms = (now - t_send) * 1000.0
    total_ms = (now - t0) * 1000.0
    fields = None
    if json_logs():
        fields = {
            "request_id": request_id,
            "route": route.decode(),
            "status": status,
            "backend": worker.address,
            "node_id": worker.node_id,
            "model": model or None,
            "queue_ms": round(queue_ms, 3),
            "backend_ms": round(backend_ms, 3),
            "total_ms": round(total_ms, 3),
        }
    fast_info(
        logger,
        "Answered request %s: %d from %s (model %s), queue %.1f ms, backend %.1f ms, total %.1f ms",
        request_id,
        status,
        worker.address,
        model or "-",
        queue_ms,
        backend_ms,
        total_ms,
        fields=fields,
    )
