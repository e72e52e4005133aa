"""Event logs written for journald: one event per line, its syslog priority, key=value fields.

Under systemd (JOURNAL_STREAM set) each line starts with `<N>`, which journald turns into
the entry's priority; elsewhere lines carry a timestamp and level for a person at a terminal.
`journalctl -u aistack-gateway | grep event=gateway.started` finds one kind of event.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from typing import Any

SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(char in text for char in ' "=\\\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def format_fields(fields: dict[str, Any]) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in fields.items())


class EventFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"event": record.getMessage()}
        fields.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[2] is not None:
            frame = traceback.extract_tb(record.exc_info[2])[-1]
            fields["exception"] = repr(record.exc_info[1])
            fields["where"] = f"{frame.filename}:{frame.lineno}"
        line = format_fields(fields)
        if self.journald:
            return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname:<7} {line}"


class EventLog:
    """A logger whose messages are event names and whose arguments are fields."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(f"aistack.{name}")

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the place it was raised, from inside an `except` block."""
        self._logger.error(event, exc_info=True, extra={"fields": fields})


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger("aistack")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
