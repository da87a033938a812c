"""The queue mode's views (control endpoints and the final report) as ``View`` objects."""

from __future__ import annotations

from typing import Any

from inferno.bench.queue_stats import QueueStats
from inferno.bench.render import Table, View, ms

#: failures the final report's tables list (its JSON has all that were kept)
REPORT_FAILURES = 10
_TIME_COLUMNS = ("time", "count", "mean ms", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms")


def _time_row(name: str, s: dict[str, Any]) -> tuple[Any, ...]:
    return (
        name,
        s["count"],
        *(ms(s[key]) for key in ("mean", "p50", "p90", "p99", "p99.9", "max")),
    )


def _counts(title: str, what: str, counts: dict[str, int]) -> Table:
    total = sum(counts.values())
    rows = [(name, n, f"{n / total * 100:.1f}%") for name, n in counts.items()]
    return Table(title, (what, "count", "share"), rows)


def stats_view(stats: QueueStats, live: dict[str, Any]) -> View:
    """/stats: totals, outcomes, failures, the time histograms, plus the live settings."""
    snap = stats.snapshot()
    data = {**live, **snap}
    times = snap["times_s"]
    notes = [
        f"elapsed {snap['elapsed_s']:.1f}s  sent {snap['sent']}  results {snap['results']}  "
        f"in flight {snap['in_flight']}  parallelism {live.get('parallelism', '-')}",
        f"throughput {snap['throughput_rps']:.2f} results/s  recent {snap['recent_rps']:.2f} results/s  "
        f"failed requests {snap['failed_requests']}",
    ]
    tables = [
        Table("Times", _TIME_COLUMNS, [_time_row(name, times[name]) for name in times]),
        _counts("Outcomes", "outcome", snap["outcomes"]),
        _counts("Failed requests", "class", snap["fails"]),
    ]
    return View(f"inferno bench: queue {live.get('queue', '')}", data, tables, notes)


def nodes_view(stats: QueueStats) -> View:
    nodes = stats.node_view()
    rows = [
        (name, v["served"], f"{v['share'] * 100:.1f}%", *_time_row("", v["run_s"])[2:])
        for name, v in nodes.items()
    ]
    columns = ("node", "served", "share", *(f"run {c}" for c in _TIME_COLUMNS[2:]))
    return View("Requests served per node", nodes, [Table("Nodes", columns, rows)])


def pods_view(stats: QueueStats) -> View:
    view = stats.pod_view()
    return View(
        "Requests served per pod and device",
        view,
        [_counts("Pods", "pod", view["pods"]), _counts("Devices", "device", view["devices"])],
    )


def fails_view(stats: QueueStats) -> View:
    view = stats.fail_view()
    recent = Table(
        "Recent failures",
        ("at s", "class", "status", "detail"),
        [(r["at_s"], r["class"], r["status"] or "-", r["detail"]) for r in view["recent"]],
    )
    return View("Failed requests", view, [_counts("By class", "class", view["fails"]), recent])


def rate_view(stats: QueueStats) -> View:
    view = stats.rate_view()
    rows = [(f"-{p['seconds_ago']}s", p["results"]) for p in view["per_second"]]
    return View(
        "Results per second",
        view,
        [Table(f"Last {view['window_s']} seconds", ("second", "results"), rows)],
        [f"recent rate {view['recent_rps']:.2f} results/s (mean of the last 10 full seconds)"],
    )


def parallelism_view(parallelism: int, max_parallelism: int, slots: int, in_flight: int) -> View:
    data = {
        "parallelism": parallelism,
        "max_parallelism": max_parallelism,
        "slots": slots,
        "in_flight": in_flight,
    }
    rows = [(k, v) for k, v in data.items()]
    return View("Parallelism", data, [Table("Parallelism", ("setting", "value"), rows)])


def reset_view(stats: QueueStats) -> View:
    data = {"status": "reset", "in_flight": stats.in_flight, "resets": stats.resets}
    return View("Counters reset", data, [], [f"in flight (kept) {stats.in_flight}  resets {stats.resets}"])


def report_view(stats: QueueStats, live: dict[str, Any]) -> View:
    """The final report: every view in one."""
    parts = [stats_view(stats, live), nodes_view(stats), pods_view(stats), fails_view(stats)]
    data = {
        "meta": live,
        "summary": parts[0].data,
        "nodes": parts[1].data,
        **parts[2].data,
        "recent_failures": parts[3].data["recent"],
    }
    # the failure counts are in the /stats part already: only the recent ones from /fails
    recent = parts[3].tables[1]
    last = Table("Last failures", recent.columns, recent.rows[-REPORT_FAILURES:])
    tables = [*parts[0].tables, *parts[1].tables, *parts[2].tables, last]
    return View(parts[0].title, data, tables, parts[0].notes)
