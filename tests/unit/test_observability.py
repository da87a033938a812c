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
