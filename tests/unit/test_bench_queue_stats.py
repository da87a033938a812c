"""The queue bench's statistics, views and renderers, and its parsing of what it is sent."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from inferno.bench import queue_views as views
from inferno.bench.control import parse_query, shape_of
from inferno.bench.queue import MAX_RETRY_AFTER_S, _parse_result, retry_after
from inferno.bench.queue_stats import MAX_NAMES, OTHER, JobResult, QueueStats
from inferno.bench.render import Table, View, render, render_html, render_plain
from inferno.errors import BadRequest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(node: str = "n1", outcome: str = "success", client_s: float = 0.5) -> JobResult:
    return JobResult(outcome, client_s, 0.1, 0.3, 0.45, 1, node, "pod-1", "/dev/x")


def test_reset_zeroes_the_period_but_keeps_what_is_in_flight() -> None:
    clock = Clock()
    stats = QueueStats(clock)
    for _ in range(3):
        stats.request_started()
    stats.result(job())
    stats.request_ended()
    stats.failure("http_500", "boom", 500)
    clock.now += 10
    stats.reset()
    assert stats.in_flight == 2 and stats.results == 0 and stats.sent == 0
    assert stats.fail_counts() == {} and stats.node_view() == {} and stats.client.count == 0
    assert stats.elapsed() == 0.0 and stats.resets == 1
    stats.result(job())  # one sent before the reset, counted in the new period
    stats.request_ended()
    assert stats.results == 1 and stats.in_flight == 1 and stats.outcome_counts() == {"success": 1}


def test_a_long_run_costs_the_memory_of_a_short_one() -> None:
    clock = Clock()
    stats = QueueStats(clock)

    def feed(n: int) -> None:
        for i in range(n):
            clock.now += 0.001
            stats.request_started()
            stats.result(job(node=f"node-{i % 7}", client_s=0.4 + (i % 1000) / 1000))
            stats.request_ended()
            if i % 10 == 0:
                stats.failure(("http_429", "timeout")[i % 2], "detail " * 10, 429)

    feed(5_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        feed(50_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert stats.results == 55_000 and stats.client.count == 55_000
    assert grown < 32 * 1024, grown  # ten times the samples, no more memory


def test_overhead_is_client_total_minus_wait_and_run() -> None:
    stats = QueueStats(Clock())
    stats.result(job(client_s=0.5))
    assert stats.overhead.percentile(50) == pytest.approx(0.1, rel=0.01)
    assert stats.snapshot()["times_s"]["overhead"]["count"] == 1


def test_names_are_capped_so_memory_stays_bounded() -> None:
    stats = QueueStats(Clock())
    for i in range(MAX_NAMES + 500):
        stats.result(job(node=f"node-{i}"))
        stats.failure(f"class-{i}")
    nodes = stats.node_view()
    assert len(nodes) == MAX_NAMES + 1 and nodes[OTHER]["served"] == 500
    assert len(stats.fail_counts()) == MAX_NAMES + 1 and len(stats.recent_failures) == 50


def test_the_rate_window_counts_the_last_full_seconds() -> None:
    clock = Clock()
    stats = QueueStats(clock)
    for second in range(100):
        clock.now = 1000.0 + second
        for _ in range(second % 3):
            stats.result(job())
    clock.now = 1100.0
    per_second = stats.rate.per_second()
    assert len(per_second) == 60 and per_second[-1] == (1, 99 % 3)
    assert sum(n for _, n in per_second) == sum(s % 3 for s in range(40, 100))
    assert stats.rate.rate(10) == pytest.approx(sum(s % 3 for s in range(90, 100)) / 10)
    stats.reset()
    clock.now = 1102.0
    assert stats.rate.per_second() == [(2, 0), (1, 0)]  # nothing from before the reset
    clock.now = 1102.5
    stats.reset()
    stats.result(job())
    clock.now = 1104.2
    # the second the period began in part is left out: it would pull the rate down
    assert stats.rate.per_second() == [(1, 0)]


SAMPLE = View(
    "Title <&>",
    {"a": 1, "b": [1, 2]},
    [Table("T1", ("name", "count", "ms"), [("x<y>", 3, 1.23456), ("long-name", 12345, None)])],
    ["a note & more"],
)


def test_plain_renders_aligned_tables() -> None:
    text = render_plain(SAMPLE)
    lines = text.splitlines()
    assert lines[0] == "Title <&>" and lines[1] == "a note & more" and "T1" in lines
    rows = [line for line in lines if line.startswith("  ")]
    assert rows[0].split() == ["name", "count", "ms"] and rows[1].split() == ["x<y>", "3", "1.235"]
    assert rows[2].split() == ["long-name", "12345", "-"]
    assert len({len(r) for r in rows}) == 1  # right-aligned to one width
    assert "(none)" in render_plain(View("t", {}, [Table("E", ("a",), [])]))


def test_json_is_the_data_unchanged() -> None:
    assert json.loads(render(SAMPLE, "json")) == {"a": 1, "b": [1, 2]}


def test_html_is_a_page_of_tables_with_every_value_escaped() -> None:
    page = render_html(SAMPLE)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>Title &lt;&amp;&gt;</title>" in page and "<h1>Title &lt;&amp;&gt;</h1>" in page
    assert "<h2>T1</h2>" in page and "<table>" in page and "<th>count</th>" in page
    assert "<td>x&lt;y&gt;</td>" in page and "<td>12345</td>" in page and "x<y>" not in page
    assert "<p>a note &amp; more</p>" in page and "<pre" not in page and "<script" not in page
    assert "<nav>" not in page
    linked = render(SAMPLE, "html", (("stats", "/stats?type=html"), ("a&b", "/x?a=1&b=2"))).decode()
    assert '<nav><a href="/stats?type=html">stats</a> | <a href="/x?a=1&amp;b=2">a&amp;b</a></nav>' in linked


def test_every_view_renders_in_every_shape() -> None:
    stats = QueueStats(Clock())
    stats.result(job())
    stats.failure("timeout", "late")
    live = {"queue": "sim", "parallelism": 3}
    for view in (
        views.stats_view(stats, live),
        views.nodes_view(stats),
        views.pods_view(stats),
        views.fails_view(stats),
        views.rate_view(stats),
        views.parallelism_view(3, 8, 3, 1),
        views.reset_view(stats),
        views.report_view(stats, live),
    ):
        for shape in ("plain", "json", "html"):
            assert render(view, shape), (view.title, shape)
    report = views.report_view(stats, live).data
    assert report["summary"]["fails"] == {"timeout": 1} and report["nodes"]["n1"]["served"] == 1
    assert report["recent_failures"][0]["class"] == "timeout" and report["pods"] == {"pod-1": 1}


def test_queries_are_strict() -> None:
    assert parse_query("type=json", ("type",)) == {"type": "json"}
    assert shape_of({}) == "plain"
    for query, allowed in (
        ("type=json&type=html", ("type",)),
        ("x=1", ("type",)),
        ("&".join(f"k{i}=1" for i in range(20)), ("type",)),
    ):
        with pytest.raises(BadRequest):
            parse_query(query, allowed)
    with pytest.raises(BadRequest, match="plain, json, html"):
        shape_of({"type": "xml"})


def test_retry_after_is_bounded_and_defaults() -> None:
    assert retry_after(b"2") == 2.0 and retry_after(b" 0.5 ") == 0.5
    assert retry_after(b"99999") == MAX_RETRY_AFTER_S and retry_after(b"0") == 0.01
    assert retry_after(None) == retry_after(b"soon") == retry_after(b"nan") == retry_after(b"-3") == 1.0


def test_odd_results_read_as_zero_and_bad_ones_raise() -> None:
    parsed = _parse_result(b'{"outcome": "success", "run_s": "x", "wait_s": true, "node": 5}', 0.2)
    assert parsed.run_s == 0.0 and parsed.wait_s == 0.0 and parsed.node == "" and parsed.client_s == 0.2
    assert _parse_result(b"{}", 0.1).outcome == "unknown"
    with pytest.raises(ValueError):
        _parse_result(b"[1]", 0.1)
