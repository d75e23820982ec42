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
