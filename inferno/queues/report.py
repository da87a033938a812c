"""What the queues say about themselves: ``GET /queues`` and the periodic stats line."""

from __future__ import annotations

import heapq
import logging
from typing import Any

from inferno.config import QueueConfig
from inferno.queues.queue import JobQueue

logger = logging.getLogger("inferno.queues.service")
#: running jobs listed per queue in ``GET /queues``
RUNNING_SHOWN = 64


def log_stats(queues: dict[str, JobQueue], config: QueueConfig) -> None:
    """The periodic line per queue; closes the stats window."""
    for queue in queues.values():
        w = queue.stats.close_window()
        logger.info(
            "Queue %s: %d waiting, %d running, %d dead, %d workers polling; %d finished in the last "
            "%.0fs, max wait %.3fs, max run %.3fs (worker %s), max total %.3fs",
            queue.name,
            len(queue.waiting),
            len(queue.running),
            len(queue.dead),
            queue.polling(),
            w.finished,
            config.stats_interval_s,
            w.max_wait_s,
            w.max_run_s,
            w.longest_worker or "-",
            w.max_total_s,
        )


def snapshot(queues: dict[str, JobQueue], now: float) -> dict[str, Any]:
    """``GET /queues``: every queue's state and totals."""
    out: dict[str, Any] = {}
    for queue in queues.values():
        oldest = queue.waiting.oldest()
        s = queue.stats
        out[queue.name] = {
            "waiting": len(queue.waiting),
            "running": len(queue.running),
            "backlog": len(queue.waiting) + len(queue.running),
            "dead": len(queue.dead),
            "finished_retained": len(queue.finished),
            "workers_polling": queue.polling(),
            "oldest_wait_s": round(now - oldest, 3) if oldest is not None else 0.0,
            "max_size": queue.spec.max_size,
            "max_message_bytes": queue.spec.max_message_bytes,
            "submitted": s.submitted,
            "completed": dict(s.completed),
            "redeliveries": dict(s.redeliveries),
            "rejected": dict(s.rejected),
            "disconnects": dict(s.disconnects),
            "stale_completions": s.stale_completions,
            "window": {
                "max_wait_s": round(s.window.max_wait_s, 6),
                "max_run_s": round(s.window.max_run_s, 6),
                "max_total_s": round(s.window.max_total_s, 6),
                "longest_worker": s.window.longest_worker,
            },
            "workers": sorted({j.worker.get("id", "") for j in queue.running.values()} - {""}),
            # the longest-running first, at most RUNNING_SHOWN of them; not their ids: this
            # route needs no token, and without API keys a job id reads or cancels the job
            "running_jobs": [
                {
                    "attempt": j.attempts,
                    "running_s": round(now - j.leased_at, 3),
                    "worker": j.worker.get("id", ""),
                    "node": j.worker.get("node", ""),
                    "pod": j.worker.get("pod", ""),
                }
                for j in heapq.nsmallest(RUNNING_SHOWN, queue.running.values(), key=lambda j: j.leased_at)
            ],
        }
    return out


def census(queues: dict[str, JobQueue]) -> str:
    """What the queues hold, for the start-up line: ``1 waiting, 0 running, 0 dead, 88 finished``."""
    qs = queues.values()
    counts = (
        ("waiting", sum(len(q.waiting) for q in qs)),
        ("running", sum(len(q.running) for q in qs)),
        ("dead", sum(len(q.dead) for q in qs)),
        ("finished", sum(len(q.finished) for q in qs)),
    )
    return ", ".join(f"{n} {what}" for what, n in counts)
