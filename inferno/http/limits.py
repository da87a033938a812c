"""Per-connection limits of the HTTP server, and fitting them to the open-file limit."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
from dataclasses import dataclass

from inferno.config import HttpConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection bounds (``inferno.config.HttpConfig`` fills them)."""

    max_body_bytes: int = 1 << 20
    #: request bodies held in memory by all connections of the port together
    max_buffered_body_bytes: int = 256 << 20
    max_request_line_bytes: int = 8192
    max_header_bytes: int = 8192
    max_headers_total_bytes: int = 32768
    max_header_count: int = 100
    max_connections: int = 4096
    read_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0
    linger_s: float = 2.0


def limits_from(config: HttpConfig, *, max_body_bytes: int, ops: bool = False) -> Limits:
    """The data port's limits, or the ops port's (its own connection budget)."""
    return Limits(
        max_body_bytes=max_body_bytes,
        max_buffered_body_bytes=config.max_buffered_body_bytes,
        max_request_line_bytes=config.max_request_line_bytes,
        max_header_bytes=config.max_header_bytes,
        max_headers_total_bytes=config.max_headers_total_bytes,
        max_header_count=config.max_header_count,
        max_connections=config.max_ops_connections if ops else config.max_connections,
        read_timeout_s=config.read_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
        linger_s=config.linger_s,
    )


#: file descriptors kept back from the data port's budget: the ops port, upstream sockets, logs
FD_RESERVE = 1024


def fit_to_fd_limit(data: Limits, ops: Limits, name: str) -> Limits:
    """Shrink the data port's connection budget to what the open-file limit allows,
    so a flood of the data port can never starve the ops port (or the upstream pool)."""
    nofile = raise_nofile_limit()
    room = nofile - ops.max_connections - FD_RESERVE
    if data.max_connections <= room:
        return data
    fitted = max(16, room)
    logger.warning(
        "%s: open-file limit %d allows %d data connections, not %d; using %d",
        name,
        nofile,
        fitted,
        data.max_connections,
        fitted,
    )
    return dataclasses.replace(data, max_connections=fitted)


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return int(soft)
