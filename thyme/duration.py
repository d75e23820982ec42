"""Durations written the way users write them: ``"30s"``, ``"5m"``, ``"1h30m"``, ``"1d"``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

from thyme.errors import SourceError

_PART: Final = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object, where: str) -> timedelta:
    """Parse ``value`` (a string such as ``"5m"`` or a :class:`timedelta`) into a timedelta.

    ``where`` names the parameter in the error raised for anything else.
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise SourceError(where, "a duration cannot be negative", _FIX, value=value)
        return value
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text and _PART.sub("", text) == "":
            seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
            return timedelta(seconds=seconds)
    raise SourceError(where, "not a duration", _FIX, value=value)


_FIX: Final = 'Write it as a number and a unit (ms, s, m, h, d, w), for example "30s", "5m", "1h30m" or "1d".'


def format_duration(value: timedelta) -> str:
    """The shortest string :func:`parse_duration` reads back as ``value``."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, total_ms = divmod(total_ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
