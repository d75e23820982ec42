"""Strict decoding of one Kinesis record into a dataset row.

base64 (strict alphabet) → UTF-8 → exactly one JSON object (msgspec, which rejects lone
surrogates, NaN/Infinity, a BOM and trailing data) → the dataset's fields, by name, with
their types (extra keys ignored), each field given once → timestamps normalised to UTC.

The checks keep that order: a document that is not UTF-8 JSON is ``invalid_utf8`` or
``invalid_json`` even where a field before the bad byte has the wrong type or where the bad
bytes are in a key that is ignored. JSON lets an object repeat a key (msgspec keeps the last
one); a record that gives a dataset field, or a key of a ``dict`` field, twice is ambiguous and
becomes ``schema: <field>: duplicate key``. Detecting that costs a few ``bytes.count`` calls per
record; only a record where a key may repeat is parsed again to be sure. A key that no store can
index (a NUL character, more than :data:`MAX_KEY_BYTES` bytes) is a dead letter too, never a
batch the store keeps refusing.

Each record's fate is a value: an :data:`Accepted` row or a reason string for a dead letter. The
decoder is compiled once per process from the :class:`~thyme.schema.DatasetSchema`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Final

import msgspec

from thyme.schema import DatasetSchema, TypeSpec

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
_Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_PATH: Final = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING_FIELD: Final = re.compile(r"Object missing required field `(?P<name>[^`]+)`")
_MAX_KEY_COUNTS: Final = 32
"""Past this many dict keys, a record is checked for repeated keys by one linear parse."""
MAX_KEY_BYTES: Final = 2048
"""Longest key (UTF-8 bytes) accepted: PostgreSQL's btree refuses index entries over ~2.7 kB."""
_MAX_KEY_CHARS_UNCHECKED: Final = MAX_KEY_BYTES // 4
_BACKSLASH: Final = ord("\\")
_SKIP_JSON: Final = msgspec.json.Decoder(msgspec.Raw)
"""Checks that bytes are one JSON document (any numbers, strings not checked for UTF-8)."""

# Reasons for dead letters (``schema: <field>: <what>`` is built per record).
INVALID_BASE64: Final = "invalid_base64"
INVALID_UTF8: Final = "invalid_utf8"
INVALID_JSON: Final = "invalid_json"
NOT_AN_OBJECT: Final = "not_an_object"
TOO_DEEPLY_NESTED: Final = "too_deeply_nested"
"""Arrays/objects nested deeper than the parser's recursion limit (about 1,000 levels)."""


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
        try:
            moment = value if value.tzinfo is UTC else value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise InvalidValueError(path, "timestamp out of range (years 1 to 9999 in UTC)") from None
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
        return EPOCH + timedelta(0, 0, us), us  # positional: 0.3 us faster than microseconds=
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


def _dict_keys(spec: TypeSpec) -> Callable[[Any], Iterator[str]] | None:
    """A function yielding every key of every dict inside a decoded value, or None if the type
    holds no dict."""
    if spec.item is None:
        return None
    inner = _dict_keys(spec.item)
    if spec.kind == "dict":

        def dict_keys(value: Any) -> Iterator[str]:
            if value is not None:
                yield from value
                if inner is not None:
                    for item in value.values():
                        yield from inner(item)

        return dict_keys
    if inner is None:
        return None
    list_inner = inner

    def list_keys(value: Any) -> Iterator[str]:
        if value is not None:
            for item in value:
                yield from list_inner(item)

    return list_keys


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its ``(key, value)`` pairs, in document order (repeats kept)."""


def _repeated_in(value: Any, spec: TypeSpec, path: str) -> str | None:
    """The path of the first dict inside ``value`` (parsed into :class:`_Pairs`) that repeats a key."""
    if spec.item is None or value is None:
        return None
    if spec.kind == "dict":
        assert isinstance(value, _Pairs)
        names = [name for name, _ in value]
        if len(set(names)) != len(names):
            return path
        items = [(f"{path}[...]", item) for _, item in value]
    else:
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    for item_path, item in items:
        found = _repeated_in(item, spec.item, item_path)
        if found is not None:
            return found
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


def _not_json(raw: bytes) -> str | None:
    """The reason ``raw`` is not one JSON document (invalid UTF-8 or JSON, too deep), or None."""
    try:
        _SKIP_JSON.decode(raw)
    except RecursionError:
        return _utf8_or(raw, TOO_DEEPLY_NESTED)
    except msgspec.DecodeError:
        return _utf8_or(raw, INVALID_JSON)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return INVALID_UTF8
    return None


def _utf8_or(raw: bytes, reason: str) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return INVALID_UTF8
    return reason


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

    def __init__(self, schema: DatasetSchema, supplied: frozenset[str] = frozenset()) -> None:
        """``supplied``: fields a record may leave out because its format fills them (``fill``)."""
        self.schema = schema
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for f in schema.fields:
            kind = _msgspec_type(f.type)
            if f.name in supplied and not f.type.optional:
                kind = kind | None
            fields.append((f.name, kind, None) if f.type.optional or f.name in supplied else (f.name, kind))
        # Required fields first (a struct's defaults must come last); names are unaffected.
        fields.sort(key=len)
        self._struct = msgspec.defstruct(f"{schema.name}Record", fields)
        self._decoder = msgspec.json.Decoder(self._struct)
        self._encode = msgspec.json.Encoder().encode
        self._key = schema.key_field.name
        self._str_key = schema.key_field.type.kind == "str"
        self._ts = schema.timestamp_field.name
        self._fields = {f.name: f.type for f in schema.fields}
        self._quoted = tuple(b'"' + f.name.encode() + b'"' for f in schema.fields)
        self._dict_keys = [(f.name, keys) for f in schema.fields if (keys := _dict_keys(f.type)) is not None]
        self._others = [
            (f.name, norm)
            for f in schema.fields
            if not f.timestamp and (norm := _normaliser(f.type, f.name)) is not None
        ]
        self._finite = [f.name for f in schema.fields if f.type.kind == "float"]

    def decode(self, raw: bytes, fill: Callable[[Any], None] | None = None) -> Accepted | str:
        """Decode one record's bytes; an :data:`Accepted` row or the dead-letter reason.

        ``fill``, if given, sets the values a format supplies itself (a CloudWatch Logs envelope's
        log group, an event's timestamp) on the decoded record before it is checked."""
        try:
            record = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            return _not_json(raw) or _reason(exc)
        except (UnicodeDecodeError, msgspec.DecodeError, RecursionError) as exc:
            return _utf8_or(raw, TOO_DEEPLY_NESTED if isinstance(exc, RecursionError) else INVALID_JSON)
        if not raw.isascii():  # msgspec does not check the UTF-8 of keys and values it skips
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return INVALID_UTF8
        reason = None
        # The first test of _may_repeat_a_key, inlined: this is the hot path.
        suspect = _BACKSLASH in raw or self._dict_keys  # an int needle: memchr, 10x faster than b"\\"
        if not suspect:
            count = raw.count
            for quoted in self._quoted:
                if count(quoted) > 1:
                    suspect = True
                    break
        if suspect and self._may_repeat_a_key(raw, record):
            reason = self._repeated_key(raw)
        if fill is not None:
            fill(record)
        return self._finish(record, reason)

    def convert(self, values: dict[str, str | None]) -> Accepted | str:
        """A row from text values by field name (a CloudFront line's columns; None: sent as
        ``-``), each converted to its field's type as strictly as JSON would be decoded: digits
        for an int, a finite number for a float, ``true``/``false`` (or ``1``/``0``) for a bool,
        an ISO date, an ISO time with a zone or an epoch number for a datetime."""
        try:
            record = msgspec.convert(values, self._struct, strict=False)
        except msgspec.ValidationError as exc:
            return _text_reason(exc, values)
        for name in self._finite:
            value = getattr(record, name)
            if value is not None and not math.isfinite(value):
                return f"schema: {name}: expected a finite number, got {_shown(values.get(name))}"
        return self._finish(record, None)

    def _finish(self, record: Any, reason: str | None) -> Accepted | str:
        """The checks every decoded record goes through, then the row."""
        key = getattr(record, self._key)
        if self._str_key and (len(key) > _MAX_KEY_CHARS_UNCHECKED or "\x00" in key):
            reason = reason or _unusable_key(key, self._key)
        if reason is not None:
            return reason
        try:
            moment, ts_us = to_utc_us(getattr(record, self._ts), self._ts)
            setattr(record, self._ts, moment)
            for name, norm in self._others:
                setattr(record, name, norm(getattr(record, name)))
        except InvalidValueError as exc:
            return str(exc)
        return (key, ts_us, self._encode(record).decode())

    def _may_repeat_a_key(self, raw: bytes, record: Any) -> bool:
        """False if no field and no key of a dict field can occur twice in ``raw`` (the hot path).

        Without escapes in keys, a key's bytes are its name in quotes, so a repeated key makes
        that quoted name occur at least twice. (Occurring twice, as a value or a nested key,
        does not mean it repeats: :meth:`_repeated_key` decides.)
        """
        if _BACKSLASH in raw:
            return True  # an escaped key could spell a field's name: let the linear parse decide
        count = raw.count
        for quoted in self._quoted:
            if count(quoted) > 1:
                return True
        checks = 0
        for name, keys in self._dict_keys:
            for key in keys(getattr(record, name)):
                checks += 1
                if checks > _MAX_KEY_COUNTS or count(b'"' + key.encode() + b'"') > 1:
                    return True  # many keys: one count each would be quadratic; parse once instead
        return False

    def _repeated_key(self, raw: bytes) -> str | None:
        """``schema: <path>: duplicate key`` if a field, or a key of a dict field, is repeated."""
        try:
            pairs = json.loads(raw, object_pairs_hook=_Pairs, parse_int=str, parse_float=str)
        except RecursionError:
            return TOO_DEEPLY_NESTED
        assert isinstance(pairs, _Pairs)  # msgspec decoded it as an object
        seen: set[str] = set()
        last: dict[str, Any] = {}
        for name, value in pairs:
            if name in self._fields:
                if name in seen:
                    return f"schema: {name}: duplicate key"
                seen.add(name)
                last[name] = value
        for name, _ in self._dict_keys:
            path = _repeated_in(last.get(name), self._fields[name], name)
            if path is not None:
                return f"schema: {path}: duplicate key"
        return None


def _shown(value: str | None, limit: int = 40) -> str:
    """A text value for a reason: quoted and escaped (JSON), cut to ``limit`` characters."""
    if value is None:
        return "nothing"
    text = json.dumps(value[:limit], ensure_ascii=False)
    return text if len(value) <= limit else text[:-1] + '…"'


def _text_reason(exc: msgspec.ValidationError, values: dict[str, str | None]) -> str:
    """A conversion failure of :meth:`RecordDecoder.convert` as a reason that shows the value."""
    reason = _reason(exc)
    if not reason.startswith("schema: ") or reason.endswith(": missing"):
        return reason
    name, _, what = reason[8:].partition(": ")
    value = values.get(name)
    if value is None:
        return f"schema: {name}: missing (sent as -)"
    expected = what.split(", got ", 1)[0]
    return f"schema: {name}: {expected}, got {_shown(value)}"


def _unusable_key(key: str, name: str) -> str | None:
    if "\x00" in key:
        return f"schema: {name}: a key cannot contain the NUL character (U+0000)"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"schema: {name}: key longer than {MAX_KEY_BYTES} bytes (UTF-8)"
    return None
