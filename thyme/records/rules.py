"""One record's fate: decoded in its source's format and validated against the dataset, then
judged against the shard's watermark and its arrival time."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from thyme.connectors.formats import CLOUDFRONT_REALTIME, CLOUDWATCH_LOGS, FormatSpec
from thyme.records.decode import INVALID_JSON, INVALID_UTF8, Accepted, RecordDecoder
from thyme.records.formats import (
    CONTROL_MESSAGE,
    DATA_MESSAGE,
    GZIP,
    INVALID_ENVELOPE,
    ZLIB,
    CloudFrontLines,
    Decompressed,
    Fanout,
    LogEvents,
    Rejected,
    compression_of,
    decompress,
    envelope_context,
)
from thyme.records.lateness import FUTURE_TIMESTAMP, LATE, LatenessPolicy
from thyme.schema import DatasetSchema

_GZIP_MAGIC: Final = b"\x1f\x8b"

Verdict = Accepted | str | Fanout
"""What :meth:`RecordRules.judge` gives for one record: a row, a dead-letter reason, or (formats
that carry many events in a record) a :class:`~thyme.records.formats.Fanout` of both."""


class RecordRules:
    """The rules of one dataset, its source's format and its lateness settings, compiled once
    per process; :attr:`judge` is the hot path.

    Re-drive passes a policy without ``max_lateness``: a watermark belongs to a position in a
    shard, which a dead letter no longer has."""

    __slots__ = (
        "_cloudfront",
        "_decode",
        "_detail",
        "_judge",
        "_logs",
        "decoder",
        "format",
        "judge",
        "lateness",
        "rejected_us",
        "schema",
    )

    def __init__(
        self, schema: DatasetSchema, lateness: LatenessPolicy, record_format: FormatSpec | None = None
    ) -> None:
        self.schema = schema
        self.format = record_format or FormatSpec()
        self.lateness = lateness
        self._judge = self.lateness.judge
        self.rejected_us = 0
        self._detail: str | None = None
        self._logs: LogEvents | None = None
        self._cloudfront: CloudFrontLines | None = None
        self.judge: Callable[[bytes, int, int | None], Verdict]
        """``judge(raw, arrival_ms, watermark_us)``: the row ``(key, event time µs, row JSON)`` if
        the record is accepted, else the reason it is a dead letter (or, for ``cloudwatch_logs``,
        a :class:`Fanout` with one of those per event, judged in order against a watermark that
        moves with them). ``arrival_ms``: Kinesis' arrival time (bounds how far ahead an event
        time may be); ``watermark_us``: the greatest event time accepted on the shard so far."""
        if self.format.name == CLOUDWATCH_LOGS:
            self._logs = LogEvents(schema)
            self.decoder = self._logs.decoder
            self.judge = self._judge_log_events
        elif self.format.name == CLOUDFRONT_REALTIME:
            assert self.format.fields is not None  # checked by KinesisSource
            self._cloudfront = CloudFrontLines(schema, self.format.fields)
            self.decoder = self._cloudfront.decoder
            self.judge = self._judge_cloudfront
        else:
            self.decoder = RecordDecoder(schema)
            self.judge = self._judge_json
        self._decode = self.decoder.decode

    def _judge_json(self, raw: bytes, arrival_ms: int, watermark_us: int | None) -> Accepted | str:
        if raw[:2] == _GZIP_MAGIC:  # a producer's gzip: decompressed before anything else
            return self._judge_compressed(raw, GZIP, arrival_ms, watermark_us)
        result = self._decode(raw)
        if isinstance(result, str):
            # zlib is looked for only once a record failed to parse: plain JSON pays nothing for it
            if result not in (INVALID_JSON, INVALID_UTF8) or compression_of(raw) is None:
                return result
            return self._judge_compressed(raw, ZLIB, arrival_ms, watermark_us)
        return self._timely(result, arrival_ms, watermark_us)

    def _judge_compressed(self, raw: bytes, kind: str, arrival_ms: int, watermark_us: int | None) -> Accepted | str:
        unpacked = decompress(raw, kind)
        if isinstance(unpacked, Decompressed):
            self._detail = unpacked.detail
            return unpacked.reason
        result = self._decode(unpacked)
        if isinstance(result, str):
            self._detail = f'{{"compression":"{kind}"}}'
            return result
        return self._timely(result, arrival_ms, watermark_us)

    def _judge_cloudfront(self, raw: bytes, arrival_ms: int, watermark_us: int | None) -> Accepted | str:
        assert self._cloudfront is not None
        result, detail = self._cloudfront.decode(raw)
        if isinstance(result, str):
            self._detail = detail
            return result
        return self._timely(result, arrival_ms, watermark_us)

    def _timely(self, row: Accepted, arrival_ms: int, watermark_us: int | None) -> Accepted | str:
        late = self._judge(row[1], arrival_ms, watermark_us)
        if late is None:
            return row
        self.rejected_us = row[1]  # for facts(): the event time of the record just rejected
        return late

    def _judge_log_events(self, raw: bytes, arrival_ms: int, watermark_us: int | None) -> Fanout | str:
        logs = self._logs
        assert logs is not None
        opened = logs.open(raw)
        if isinstance(opened, tuple):
            self._detail = opened[1]
            return opened[0]
        envelope = opened.envelope
        out = Fanout()
        if envelope.messageType == CONTROL_MESSAGE:
            out.control = True
            return out
        if envelope.messageType != DATA_MESSAGE:
            self._detail = json.dumps({"messageType": envelope.messageType})
            return INVALID_ENVELOPE
        logs.begin(envelope)
        watermark = watermark_us
        judge = self._judge
        row = logs.row
        events = opened.events
        for index in range(opened.count):
            detail = None
            if events is not None:
                result: Accepted | str = row(events[index])
            else:  # one of the events is malformed: each is decoded alone
                parsed = logs.parse(opened.raw_event(index))
                result, detail = (parsed[0], parsed[1]) if isinstance(parsed, tuple) else (row(parsed), None)
            if isinstance(result, str):
                context = envelope_context(envelope, index)
                out.append(Rejected(result, opened.raw_event(index), _merged(context, detail)))
                continue
            late = judge(result[1], arrival_ms, watermark)
            if late is None:
                out.append(result)
                if watermark is None or result[1] > watermark:
                    watermark = result[1]
                continue
            facts = self.lateness.facts(late, result[1], arrival_ms, watermark)
            out.append(
                Rejected(late, opened.raw_event(index), _merged(envelope_context(envelope, index), facts), result[1])
            )
        return out

    def judge_dead_letter(self, raw: bytes, detail: str | None, arrival_ms: int) -> Accepted | str:
        """Judge a dead letter's bytes again (re-drive), without a watermark. A CloudWatch Logs
        letter holds one event; its envelope (log group, stream, owner) comes from ``detail``."""
        if self._logs is None:
            result = self.judge(raw, arrival_ms, None)
            assert not isinstance(result, Fanout)
            return result
        try:
            known = json.loads(detail) if detail else {}
        except ValueError:
            known = {}
        parsed = self._logs.parse(raw)
        if isinstance(parsed, tuple):
            return parsed[0]
        self._logs.begin(known if isinstance(known, dict) else {})
        result = self._logs.row(parsed)
        if isinstance(result, str):
            return result
        return self._timely(result, arrival_ms, None)

    def facts(self, reason: str, arrival_ms: int, watermark_us: int | None) -> str | None:
        """The detail of the reason :attr:`judge` just gave: for ``late`` and ``future_timestamp``
        the numbers (event time, watermark or arrival, the bound: ``LatenessPolicy.facts``); for a
        format's reasons, what it found (sizes, counts, the error). Call it after every rejection
        you keep (it is cleared when read)."""
        if reason in (LATE, FUTURE_TIMESTAMP):
            return self.lateness.facts(reason, self.rejected_us, arrival_ms, watermark_us)
        detail, self._detail = self._detail, None
        return detail


def _merged(context: dict[str, Any], detail: str | None) -> str:
    """An event's envelope context with the numbers behind its reason, as one JSON object."""
    if detail:
        try:
            more = json.loads(detail)
        except ValueError:
            more = {"detail": detail}
        if isinstance(more, dict):
            context = {**more, **context}
    return json.dumps(context, separators=(",", ":"), ensure_ascii=False)
