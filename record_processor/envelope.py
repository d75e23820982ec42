"""The daemon's ``processRecords`` message, decoded in one pass.

amazon-kclpy parses every line with ``json.loads`` and an object hook that builds a
``Record`` per record (and a local-time datetime), then each record's base64 is decoded
separately. For a 10,000-record line that is most of the child's time. Here one msgspec
decoder turns the whole line into typed :class:`InputRecord` objects, base64 included (in
C, strictly). The daemon never sends bad base64, but if a record has it, the line is decoded
again leniently and only that record is marked, so it alone becomes a dead letter.
"""

from __future__ import annotations

import binascii
import json

import msgspec

_RENAME = {
    "partition_key": "partitionKey",
    "sequence": "sequenceNumber",
    "sub_sequence": "subSequenceNumber",
    "arrival_ms": "approximateArrivalTimestamp",
}


class InputRecord(msgspec.Struct, rename=_RENAME):
    """A record as delivered by the daemon, its payload already base64-decoded."""

    data: bytes
    """The record's bytes; with ``base64_error``, the undecodable base64 text as delivered."""
    partition_key: str
    sequence: str
    sub_sequence: int = 0
    """KPL sub-sequence number (0 for records that were not aggregated)."""
    arrival_ms: int | None = None
    """Kinesis approximate arrival time, ms since the epoch."""
    base64_error: bool = False


class _LenientRecord(msgspec.Struct, rename=_RENAME):
    data: str
    partition_key: str
    sequence: str
    sub_sequence: int = 0
    arrival_ms: int | None = None


class ProcessRecords(msgspec.Struct, rename={"millis_behind_latest": "millisBehindLatest"}):
    records: list[InputRecord]
    millis_behind_latest: int | None = None


class _LenientProcessRecords(msgspec.Struct, rename={"millis_behind_latest": "millisBehindLatest"}):
    records: list[_LenientRecord]
    millis_behind_latest: int | None = None


_strict = msgspec.json.Decoder(ProcessRecords)
_lenient = msgspec.json.Decoder(_LenientProcessRecords)


def from_base64(
    data: str, partition_key: str, sequence: str, sub_sequence: int | None, arrival_ms: int | None
) -> InputRecord:
    """An :class:`InputRecord` from base64 text, marked ``base64_error`` if it does not decode
    strictly (characters outside the alphabet, bad padding)."""
    try:
        raw, bad = binascii.a2b_base64(data, strict_mode=True), False
    except (binascii.Error, ValueError):
        raw, bad = data.encode("utf-8", "surrogatepass"), True  # any str, losslessly
    return InputRecord(raw, partition_key, sequence, sub_sequence or 0, arrival_ms, bad)


def decode_process_records(line: str | bytes) -> ProcessRecords:
    """Decode a whole ``processRecords`` line. Raises ``msgspec.DecodeError`` only if the line
    itself is not a valid message (which the daemon never sends)."""
    try:
        return _strict.decode(line)
    except msgspec.DecodeError:  # a ValidationError: some record's data is not base64
        pass
    try:
        loose = _lenient.decode(line)
    except msgspec.DecodeError:  # e.g. a lone surrogate escape in a data field, which Python's json reads
        loose = msgspec.convert(json.loads(line), _LenientProcessRecords)
    return ProcessRecords(
        [from_base64(r.data, r.partition_key, r.sequence, r.sub_sequence, r.arrival_ms) for r in loose.records],
        loose.millis_behind_latest,
    )
