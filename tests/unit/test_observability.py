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
