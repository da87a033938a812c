"""Histogram export, log escaping and the JSON log format."""

from __future__ import annotations

import json
import logging

from inferno.observability.logging import JsonFormatter, TextFormatter
from inferno.observability.metrics import Histogram


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        hist.observe(value)
    assert hist.buckets() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert hist.count == 4 and abs(hist.sum - 2.65) < 1e-9


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("x", logging.INFO, __file__, 1, msg, args, None)


def test_text_formatter_escapes_newlines_so_lines_cannot_be_forged() -> None:
    line = TextFormatter().format(_record("Routing request %s", "a\n2026 INFO forged"))
    assert "\n" not in line and "a\\n2026 INFO forged" in line


def test_json_formatter_emits_one_object_per_line() -> None:
    line = JsonFormatter().format(_record("Backend registered: %s", "h:1"))
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "Backend registered: h:1" and data["level"] == "INFO"


def test_fast_info_matches_the_configured_format(capsys: object) -> None:
    import logging as std_logging

    from inferno.observability import logging as ilog

    root = std_logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        for fmt in ("text", "json"):
            ilog.setup_logging("INFO", fmt)
            log = std_logging.getLogger("inferno.test.fast")
            ilog.fast_info(log, "Routing request %s to %s", "r-1\nforged", "h:1")
            log.info("Routing request %s to %s", "r-2", "h:2")
            out = capsys.readouterr().out.splitlines()  # type: ignore[attr-defined]
            assert len(out) == 2, out
            if fmt == "json":
                first, second = (json.loads(line) for line in out)
                assert first["message"] == "Routing request r-1\nforged to h:1"
                assert set(first) == set(second) and first["logger"] == second["logger"]
            else:
                assert out[0].endswith("INFO inferno.test.fast: Routing request r-1\\nforged to h:1")
                assert out[1].endswith("INFO inferno.test.fast: Routing request r-2 to h:2")
                assert out[0][:19] == out[1][:19]  # same timestamp format
        # below INFO nothing is written
        root.setLevel(std_logging.WARNING)
        ilog.fast_info(std_logging.getLogger("inferno.test.fast"), "quiet %s", 1)
        assert capsys.readouterr().out == ""  # type: ignore[attr-defined]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        ilog._FAST_HANDLER = None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttled_log_writes_the_first_line_then_one_summary_per_interval() -> None:
    from inferno.observability.throttle import ThrottledLog

    clock = FakeClock()
    log = logging.getLogger("tests.throttle")
    throttled = ThrottledLog(log, interval_s=10.0, clock=clock)
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect()
    log.addHandler(handler)
    try:
        for i in range(1000):  # a flood within one window: one line
            clock.now += 0.001
            throttled.warning("Refused %s from %s", "POST /registration", f"10.0.0.{i % 250}")
        assert len(lines) == 1 and lines[0] == "Refused POST /registration from 10.0.0.0"
        clock.now += 10.0
        throttled.warning("Refused %s from %s", "POST /registration", "10.0.0.1")
        # The window ended: its 999 held lines are summed up in one line, the new one is held.
        assert len(lines) == 2 and "(and 999 more like it in the last 11s)" in lines[1]
        throttled.flush()  # the end-of-window timer (or shutdown) sums up the rest
        assert len(lines) == 3 and "(and 1 more like it" in lines[2]
        throttled.flush()
        clock.now += 60.0
        throttled.warning("Refused %s from %s", "POST /registration", "10.0.0.2")
        assert len(lines) == 4 and lines[3] == "Refused POST /registration from 10.0.0.2"  # quiet again
    finally:
        log.removeHandler(handler)


def test_the_text_formatter_escapes_every_control_character() -> None:
    import logging

    from inferno.observability.logging import TextFormatter

    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "job %s", ("a\nb\x1b[2Jc\x9bd\u2028e\x08f\x7fg\th",), None
    )
    line = TextFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line and "\x9b" not in line and "\u2028" not in line
    assert "\x08" not in line and "\x7f" not in line and "\t" in line
    assert line.endswith("job a\\nb\\x1b[2Jc\\x9bd\\u2028e\\x08f\\x7fg\th")
