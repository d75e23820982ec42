"""KPL-aggregated records, taken apart as the KCL does before the child sees them.

A KPL producer may pack many user records into one Kinesis record: the magic bytes
``F3 89 9A C2``, a protocol-buffers ``AggregatedRecord`` (``partition_key_table`` = 1,
``explicit_hash_key_table`` = 2, ``records`` = 3; each record ``partition_key_index`` = 1,
``explicit_hash_key_index`` = 2, ``data`` = 3, ``tags`` = 4), then the MD5 of that message. The
daemon hands the child each user record with its index as the sub-sequence number; a record
whose checksum does not match is passed on whole, as a plain record. ``thyme kinesis preflight``
reads the stream itself, so it does the same here (a few dozen lines: no protobuf runtime).
"""

from __future__ import annotations

import hashlib
from typing import Final

MAGIC: Final = b"\xf3\x89\x9a\xc2"
_DIGEST: Final = 16


class _MalformedError(Exception):
    pass


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(buf) or shift > 63:
            raise _MalformedError
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """``(field number, value)`` of a protobuf message: varints and length-delimited bytes."""
    out: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(buf):
        key, at = _varint(buf, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(buf, at)
            out.append((number, value))
        elif wire == 2:
            size, at = _varint(buf, at)
            if at + size > len(buf):
                raise _MalformedError
            out.append((number, buf[at : at + size]))
            at += size
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            raise _MalformedError
    if at != len(buf):
        raise _MalformedError
    return out


def deaggregate(data: bytes, partition_key: str) -> list[tuple[bytes, str]] | None:
    """The user records ``(data, partition key)`` of an aggregated record, in sub-sequence order;
    None if ``data`` is not one (then it is a plain record, as the KCL treats it)."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _DIGEST:
        return None
    message, digest = data[len(MAGIC) : -_DIGEST], data[-_DIGEST:]
    if hashlib.md5(message, usedforsecurity=False).digest() != digest:
        return None
    try:
        keys: list[str] = []
        records: list[tuple[bytes, int]] = []
        for number, value in _fields(message):
            if number == 1 and isinstance(value, bytes):
                keys.append(value.decode("utf-8", "replace"))
            elif number == 3 and isinstance(value, bytes):
                index, body = 0, b""
                for inner, item in _fields(value):
                    if inner == 1 and isinstance(item, int):
                        index = item
                    elif inner == 3 and isinstance(item, bytes):
                        body = item
                records.append((body, index))
    except _MalformedError:
        return None
    return [(body, keys[i] if i < len(keys) else partition_key) for body, i in records]
