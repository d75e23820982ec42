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
from typing import Final

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

    def explain(self, ts_us: int, arrival_ms: int, watermark_us: int | None) -> str | None:
        """Why :meth:`judge` rejects the record, with the numbers (None if it accepts it). Off the
        hot path: only for records already rejected, to store beside their reason."""
        reason = self.judge(ts_us, arrival_ms, watermark_us)
        if reason == FUTURE_TIMESTAMP:
            ahead = timedelta(microseconds=ts_us - arrival_ms * 1000)
            return (
                f"event time {iso(from_us(ts_us))} is {format_duration(ahead)} after the record's arrival "
                f"{iso(from_us(arrival_ms * 1000))}; max_future_skew is {format_duration(self.max_future_skew)}"
            )
        if reason == LATE and watermark_us is not None and self.max_lateness is not None:
            behind = timedelta(microseconds=watermark_us - ts_us)
            return (
                f"event time {iso(from_us(ts_us))} is {format_duration(behind)} behind the shard's watermark "
                f"{iso(from_us(watermark_us))}; max_lateness is {format_duration(self.max_lateness)}"
            )
        return None
