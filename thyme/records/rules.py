"""One record's fate: decoded and validated against the dataset, then judged against the shard's
watermark and its arrival time."""

from __future__ import annotations

from thyme.records.decode import Accepted, RecordDecoder
from thyme.records.lateness import LatenessPolicy
from thyme.schema import DatasetSchema


class RecordRules:
    """The rules of one dataset and its source's lateness settings, compiled once per process;
    :meth:`judge` is the hot path.

    Re-drive passes a policy without ``max_lateness``: a watermark belongs to a position in a
    shard, which a dead letter no longer has."""

    __slots__ = ("_decode", "_judge", "decoder", "lateness", "rejected_us", "schema")

    def __init__(self, schema: DatasetSchema, lateness: LatenessPolicy) -> None:
        self.schema = schema
        self.decoder = RecordDecoder(schema)
        self.lateness = lateness
        self._decode = self.decoder.decode
        self._judge = self.lateness.judge
        self.rejected_us = 0

    def judge(self, raw: bytes, arrival_ms: int, watermark_us: int | None) -> Accepted | str:
        """The row ``(key, event time µs, row JSON)`` if the record is accepted, else the reason it
        is a dead letter. ``arrival_ms``: Kinesis' arrival time (bounds how far ahead an event
        time may be); ``watermark_us``: the greatest event time accepted on the shard so far."""
        result = self._decode(raw)
        if isinstance(result, str):
            return result
        late = self._judge(result[1], arrival_ms, watermark_us)
        if late is None:
            return result
        self.rejected_us = result[1]  # for facts(): the event time of the record just rejected
        return late

    def facts(self, reason: str, arrival_ms: int, watermark_us: int | None) -> str | None:
        """The numbers behind the ``late`` or ``future_timestamp`` verdict :meth:`judge` just gave
        (the event time, the watermark or arrival, the bound: ``LatenessPolicy.facts``), or None."""
        return self.lateness.facts(reason, self.rejected_us, arrival_ms, watermark_us)
