"""Strict decoding of one Kinesis record into a dataset row.

base64 (strict alphabet) → UTF-8 → exactly one JSON object (msgspec, which rejects lone
surrogates, NaN/Infinity, a BOM and trailing data) → the dataset's fields, by name, with
their types (extra keys ignored) → timestamps normalised to UTC.

Each record's fate is a value: an :data:`Accepted` row or a reason string for a dead letter. The
decoder is compiled once per process from the :class:`~thyme.dataset.DatasetSchema`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Final

import msgspec

from thyme.dataset import DatasetSchema, TypeSpec

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
_Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_PATH: Final = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING_FIELD: Final = re.compile(r"Object missing required field `(?P<name>[^`]+)`")

# Reasons for dead letters (``schema: <field>: <what>`` is built per record).
INVALID_BASE64: Final = "invalid_base64"
INVALID_UTF8: Final = "invalid_utf8"
INVALID_JSON: Final = "invalid_json"
NOT_AN_OBJECT: Final = "not_an_object"


class InvalidValueError(Exception):
    """Raised inside the decoder for a value that fails a check msgspec cannot express."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"schema: {path}: {what}")


Accepted = tuple[str | int, int, str]
"""A record that decoded and validated: ``(key, event time in µs UTC, row JSON)`` — a plain
tuple, which is what the store inserts (no per-record object on the hot path)."""


def to_utc_us(value: datetime | int | float, path: str) -> tuple[datetime, int]:
    """An aware datetime or an epoch number (s, ms, µs or ns, by magnitude) → (UTC datetime, µs).

    Magnitudes: below 1e11 seconds (until year 5138), below 1e14 milliseconds, below 1e17
    microseconds, else nanoseconds. A naive datetime is invalid: say the zone.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidValueError(path, 'timestamp has no time zone; add "Z" or an offset such as "+00:00"')
        moment = value if value.tzinfo is UTC else value.astimezone(UTC)
        return moment, (moment - EPOCH) // _ONE_US
    magnitude = abs(value)
    if magnitude < 1e11:
        us = value * 1_000_000
    elif magnitude < 1e14:
        us = value * 1_000
    elif magnitude < 1e17:
        us = value
    else:
        us = value / 1_000
    us = int(us) if isinstance(us, int) else round(us)
    try:
        return EPOCH + timedelta(microseconds=us), us
    except OverflowError:
        raise InvalidValueError(path, "epoch timestamp out of range") from None


def _normaliser(spec: TypeSpec, path: str) -> Callable[[Any], Any] | None:
    """A function that converts a decoded value into its stored form, or None if it is already."""
    if spec.kind == "datetime":

        def norm_dt(value: Any) -> Any:
            return None if value is None else to_utc_us(value, path)[0]

        return norm_dt
    if spec.item is not None:
        inner = _normaliser(spec.item, f"{path}[]")
        if inner is None:
            return None
        if spec.kind == "list":
            return lambda value: None if value is None else [inner(v) for v in value]
        return lambda value: None if value is None else {k: inner(v) for k, v in value.items()}
    return None


def _msgspec_type(spec: TypeSpec) -> Any:
    base: Any
    if spec.kind == "list":
        assert spec.item is not None
        base = list[_msgspec_type(spec.item)]  # type: ignore[misc]
    elif spec.kind == "dict":
        assert spec.item is not None
        base = dict[str, _msgspec_type(spec.item)]  # type: ignore[misc]
    else:
        base = {
            "str": str,
            "int": _Int64,
            "float": float,
            "bool": bool,
            "date": date,
            "datetime": datetime | _Int64 | float,
        }[spec.kind]
    return base | None if spec.optional else base


def _reason(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    missing = _MISSING_FIELD.fullmatch(text)
    if missing:
        return f"schema: {missing['name']}: missing"
    match = _PATH.match(text)
    assert match is not None  # the pattern matches any text
    path = (match["path"] or "").lstrip(".")
    what = match["what"].replace("`", "")
    if not path:
        return NOT_AN_OBJECT if what.startswith("Expected object") else f"schema: {what}"
    return f"schema: {path}: {what[:1].lower()}{what[1:]}"


class RecordDecoder:
    """Decode records for one dataset. Build once per process; :meth:`decode` is the hot path."""

    def __init__(self, schema: DatasetSchema) -> None:
        self.schema = schema
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for f in schema.fields:
            kind = _msgspec_type(f.type)
            fields.append((f.name, kind, None) if f.type.optional else (f.name, kind))
        # Required fields first (a struct's defaults must come last); names are unaffected.
        fields.sort(key=len)
        self._struct = msgspec.defstruct(f"{schema.name}Record", fields)
        self._decoder = msgspec.json.Decoder(self._struct)
        self._encode = msgspec.json.Encoder().encode
        self._key = schema.key_field.name
        self._ts = schema.timestamp_field.name
        self._others = [
            (f.name, norm)
            for f in schema.fields
            if not f.timestamp and (norm := _normaliser(f.type, f.name)) is not None
        ]

    def decode(self, raw: bytes) -> Accepted | str:
        """Decode one record's bytes; an :data:`Accepted` row or the dead-letter reason."""
        try:
            record = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            return _reason(exc)
        except UnicodeDecodeError:
            return INVALID_UTF8
        except msgspec.DecodeError:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return INVALID_UTF8
            return INVALID_JSON
        try:
            moment, ts_us = to_utc_us(getattr(record, self._ts), self._ts)
            setattr(record, self._ts, moment)
            for name, norm in self._others:
                setattr(record, name, norm(getattr(record, name)))
        except InvalidValueError as exc:
            return str(exc)
        return (getattr(record, self._key), ts_us, self._encode(record).decode())
