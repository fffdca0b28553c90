"""Logging set-up for gz processes: GZ_LOG_LEVEL and GZ_LOG_FORMAT=text|json, to stderr.

A record written while an OpenTelemetry span is current carries its ``trace_id`` and ``span_id``:
JSON fields, or `` trace_id=... span_id=...`` after the message in text.
"""

from __future__ import annotations

import json
import logging
import sys


class TraceIds(logging.Filter):
    """Sets ``trace_id`` and ``span_id`` (32 and 16 lowercase hex digits, as OpenTelemetry's log
    correlation spells them) on a record written while a valid span is current.

    A filter on the handler, so it runs only for records the handler emits; opentelemetry is
    never imported here: while nothing has imported it, no span can be current.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        trace = sys.modules.get("opentelemetry.trace")
        if trace is not None:
            span_context = trace.get_current_span().get_span_context()
            if span_context.is_valid:
                record.trace_id = format(span_context.trace_id, "032x")
                record.span_id = format(span_context.span_id, "016x")
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then `` trace_id=... span_id=...`` when the record has
    them (before a stack trace, which starts on the next line)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        worker = getattr(record, "worker", None)
        if worker is not None:
            line = f"{line} worker={worker}"
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            return line
        return f"{line} trace_id={trace_id} span_id={getattr(record, 'span_id', '')}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields given with ``extra={...}`` are kept."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def count(number: int, noun: str) -> str:
    """``1 endpoint``, ``2 endpoints``: a number and its noun, for log lines and command output."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


class WorkerIndex(logging.Filter):
    """Sets ``worker`` on every record of a GZ_WORKERS worker: the JSON field ``worker``, or
    `` worker=N`` after the message in text."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def configure_logging(level: str = "INFO", fmt: str = "text", worker: int | None = None) -> None:
    """Log to stderr; ``worker``: the index of this GZ_WORKERS worker, if it is one."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(TraceIds())
    if worker is not None:
        handler.addFilter(WorkerIndex(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
