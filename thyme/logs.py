"""Logs of every Thyme process (the launcher, each child): JSON lines on stderr. A child's
stdout belongs to the KCL protocol."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Final, TextIO

ENV_LOG_LEVEL: Final = "THYME_LOG_LEVEL"
LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def level_from_env(environ: dict[str, str] | None = None) -> int:
    """``$THYME_LOG_LEVEL`` as a logging level (unset or not one of :data:`LEVELS`: INFO; the CLI
    refuses a wrong value before anything starts, so a child never sees one)."""
    value = (os.environ if environ is None else environ).get(ENV_LOG_LEVEL, "").strip().lower()
    return LEVELS.get(value, logging.INFO)


def log_time(seconds: float) -> str:
    """``2026-12-03T19:10:00.123Z``: the ``time`` field of every log line (Thyme's and, rewritten,
    the KCL's)."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, message, the shard/dataset context, extra fields."""

    def __init__(self, context: dict[str, Any]) -> None:
        super().__init__()
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": log_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.context,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(context: dict[str, Any], level: int = logging.INFO, stream: TextIO | None = None) -> JsonLines:
    """Send every log record of this process to ``stream`` (stderr) as JSON lines.

    Returns the formatter so that the shard id can be added to ``context`` once known.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonLines(context)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in ("botocore", "boto3", "urllib3"):  # "Found credentials ..." on every child start
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)
    return formatter
