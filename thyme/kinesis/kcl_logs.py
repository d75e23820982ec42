"""One log format for everything ``run`` writes: the daemon's lines made into Thyme's JSON lines.

The launcher reads one stream from the JVM: the KCL's own log lines (logback's ``JsonEncoder``,
configured in ``logback.xml`` beside this module), and every line a shard's child writes to stderr,
which the daemon echoes as is (the child's JSON lines, EMF lines). :func:`convert` turns a KCL
line into the fields Thyme's own lines have (``time``, ``level``, ``logger``, ``message``, then
``component: "kcl"``, ``shard``, ``thread``, ``error``, ``traceback``), lets a child's JSON line
through unchanged, and wraps anything else (a JVM or interpreter message that bypassed every
logger) as a line of its own, so each line on stderr is one JSON object.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Final

from thyme.logs import log_time

KCL_LEVEL_ENV: Final = "THYME_KCL_LOG_LEVEL"
"""The daemon's logback level, read by ``logback.xml`` beside this module (``${THYME_KCL_LOG_LEVEL:-WARN}``)."""
LEVELS: Final = ("debug", "info", "warning", "error")
KCL_LEVEL_FOR: Final = {"debug": "INFO", "info": "WARN", "warning": "WARN", "error": "ERROR"}
"""The KCL's level for each Thyme level: its INFO is ~30 lines/s on an idle host (lease
assignment, renewals), noise unless debugging; its WARN and ERROR are what an operator reads."""

_KCL_LINE: Final = '{"sequenceNumber":'
_LEVEL: Final = {"TRACE": "debug", "DEBUG": "debug", "INFO": "info", "WARN": "warning", "ERROR": "error"}
_PLACEHOLDER: Final = re.compile(r"\{\}")
_ERROR_TEXT: Final = re.compile(r"\bERROR\b|Exception|\berror\b|Traceback")
MAX_FRAMES: Final = 12
"""Stack frames kept per exception in ``traceback`` (the KCL's traces run to 60 frames of SDK
internals; the top ones say where, the causes say why)."""
MAX_CAUSES: Final = 4


class Converted:
    """A line to write (``text``, ending in a newline), a short human form of it (``summary``)
    for the last-errors report when the daemon keeps failing, and its level (None: a line
    without one, such as an EMF metrics line, which is always written)."""

    __slots__ = ("level", "summary", "text")

    def __init__(self, text: str, summary: str, level: str | None) -> None:
        self.text = text
        self.summary = summary
        self.level = level


def convert(line: str, context: dict[str, Any], now: float | None = None) -> Converted:
    """``line`` as it came from the daemon's stream, as one of Thyme's JSON lines.

    ``context`` (the dataset) is added to KCL and wrapped lines; a child's own lines have it already.
    """
    stripped = line.rstrip("\r\n")
    if stripped.startswith(_KCL_LINE):
        try:
            event = json.loads(stripped)
        except ValueError:
            event = None
        if isinstance(event, dict):
            return _from_kcl(event, context)
    elif stripped.startswith("{"):
        try:
            entry = json.loads(stripped)
        except ValueError:
            entry = None
        if isinstance(entry, dict):  # a child's line (or an EMF line): as it is
            level = entry.get("level")
            summary = f"{str(level).upper()} {entry['message']}" if "message" in entry else stripped
            if "error" in entry:
                summary += f": {entry['error']}"
            return Converted(stripped + "\n", summary, level if isinstance(level, str) else None)
    level = "error" if _ERROR_TEXT.search(stripped) else "warning"
    entry = {"time": log_time(now if now is not None else time.time()), "level": level, "logger": "stderr"}
    entry |= {"message": stripped, "component": "kcl", **context}
    return Converted(json.dumps(entry) + "\n", stripped, level)


def _from_kcl(event: dict[str, Any], context: dict[str, Any]) -> Converted:
    level = _LEVEL.get(str(event.get("level")), "info")
    logger = str(event.get("loggerName", "kcl"))
    message = _format(str(event.get("message", "")), event.get("arguments") or [])
    timestamp = event.get("timestamp")
    entry: dict[str, Any] = {
        "time": log_time(timestamp / 1000 if isinstance(timestamp, int | float) else time.time()),
        "level": level,
        "logger": logger,
        "message": message,
        "component": "kcl",
        **context,
    }
    mdc = event.get("mdc")
    if isinstance(mdc, dict) and mdc.get("ShardId"):
        entry["shard"] = mdc["ShardId"]
    entry["thread"] = event.get("threadName")
    summary = f"{level.upper()} {logger.rsplit('.', 1)[-1]}: {message}"
    throwable = event.get("throwable")
    if isinstance(throwable, dict):
        entry["error"] = _one_line(throwable)
        entry["traceback"] = _traceback(throwable)
        summary += f": {entry['error']}"
    return Converted(json.dumps(entry) + "\n", summary, level)


def _format(message: str, arguments: list[Any]) -> str:
    """SLF4J's ``{}`` placeholders filled in order (the JSON encoder sends them apart)."""
    if not arguments or "{}" not in message:
        return message
    values = iter(arguments)
    return _PLACEHOLDER.sub(lambda match: str(next(values, "{}")), message)


def _one_line(throwable: dict[str, Any]) -> str:
    """``Class: message`` of the exception and its causes, innermost last."""
    parts = []
    current: Any = throwable
    for _ in range(MAX_CAUSES + 1):
        if not isinstance(current, dict):
            break
        name = str(current.get("className", "?")).rsplit(".", 1)[-1]
        text = current.get("message")
        parts.append(f"{name}: {text}" if text else name)
        current = current.get("cause")
    return " <- ".join(parts)


def _traceback(throwable: dict[str, Any]) -> str:
    lines = []
    current: Any = throwable
    prefix = ""
    for _ in range(MAX_CAUSES + 1):
        if not isinstance(current, dict):
            break
        text = current.get("message")
        lines.append(f"{prefix}{current.get('className', '?')}" + (f": {text}" if text else ""))
        frames = current.get("stepArray") or []
        for frame in frames[:MAX_FRAMES]:
            where = f"{frame.get('fileName')}:{frame.get('lineNumber')}"
            lines.append(f"\tat {frame.get('className')}.{frame.get('methodName')}({where})")
        if len(frames) > MAX_FRAMES:
            lines.append(f"\t... {len(frames) - MAX_FRAMES} more")
        current = current.get("cause")
        prefix = "Caused by: "
    return "\n".join(lines)
