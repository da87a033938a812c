"""Per-queue counters, histograms and the stats window's maxima.

Plain fields bumped on the hot path, turned into ``inferno_jobqueue_*`` families at
scrape time by ``inferno.queues.metrics``. The maxima cover the current stats window,
which only the ``--queue-stats-interval-s`` tick closes: a scrape reads, never resets,
so two scrapers see the same numbers.
"""

from __future__ import annotations

import dataclasses

from inferno.observability.metrics import Histogram

#: queue wait and run time: from milliseconds to hours
JOB_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)


@dataclasses.dataclass(slots=True)
class Window:
    """The largest times seen in the current stats window, and who had the longest run."""

    max_wait_s: float = 0.0
    max_run_s: float = 0.0
    max_total_s: float = 0.0
    longest_worker: str = ""
    finished: int = 0

    def observe(self, wait_s: float, run_s: float, total_s: float, worker: str) -> None:
        self.finished += 1
        self.max_wait_s = max(self.max_wait_s, wait_s)
        self.max_total_s = max(self.max_total_s, total_s)
        if run_s >= self.max_run_s:
            self.max_run_s = run_s
            self.longest_worker = worker


class QueueStats:
    def __init__(self) -> None:
        self.wait = Histogram(JOB_BUCKETS_S)
        self.run = Histogram(JOB_BUCKETS_S)
        #: outcome -> finished jobs
        self.completed: dict[str, int] = {}
        #: "waiting" | "running" -> clients that went away
        self.disconnects: dict[str, int] = {"waiting": 0, "running": 0}
        #: "expired" | "released" -> jobs put back
        self.redeliveries: dict[str, int] = {"expired": 0, "released": 0}
        #: "full" | "too_large" | "invalid" | "journal" (could not commit) -> submissions refused
        self.rejected: dict[str, int] = {"full": 0, "too_large": 0, "invalid": 0, "journal": 0}
        self.stale_completions = 0
        self.submitted = 0
        self.window = Window()
        #: the window before the current one (what the last stats line said)
        self.last_window = Window()

    def finished(self, outcome: str, wait_s: float, run_s: float, total_s: float, worker: str) -> None:
        self.completed[outcome] = self.completed.get(outcome, 0) + 1
        self.wait.observe(wait_s)
        if run_s > 0 or outcome in ("success", "failure", "timeout"):
            self.run.observe(run_s)
        self.window.observe(wait_s, run_s, total_s, worker)

    def close_window(self) -> Window:
        closed, self.window = self.window, Window()
        self.last_window = closed
        return closed
