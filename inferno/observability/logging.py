"""Logging configured once per process: text or JSON, with control characters escaped.

Anything a client controls that reaches a log line is either validated (request
ids) or escaped here, so a request can never forge a log line.

The proxy logs a line per routed request, so logging is on its hot path: lines
are written in batches from the event loop (at most ``flush_interval_s`` late,
immediately for warnings and errors), the caller's file/line lookup is off, and
timestamps are formatted once per second.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

import orjson

#: every C0 and C1 control character, DEL and the Unicode line separators, as escapes
_ESCAPES = str.maketrans(
    {
        **{chr(c): f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) != "\t"},
        "\n": "\\n",
        "\r": "\\r",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{self._stamp_of(int(record.created))},{int(record.msecs):03d}"

    def _stamp_of(self, second: int) -> str:
        """The local-time stamp of a second, formatted once per second."""
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return self._stamp

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not record.message.isprintable():
            record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)

    def fast_line(
        self, created: float, level: str, name: str, message: str, fields: dict[str, Any] | None = None
    ) -> str:
        second = int(created)
        millis = int((created - second) * 1000)
        if not message.isprintable():  # a C-speed scan; translating is per character
            message = message.translate(_ESCAPES)
        return f"{self._stamp_of(second)},{millis:03d} {level} {name}: {message}"


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines in batches scheduled on the running event loop.

    Off the loop (start-up, shutdown, other threads) and for WARNING and above it
    writes at once, so nothing important waits and nothing is lost at exit
    (``logging.shutdown`` flushes).
    """

    def __init__(self, stream: TextIO, flush_interval_s: float = 0.05, max_lines: int = 512) -> None:
        super().__init__(stream)
        self._interval = flush_interval_s
        self._max = max_lines
        self._pending: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        # Called by Handler.handle with the handler lock held.
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._queue(line, urgent=record.levelno >= logging.WARNING)

    def append_fast(
        self, created: float, name: str, message: str, fields: dict[str, Any] | None = None
    ) -> None:
        """Queue an INFO line formatted like ``format()`` would, minus the LogRecord."""
        formatter = self.formatter
        if not isinstance(formatter, TextFormatter | JsonFormatter):
            logging.getLogger(name).info("%s", message, extra={"fields": fields})
            return
        line = formatter.fast_line(created, "INFO", name, message, fields)
        self.acquire()
        try:
            self._queue(line, urgent=False)
        finally:
            self.release()

    def _queue(self, line: str, *, urgent: bool) -> None:
        """Add a line; write now if urgent, full or off the event loop, else soon."""
        self._pending.append(line)
        if urgent or len(self._pending) >= self._max:
            self.flush()
            return
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self._interval, self._flush_later)

    def _flush_later(self) -> None:
        self._scheduled = False
        self.acquire()
        try:
            self.flush()
        finally:
            self.release()

    def flush(self) -> None:
        if self._pending:
            self.stream.write("\n".join(self._pending) + "\n")
            self._pending.clear()
        super().flush()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (and exc_info), plus the
    structured ``fields`` a request line carries (request_id, backend, model, timings)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(payload).decode()

    def fast_line(
        self, created: float, level: str, name: str, message: str, fields: dict[str, Any] | None = None
    ) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        millis = int((created - int(created)) * 1000)
        payload = {"ts": f"{stamp}.{millis:03d}Z", "level": level, "logger": name, "message": message}
        if fields:
            payload.update(fields)
        return orjson.dumps(payload).decode()


_FAST_HANDLER: BatchingStreamHandler | None = None
_JSON = False


def json_logs() -> bool:
    """Whether lines are JSON: callers build structured ``fields`` only then."""
    return _JSON


def fast_info(log: logging.Logger, msg: str, *args: object, fields: dict[str, Any] | None = None) -> None:
    """``log.info(msg, *args)`` for per-request lines, without building a LogRecord.

    When logging was set up by ``setup_logging`` and nothing else listens, the line
    is formatted exactly as the configured formatter would and queued directly;
    otherwise this is plain ``log.info``. ``fields`` become keys of a JSON line (the
    text line has them in its message already).
    """
    handler = _FAST_HANDLER
    if (
        handler is None
        or not log.isEnabledFor(logging.INFO)
        or log.handlers
        or log.filters
        or logging.root.handlers != [handler]
    ):
        log.info(msg, *args, extra={"fields": fields})
        return
    message = (msg % args) if args else msg
    handler.append_fast(time.time(), log.name, message, fields)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    # Inferno's lines never show the caller's file, thread or process: skip the lookups.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _FAST_HANDLER, _JSON
    handler = BatchingStreamHandler(sys.stdout)
    _FAST_HANDLER = handler
    _JSON = fmt == "json"
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
