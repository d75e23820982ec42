"""The bad-input corpus: records that must each become exactly one dead letter with a precise
reason (or, for the few boundary cases marked accepted, exactly one row), never a failed batch.

``manifest.json`` lists every case in order: its ``name``, the expected ``reason`` (``null``:
accepted), ``why``, and where its bytes come from:

* ``file``: the record's exact bytes, in ``cases/`` (kept as files: byte-level cases such as
  invalid UTF-8 or a BOM must not pass through a text editor or a JSON encoder);
* ``generate``: built by :data:`GENERATORS` (~1 MiB and deeply nested records);
* ``base64``: not bytes at all but the text of the envelope's ``data`` field, which is not
  valid base64. The daemon never sends that, so these cases only go over the multilang pipes.

The cases target the ``Sample`` dataset of :data:`APP` (every field type, ``max_lateness="5m"``).
Every record uses event time 2024-05-01T12:00:00Z (:data:`T0`), so a valid record is neither
late nor early next to :func:`valid_record`, whatever the arrival time.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
T0: Final = datetime(2024, 5, 1, 12, tzinfo=UTC)
KINESIS_MAX_BYTES: Final = 1024 * 1024
BIG: Final = KINESIS_MAX_BYTES - 256
"""Size of the ~1 MiB cases: Kinesis' limit, less room for the partition key."""
DEPTH: Final = 5000
"""Nesting of the too-deep cases; the decoder's limit is Python's recursion limit (~1,000)."""

APP: Final = """\
from datetime import date, datetime

from thyme import Field, dataset, field
from thyme.connectors import KinesisSource, source


@source(KinesisSource(stream_arn={arn!r}, init_position="trim_horizon"), max_lateness="5m")
@dataset(index=True)
class Sample:
    user_id: Field[str] = field(key=True)
    n: Field[int] = field()
    amount: Field[float] = field()
    paid: Field[bool] = field()
    day: Field[date] = field()
    coupon: Field[str | None] = field()
    items: Field[list[str]] = field()
    attrs: Field[dict[str, int]] = field()
    seen: Field[list[datetime]] = field()
    timestamp: Field[datetime] = field(timestamp=True)
"""
"""A user's module with the ``Sample`` dataset on the stream ``arn``."""


STREAM: Final = "arn:aws:kinesis:us-east-1:123456789012:stream/badinput"


def write_app(folder: Path, arn: str = STREAM) -> Path:
    """Write :data:`APP` for ``arn`` into ``folder``; returns the file (``<file>:Sample``)."""
    path = folder / "badinput_app.py"
    path.write_text(APP.format(arn=arn))
    return path


def document(user_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid ``Sample`` record as a dict, with ``overrides``."""
    body: dict[str, Any] = {
        "user_id": user_id,
        "n": 1,
        "amount": 9.5,
        "paid": True,
        "day": "2024-05-01",
        "coupon": None,
        "items": ["a", "b"],
        "attrs": {"k": 1},
        "seen": ["2024-05-01T12:00:00Z"],
        "timestamp": "2024-05-01T12:00:00Z",
    }
    body.update(overrides)
    return body


def valid_record(n: int) -> bytes:
    """The ``n``-th valid record (key ``v<n>``), ``n`` ms after :data:`T0`."""
    at = (T0 + timedelta(milliseconds=n)).isoformat().replace("+00:00", "Z")
    return json.dumps(document(f"v{n}", n=n, timestamp=at)).encode()


def _padded(name: str, field: str, size: int) -> bytes:
    """A valid record of exactly ``size`` bytes: ``field`` (a string) padded with ``x``."""
    empty = json.dumps(document(name, **{field: ""})).encode()
    return json.dumps(document(name, **{field: "x" * (size - len(empty))})).encode()


def _big_key() -> bytes:
    empty = json.dumps(document("")).encode()
    return json.dumps(document("k" * (BIG - len(empty)))).encode()


def _big_truncated() -> bytes:
    start = b'{"user_id": "bad-big_truncated", "coupon": "'
    return start + b"x" * (BIG - len(start))


def _nested(user_id: str, depth: int, opening: bytes, closing: bytes, inner: bytes = b"") -> bytes:
    head = json.dumps(document(user_id)).encode()[:-1]
    return head + b', "deep": ' + opening * depth + inner + closing * depth + b"}"


def _gzip_bomb() -> bytes:
    """256 MiB of spaces inside a JSON object, gzip-compressed to ~250 KiB."""
    engine = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1 << 20)
    parts = [engine.compress(b'{"user_id": "bad-bomb", "pad": "')]
    parts += [engine.compress(chunk) for _ in range(256)]
    parts.append(engine.compress(b'"}'))
    parts.append(engine.flush())
    return b"".join(parts)


def _gzipped(name: str) -> bytes:
    return gzip.compress(json.dumps(document(name)).encode(), mtime=0)


def _two_members() -> bytes:
    body = json.dumps(document("ok-gzip_two_members")).encode()
    return gzip.compress(body[:7], mtime=0) + gzip.compress(body[7:], mtime=0)


def _bad_crc() -> bytes:
    whole = bytearray(_gzipped("bad-gzip_bad_crc"))
    whole[-6] ^= 0xFF
    return bytes(whole)


GENERATORS: Final[dict[str, Callable[[], bytes]]] = {
    "gzip_valid": lambda: _gzipped("ok-gzip_valid"),
    "zlib_valid": lambda: zlib.compress(json.dumps(document("ok-zlib_valid")).encode()),
    "gzip_two_members": _two_members,
    "gzip_invalid_json": lambda: gzip.compress(b'{"user_id": "bad-gzip_invalid_json", ', mtime=0),
    "gzip_schema_error": lambda: gzip.compress(json.dumps(document("bad-gzip_schema", n="7")).encode(), mtime=0),
    "gzip_truncated": lambda: _gzipped("bad-gzip_truncated")[:-12],
    "gzip_bad_crc": _bad_crc,
    "gzip_trailing_bytes": lambda: _gzipped("bad-gzip_trailing") + b"\x00\x00",
    "gzip_bomb": _gzip_bomb,
    "zlib_ratio_bomb": lambda: zlib.compress(json.dumps(document("bad-zlib_ratio", coupon="x" * 300_000)).encode()),
    "big_truncated": _big_truncated,
    "big_valid": lambda: _padded("ok-big_valid", "coupon", BIG),
    "big_key": _big_key,
    "deep_array_in_ignored_key": lambda: _nested("bad-deep_array", DEPTH, b"[", b"]"),
    "deep_object_in_ignored_key": lambda: _nested("bad-deep_object", DEPTH, b'{"a": ', b"}", b"1"),
    "deep_top_level": lambda: b"[" * DEPTH + b"]" * DEPTH,
    "nested_50_ok": lambda: _nested("ok-nested_50_ok", 50, b"[", b"]"),
}


@dataclass(frozen=True)
class Case:
    """One bad input and what must become of it."""

    name: str
    reason: str | None
    """The dead letter's exact reason; None: accepted as a row (a boundary case)."""
    why: str
    raw: bytes | None
    """The record's bytes; None for an envelope-level case (see ``base64``)."""
    base64: str | None = None
    """The envelope's ``data`` text for an invalid-base64 case (its dead letter keeps these bytes)."""

    @property
    def stored_bytes(self) -> bytes:
        """The bytes its dead letter (or row) must keep."""
        if self.raw is not None:
            return self.raw
        assert self.base64 is not None
        return self.base64.encode()

    @property
    def accepted_key(self) -> str:
        """The key under which an accepted case's row is found."""
        assert self.raw is not None
        raw = self.raw
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        elif raw[:1] == b"x":
            raw = zlib.decompress(raw)
        key = json.loads(raw, parse_int=str)["user_id"]
        assert isinstance(key, str)
        return key


def load_corpus() -> list[Case]:
    """Every case of ``manifest.json``, in order."""
    manifest = json.loads((HERE / "manifest.json").read_text(encoding="utf-8"))
    cases: list[Case] = []
    for entry in manifest["cases"]:
        raw: bytes | None = None
        if "file" in entry:
            raw = (HERE / entry["file"]).read_bytes()
        elif "generate" in entry:
            raw = GENERATORS[entry["generate"]]()
        cases.append(Case(entry["name"], entry["reason"], entry["why"], raw, entry.get("base64")))
    return cases


def record_cases() -> list[Case]:
    """The cases that are record bytes (everything a producer can put on a stream)."""
    return [c for c in load_corpus() if c.raw is not None]
