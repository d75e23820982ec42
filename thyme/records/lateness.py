"""Lateness and clock-skew decisions against a shard's watermark.

The watermark is the greatest event time accepted so far on the shard. A record is *late*
when its event time is earlier than ``watermark - max_lateness``; it is *from the future*
when its event time is more than ``max_future_skew`` ahead of its Kinesis arrival time.
Neither is applied and neither moves the watermark, so a producer with a wrong clock
cannot make every later record late. Decisions depend only on the stored watermark and the
records in stream order, so a restart or a lease move decides the same way.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from thyme.duration import format_duration
from thyme.times import from_us, iso

LATE: Final = "late"
FUTURE_TIMESTAMP: Final = "future_timestamp"


def _us(value: timedelta) -> int:
    return value // timedelta(microseconds=1)


class LatenessPolicy:
    """``max_lateness`` (None: nothing is late) and ``max_future_skew`` of a source."""

    __slots__ = ("_lateness_us", "_skew_us", "max_future_skew", "max_lateness")

    def __init__(self, max_lateness: timedelta | None, max_future_skew: timedelta) -> None:
        self.max_lateness = max_lateness
        self.max_future_skew = max_future_skew
        self._lateness_us = None if max_lateness is None else _us(max_lateness)
        self._skew_us = _us(max_future_skew)

    def judge(self, ts_us: int, arrival_ms: int, watermark_us: int | None) -> str | None:
        """The reason a record with event time ``ts_us`` is rejected, or None if it is accepted."""
        if ts_us > arrival_ms * 1000 + self._skew_us:
            return FUTURE_TIMESTAMP
        lateness = self._lateness_us
        if lateness is not None and watermark_us is not None and ts_us < watermark_us - lateness:
            return LATE
        return None

    def facts(self, reason: str, ts_us: int, arrival_ms: int, watermark_us: int | None) -> str | None:
        """The numbers behind ``reason`` (:meth:`judge`'s verdict on ``ts_us``) as a small JSON
        object, stored beside the reason; :func:`describe` words it for people. Numbers only, so
        that it costs a late record a fraction of a microsecond (a backlog can be 10% late)."""
        if reason == LATE and watermark_us is not None:
            return f'{{"event_time_us":{ts_us},"watermark_us":{watermark_us},"max_lateness_us":{self._lateness_us}}}'
        if reason == FUTURE_TIMESTAMP:
            return f'{{"event_time_us":{ts_us},"arrival_ms":{arrival_ms},"max_future_skew_us":{self._skew_us}}}'
        return None


def describe_lateness(known: dict[str, Any]) -> str | None:
    """:meth:`LatenessPolicy.facts` (parsed) in words: "event time … is 9m behind the shard's
    watermark …; max_lateness is 5m"; None if ``known`` holds no such numbers."""
    if "event_time_us" not in known:
        return None
    try:
        ts = known["event_time_us"]
        if "watermark_us" in known:
            behind = timedelta(microseconds=known["watermark_us"] - ts)
            return (
                f"event time {iso(from_us(ts))} is {format_duration(behind)} behind the shard's watermark "
                f"{iso(from_us(known['watermark_us']))}; max_lateness is "
                f"{format_duration(timedelta(microseconds=known['max_lateness_us']))}"
            )
        ahead = timedelta(microseconds=ts - known["arrival_ms"] * 1000)
        return (
            f"event time {iso(from_us(ts))} is {format_duration(ahead)} after the record's arrival "
            f"{iso(from_us(known['arrival_ms'] * 1000))}; max_future_skew is "
            f"{format_duration(timedelta(microseconds=known['max_future_skew_us']))}"
        )
    except (ValueError, KeyError, TypeError, OverflowError):
        return None
