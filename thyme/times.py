"""Points in time written the way users write them, wherever a time is asked for.

Accepted, everywhere (``lookup(at=…)``, ``--at``, ``--since``, ``--until``):

- an aware :class:`~datetime.datetime`;
- ISO-8601 with a zone: ``"2026-12-03T19:10:00Z"``, ``"2026-12-03T20:10:00+01:00"``;
- epoch seconds, milliseconds or microseconds, as a number or digits: ``1796325000``,
  ``1796325000123`` (told apart by size: below 10¹¹ seconds, below 10¹⁴ milliseconds, else
  microseconds — 10¹¹ seconds is the year 5138);
- a duration back from now: ``"10m"``, ``"1h30m"``, ``"2d ago"`` (the units of
  :mod:`thyme.duration`); ``"now"``.

A time without a zone is refused rather than guessed: a model server in one zone and a store
written in UTC must not disagree by hours without an error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from thyme.duration import parse_duration
from thyme.errors import ConfigError

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
TimeLike = datetime | str | int | float
"""What a caller may pass wherever a time is asked for (see the module docstring)."""
_SECONDS_BELOW: Final = 10**11
_MILLIS_BELOW: Final = 10**14
_NUMBER: Final = re.compile(r"\d+(\.\d+)?")
FIX: Final = (
    'Write an ISO-8601 time with a zone ("2026-12-03T19:10:00Z"), epoch seconds or milliseconds '
    '(1796325000), or a duration back from now ("10m", "2h", "1d").'
)


def parse_time(value: object, where: str, now: datetime | None = None) -> datetime:
    """``value`` as an aware datetime; ``where`` names the parameter in the error for anything else.

    ``now`` (default: the current time) anchors relative durations.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigError(where, "the time has no time zone", "Pass an aware datetime, e.g. tzinfo=UTC.", value)
        return value
    if isinstance(value, bool):  # a bool is an int to Python, never a time to a user
        raise ConfigError(where, "not a time", FIX, value)
    if isinstance(value, int | float):
        return _from_epoch(value, where)
    if not isinstance(value, str):
        raise ConfigError(where, "not a time", FIX, value)
    text = value.strip()
    if text.lower() == "now":
        return now or datetime.now(UTC)
    if _NUMBER.fullmatch(text):
        return _from_epoch(float(text) if "." in text else int(text), where)
    relative = text.removesuffix("ago").strip()
    if relative and relative[0].isdigit() and not _looks_like_a_date(relative):
        try:
            back = parse_duration(relative, where)
        except ConfigError:
            raise ConfigError(where, "not a time", FIX, value) from None
        return (now or datetime.now(UTC)) - back
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(where, "not a time", FIX, value) from None
    if moment.tzinfo is None:
        raise ConfigError(where, "the time has no time zone", 'Add "Z" for UTC or an offset such as "+01:00".', value)
    return moment


def to_us(moment: datetime) -> int:
    """An aware datetime in microseconds since the epoch, exactly (no float rounding)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def iso(moment: datetime) -> str:
    """UTC, ``Z``, milliseconds: ``2026-12-03T19:10:00.123Z`` — the form status and logs print."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_from_us(us: int | None) -> str | None:
    return None if us is None else iso(from_us(us))


def iso_from_ms(ms: int | None) -> str | None:
    return None if ms is None else iso(from_us(ms * 1000))


def _looks_like_a_date(text: str) -> bool:
    return len(text) >= 8 and text[4:5] == "-"  # 2026-12-03…


def _from_epoch(number: float, where: str) -> datetime:
    if number < 0:
        raise ConfigError(where, "an epoch time cannot be negative", FIX, number)
    if number < _SECONDS_BELOW:
        us = round(number * 1_000_000)
    elif number < _MILLIS_BELOW:
        us = round(number * 1000)
    else:
        us = round(number)
    try:
        return from_us(us)
    except OverflowError:
        raise ConfigError(where, "the time is out of range", FIX, number) from None
