"""The record formats AWS services put on Kinesis, decoded into rows (``thyme.connectors.formats``
names them).

* **Compressed JSON** (``json``): a record that starts with gzip's magic bytes (``1f 8b``), or
  that is not JSON and starts with a zlib header, is decompressed (:func:`decompress`, bounded),
  then decoded as JSON. Plain JSON pays next to nothing: a two-byte comparison, and a look for
  zlib only once a record failed to parse.
* **CloudWatch Logs subscription records** (``cloudwatch_logs``): a gzip-compressed envelope
  (``messageType``, ``owner``, ``logGroup``, ``logStream``, ``subscriptionFilters``,
  ``logEvents``). A ``CONTROL_MESSAGE`` (CloudWatch checking that it can write) gives no rows
  and no dead letters; each event of a ``DATA_MESSAGE`` gives one row or one dead letter
  (:class:`Fanout`), its raw bytes the event's own.
* **CloudFront real-time logs** (``cloudfront_realtime``): one line of tab-separated values in
  the configuration's field order, ``-`` for an absent value, converted by
  :meth:`RecordDecoder.convert`.

Every reason a format adds is a constant here; its numbers go in the dead letter's ``detail``
(a small JSON object that :func:`thyme.records.describe` words).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Final

import msgspec

from thyme.connectors.formats import CLOUDWATCH_ENVELOPE_FIELDS, dataset_field_name
from thyme.records.decode import INVALID_JSON, INVALID_UTF8, Accepted, RecordDecoder
from thyme.schema import DatasetSchema

MAX_DECOMPRESSED_BYTES: Final = 8 * 1024 * 1024
"""A compressed record may expand to at most 8 MiB (a Kinesis record is at most 1 MiB)…"""
MAX_RATIO: Final = 250
"""…and to at most 250 times its compressed size (JSON compresses 5-20 times, repetitive logs
rarely 100), except that any record may expand to :data:`RATIO_FREE_BYTES`."""
RATIO_FREE_BYTES: Final = 64 * 1024

DECOMPRESSED_TOO_LARGE: Final = "decompressed_too_large"
INVALID_COMPRESSION: Final = "invalid_compression"
"""Bad compressed data: a corrupt block, a wrong checksum, bytes after the end."""
TRUNCATED_COMPRESSION: Final = "truncated_compression"
"""The compressed data stops before its end."""
WRONG_FIELD_COUNT: Final = "wrong_field_count"
"""A CloudFront line without as many tab-separated values as the configuration has fields."""
INVALID_ENVELOPE: Final = "invalid_envelope"
"""Not a CloudWatch Logs subscription record (no ``messageType``, ``logEvents`` not a list, …)."""
INVALID_LOG_EVENT: Final = "invalid_log_event"
"""A log event without a string ``id``, an integer ``timestamp`` or a string ``message``."""

GZIP: Final = "gzip"
ZLIB: Final = "zlib"
_ZLIB_HEADER_CHECK: Final = 31
CONTROL_MESSAGE: Final = "CONTROL_MESSAGE"
DATA_MESSAGE: Final = "DATA_MESSAGE"


def compression_of(raw: bytes) -> str | None:
    """``gzip`` or ``zlib`` if ``raw`` starts like one, else None."""
    if raw[:2] == b"\x1f\x8b":
        return GZIP
    # zlib: deflate (CM 8), a window of at most 32 KiB, no preset dictionary, the header's check bits
    if (
        len(raw) >= 2
        and raw[0] & 0x0F == 8
        and raw[0] >> 4 <= 7
        and not raw[1] & 0x20
        and (raw[0] << 8 | raw[1]) % _ZLIB_HEADER_CHECK == 0
    ):
        return ZLIB
    return None


class Decompressed:
    """Why :func:`decompress` failed: a ``reason`` and its ``detail``."""

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def decompress(raw: bytes, kind: str) -> bytes | Decompressed:  # noqa: PLR0911 - one return per outcome
    """Decompress a gzip (every member, as ``gunzip`` does) or zlib record, never holding more than
    the bound (:data:`MAX_DECOMPRESSED_BYTES`, :data:`MAX_RATIO`) in memory: the bytes, or a
    :class:`Decompressed` with the reason it failed."""
    limit = min(MAX_DECOMPRESSED_BYTES, max(RATIO_FREE_BYTES, MAX_RATIO * len(raw)))
    engine = zlib.decompressobj(wbits=31 if kind == GZIP else 15)
    try:
        first = engine.decompress(raw, limit + 1)
    except zlib.error as exc:
        return _failed(INVALID_COMPRESSION, kind, raw, str(exc))
    if engine.eof and not engine.unused_data and len(first) <= limit:
        return first  # one member, within the bound: the common case
    parts = [first]
    size = len(first)
    while True:
        if size > limit or engine.unconsumed_tail:
            return Decompressed(
                reason=DECOMPRESSED_TOO_LARGE,
                detail=json.dumps(
                    {"compression": kind, "compressed_bytes": len(raw), "limit_bytes": limit}, separators=(",", ":")
                ),
            )
        if not engine.eof:
            return _failed(TRUNCATED_COMPRESSION, kind, raw, "the compressed data ends early")
        rest = engine.unused_data
        if not rest:
            return b"".join(parts)
        if kind != GZIP or rest[:2] != b"\x1f\x8b":
            return _failed(INVALID_COMPRESSION, kind, raw, f"{len(rest)} bytes after the end of the compressed data")
        engine = zlib.decompressobj(wbits=31)
        try:
            part = engine.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            return _failed(INVALID_COMPRESSION, kind, raw, str(exc))
        size += len(part)
        parts.append(part)


def readable(raw: bytes) -> tuple[bytes, str | None]:
    """What a record holds, to show a person: decompressed (within the same bound) if it is
    compressed and decompresses, with the compression's name; else the bytes as they are."""
    kind = compression_of(raw)
    if kind is not None:
        unpacked = decompress(raw, kind)
        if not isinstance(unpacked, Decompressed):
            return unpacked, kind
    return raw, None


def _failed(reason: str, kind: str, raw: bytes, error: str) -> Decompressed:
    detail = {"compression": kind, "compressed_bytes": len(raw), "error": error}
    return Decompressed(reason=reason, detail=json.dumps(detail, separators=(",", ":")))


class Rejected:
    """One event of a :class:`Fanout` that is a dead letter: its reason, its own raw bytes, and
    the detail (the envelope it came in, and any numbers behind the reason)."""

    __slots__ = ("detail", "raw", "reason", "ts_us")

    def __init__(self, reason: str, raw: bytes, detail: str | None, ts_us: int | None = None) -> None:
        self.reason = reason
        self.raw = raw
        self.detail = detail
        self.ts_us = ts_us

    def __repr__(self) -> str:
        return f"Rejected({self.reason!r}, {self.raw[:40]!r})"


class Fanout(list[Accepted | Rejected]):
    """What one record of a format that carries many events (CloudWatch Logs) gives: a row or a
    :class:`Rejected` per event, in order. ``control``: a control message, acknowledged and
    counted, with no events."""

    control = False


class _Event(msgspec.Struct):
    id: str
    timestamp: int
    message: str


class Envelope(msgspec.Struct):
    """A subscription record, its events decoded (the common case: one pass)."""

    messageType: str  # noqa: N815 - CloudWatch's names
    owner: str = ""
    logGroup: str = ""  # noqa: N815
    logStream: str = ""  # noqa: N815
    subscriptionFilters: list[str] = msgspec.field(default_factory=list)  # noqa: N815
    logEvents: list[_Event] = msgspec.field(default_factory=list)  # noqa: N815


class _LooseEnvelope(msgspec.Struct):
    """The same record with its events left as bytes: for a record with a malformed event, and to
    give a rejected event its own bytes."""

    messageType: str  # noqa: N815
    owner: str = ""
    logGroup: str = ""  # noqa: N815
    logStream: str = ""  # noqa: N815
    subscriptionFilters: list[str] = msgspec.field(default_factory=list)  # noqa: N815
    logEvents: list[msgspec.Raw] = msgspec.field(default_factory=list)  # noqa: N815


_typed = msgspec.json.Decoder(Envelope)
_loose = msgspec.json.Decoder(_LooseEnvelope)
_event = msgspec.json.Decoder(_Event)


class Opened:
    """A subscription record opened: its envelope, the JSON it came in, and (once asked for) each
    event's own bytes."""

    __slots__ = ("_raws", "body", "envelope", "events")

    def __init__(self, envelope: Envelope | _LooseEnvelope, body: bytes) -> None:
        self.envelope = envelope
        self.body = body
        self._raws: list[msgspec.Raw] | None = None
        self.events: list[_Event] | None = envelope.logEvents if isinstance(envelope, Envelope) else None
        """The decoded events; None when one of them is malformed (then each is decoded alone)."""
        if not isinstance(envelope, Envelope):
            self._raws = envelope.logEvents

    def raw_event(self, index: int) -> bytes:
        """Event ``index``'s bytes as they are in the record."""
        if self._raws is None:
            self._raws = _loose.decode(self.body).logEvents
        return bytes(self._raws[index])

    @property
    def count(self) -> int:
        return len(self.envelope.logEvents)


class LogEvents:
    """Decode CloudWatch Logs subscription records for one dataset."""

    def __init__(self, schema: DatasetSchema) -> None:
        names = {f.name for f in schema.fields}
        self._ts = schema.timestamp_field.name
        self._from_envelope = [
            (name, key) for name, key in CLOUDWATCH_ENVELOPE_FIELDS.items() if name in names and key != "id"
        ]
        self._id_field = "log_event_id" if "log_event_id" in names else None
        supplied = [self._ts, *(n for n, _ in self._from_envelope), *([self._id_field] if self._id_field else [])]
        self.decoder = RecordDecoder(schema, supplied=frozenset(supplied))
        self._values: list[tuple[str, str]] = []
        self._current = _Event("", 0, "")
        self._fill = self._fill_record  # bound once: the hot path passes it per event

    def open(self, raw: bytes) -> Opened | tuple[str, str | None]:
        """A record's envelope (decompressed if it is), or ``(reason, detail)``."""
        kind = compression_of(raw)
        if kind is not None:
            unpacked = decompress(raw, kind)
            if isinstance(unpacked, Decompressed):
                return unpacked.reason, unpacked.detail
            raw = unpacked
        try:
            return Opened(_typed.decode(raw), raw)
        except msgspec.ValidationError:
            pass  # an event without its fields, or not an envelope at all: see below
        except msgspec.DecodeError:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return INVALID_UTF8, None
            return INVALID_JSON, None
        try:
            return Opened(_loose.decode(raw), raw)
        except msgspec.ValidationError as exc:
            return INVALID_ENVELOPE, json.dumps({"error": str(exc)})

    def begin(self, context: Envelope | _LooseEnvelope | dict[str, Any]) -> None:
        """Take the envelope values of the events that follow (an envelope, or a dead letter's detail)."""
        get = context.get if isinstance(context, dict) else lambda key, default: getattr(context, key, default)
        self._values = [(name, str(get(key, "") or "")) for name, key in self._from_envelope]

    def parse(self, raw: bytes) -> _Event | tuple[str, str]:
        """One event's bytes decoded, or ``(invalid_log_event, detail)``."""
        try:
            return _event.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return INVALID_LOG_EVENT, json.dumps({"error": str(exc)})

    def row(self, event: _Event) -> Accepted | str:
        """The row of one event of the envelope given to :meth:`begin`, or the reason it is none."""
        self._current = event
        return self.decoder.decode(event.message.encode("utf-8", "surrogatepass"), self._fill)

    def _fill_record(self, record: Any) -> None:
        for name, value in self._values:
            setattr(record, name, value)
        event = self._current
        if self._id_field is not None:
            setattr(record, self._id_field, event.id)
        if getattr(record, self._ts) is None:
            setattr(record, self._ts, event.timestamp)


def envelope_context(envelope: Envelope | _LooseEnvelope, index: int) -> dict[str, Any]:
    """What a dead letter of event ``index`` keeps of its envelope (in its detail)."""
    return {
        "owner": envelope.owner,
        "logGroup": envelope.logGroup,
        "logStream": envelope.logStream,
        "subscriptionFilters": envelope.subscriptionFilters,
        "event_index": index,
    }


class CloudFrontLines:
    """Decode CloudFront real-time log lines for one dataset and one configuration's fields."""

    def __init__(self, schema: DatasetSchema, fields: tuple[str, ...]) -> None:
        names = {f.name for f in schema.fields}
        self.count = len(fields)
        columns = [(i, column) for i, name in enumerate(fields) if (column := dataset_field_name(name)) in names]
        self._names = [column for _, column in columns]
        indexes = [i for i, _ in columns]
        self._pick = itemgetter(*indexes) if len(indexes) > 1 else (lambda values: (values[indexes[0]],))
        self._split_at = max(indexes) + 1
        """Only the columns up to the last one the dataset uses are split out (the count is checked first)."""
        self.decoder = RecordDecoder(schema)
        self._convert: Callable[[dict[str, str | None]], Accepted | str] = self.decoder.convert

    def decode(self, raw: bytes) -> tuple[Accepted | str, str | None]:
        """A row or the reason, and the reason's detail."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return INVALID_UTF8, None
        if line.endswith("\n"):
            line = line[:-2] if line.endswith("\r\n") else line[:-1]
        got = line.count("\t") + 1
        if got != self.count:
            return WRONG_FIELD_COUNT, f'{{"expected_fields":{self.count},"got_fields":{got}}}'
        picked = self._pick(line.split("\t", self._split_at))
        if "-" in picked:  # an absent value: None, which a required field refuses as missing
            return self._convert({n: None if v == "-" else v for n, v in zip(self._names, picked, strict=True)}), None
        return self._convert(dict(zip(self._names, picked, strict=True))), None
