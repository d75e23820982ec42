"""The strict record decoder: every kind of bad input gets one precise reason."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from record_processor.envelope import InputRecord, decode_process_records, from_base64
from tests.factories import ClickEvent, Purchase, b64, schema_of
from thyme.records.decode import MAX_KEY_BYTES, RecordDecoder, to_utc_us
from thyme.records.lateness import FUTURE_TIMESTAMP, LATE, LatenessPolicy

CLICKS = RecordDecoder(schema_of(ClickEvent))
PURCHASES = RecordDecoder(schema_of(Purchase))
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0_US = int(T0.timestamp()) * 1_000_000


def click(**overrides: object) -> bytes:
    body: dict[str, object] = {"user_id": "u1", "page": "/home", "timestamp": "2024-05-01T12:00:00Z"}
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_accepts_and_normalises_to_utc() -> None:
    result = CLICKS.decode(click(timestamp="2024-05-01T14:00:00+02:00", extra={"ignored": True}))
    assert result == ("u1", T0_US, '{"user_id":"u1","page":"/home","timestamp":"2024-05-01T12:00:00Z"}')


@pytest.mark.parametrize("epoch", [1714564800, 1714564800.0, 1714564800000, 1714564800000000, 1714564800000000000])
def test_epoch_units_by_magnitude(epoch: float) -> None:
    result = CLICKS.decode(click(timestamp=epoch))
    assert isinstance(result, tuple)
    assert result[1] == T0_US


def test_fractional_epoch_seconds_keep_microseconds() -> None:
    result = CLICKS.decode(click(timestamp=1714564800.123456))
    assert isinstance(result, tuple)
    assert result[1] == T0_US + 123456


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"user_id": "u1"', "invalid_json"),
        (click() + b" trailing", "invalid_json"),
        (b"\xef\xbb\xbf" + click(), "invalid_json"),  # a BOM is not JSON
        (b'{"user_id":"\\ud800","page":"/","timestamp":1}', "invalid_json"),  # lone surrogate
        (b'{"user_id":"u","page":"/","timestamp":NaN}', "invalid_json"),
        (b'{"user_id":"u","page":"/","timestamp":Infinity}', "invalid_json"),
        (b'{"user_id":"u\xff","page":"/","timestamp":1}', "invalid_utf8"),
        (b"\xc3\x28", "invalid_utf8"),
        (b"[1, 2]", "not_an_object"),
        (b'"a string"', "not_an_object"),
        (b"null", "not_an_object"),
        (click(user_id=...), "schema: user_id: missing"),
        (click(user_id=7), "schema: user_id: expected str, got int"),
        (click(user_id=None), "schema: user_id: expected str, got null"),
        (click(page=["a"]), "schema: page: expected str, got array"),
        (
            click(timestamp="2024-05-01T12:00:00"),
            'schema: timestamp: timestamp has no time zone; add "Z" or an offset such as "+00:00"',
        ),
        (click(timestamp="yesterday"), "schema: timestamp: invalid RFC3339 encoded datetime"),
        (click(timestamp=True), "schema: timestamp: expected int | float | datetime, got bool"),
        (b'{"user_id":"u","page":"/","timestamp":1e400}', "schema: timestamp: number out of range"),
        (click(timestamp=10**30), "schema: timestamp: expected int <= 9223372036854775807"),
        (click(timestamp=1e25), "schema: timestamp: epoch timestamp out of range"),
    ],
)
def test_bad_records(raw: bytes, reason: str) -> None:
    assert CLICKS.decode(raw) == reason


def purchase(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "order_id": 42,
        "ts": "2024-05-01T12:00:00Z",
        "amount": 9.5,
        "paid": True,
        "day": "2024-05-01",
        "coupon": None,
        "items": ["a", "b"],
        "attrs": {"n": 1},
        "seen": ["2024-05-01T13:00:00+01:00", 1714564800],
    }
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_every_type() -> None:
    result = PURCHASES.decode(purchase(amount=3, coupon=...))  # int for float is fine; optional may be absent
    assert isinstance(result, tuple)
    assert result[0] == 42
    assert json.loads(result[2]) == {
        "order_id": 42,
        "ts": "2024-05-01T12:00:00Z",
        "amount": 3.0,
        "paid": True,
        "day": "2024-05-01",
        "coupon": None,
        "items": ["a", "b"],
        "attrs": {"n": 1},
        "seen": ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z"],
    }


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"order_id": "42"}, "schema: order_id: expected int, got str"),
        ({"order_id": 2**63}, "schema: order_id: expected int <= 9223372036854775807"),
        ({"order_id": 1.5}, "schema: order_id: expected int, got float"),
        ({"amount": "9.5"}, "schema: amount: expected float, got str"),
        ({"paid": 1}, "schema: paid: expected bool, got int"),
        ({"day": "2024-13-01"}, "schema: day: invalid RFC3339 encoded date"),
        ({"coupon": 5}, "schema: coupon: expected str | null, got int"),
        ({"items": "a"}, "schema: items: expected array, got str"),
        ({"items": ["a", 1]}, "schema: items[1]: expected str, got int"),
        ({"attrs": {"n": "x"}}, "schema: attrs[...]: expected int, got str"),
        (
            {"seen": ["2024-05-01T12:00:00"]},
            'schema: seen[]: timestamp has no time zone; add "Z" or an offset such as "+00:00"',
        ),
    ],
)
def test_every_type_wrong(overrides: dict[str, object], reason: str) -> None:
    assert PURCHASES.decode(purchase(**overrides)) == reason


def test_base64_is_strict() -> None:
    def record(data: str) -> InputRecord:
        return from_base64(data, "pk", "1", 0, 0)

    assert record(b64(click())) == InputRecord(click(), "pk", "1", 0, 0, False)
    for bad in ("eyJ@", "eyJ", "ey J9"):  # outside the alphabet, bad padding, a blank
        assert record(bad) == InputRecord(bad.encode(), "pk", "1", 0, 0, True)


def test_a_whole_process_records_line_decodes_in_one_pass() -> None:
    line = json.dumps(
        {
            "action": "processRecords",
            "millisBehindLatest": 12,
            "records": [
                {
                    "action": "record",
                    "data": b64(click()),
                    "partitionKey": "u1",
                    "sequenceNumber": "5",
                    "subSequenceNumber": 2,
                    "approximateArrivalTimestamp": 1714564800000,
                },
                {
                    "action": "record",
                    "data": "not base64!",
                    "partitionKey": "u2",
                    "sequenceNumber": "6",
                    "subSequenceNumber": 0,
                    "approximateArrivalTimestamp": 1714564800001,
                },
            ],
        }
    )
    message = decode_process_records(line)
    assert message.millis_behind_latest == 12
    assert message.records == [
        InputRecord(click(), "u1", "5", 2, 1714564800000, False),
        InputRecord(b"not base64!", "u2", "6", 0, 1714564800001, True),  # only this one is marked
    ]


def test_to_utc_us() -> None:
    assert to_utc_us(T0, "t") == (T0, T0_US)
    assert to_utc_us(0, "t") == (datetime(1970, 1, 1, tzinfo=UTC), 0)
    assert to_utc_us(-1, "t")[1] == -1_000_000
    assert to_utc_us(99_999_999_999, "t")[0].year == 5138  # the largest value read as seconds
    assert to_utc_us(100_000_000_000, "t")[0].year == 1973  # the smallest read as milliseconds


def test_lateness_policy() -> None:
    policy = LatenessPolicy(timedelta(minutes=5), timedelta(hours=1))
    arrival_ms = T0_US // 1000
    assert policy.judge(T0_US, arrival_ms, None) is None
    assert policy.judge(T0_US - 300_000_000, arrival_ms, T0_US) is None  # exactly at the bound
    assert policy.judge(T0_US - 300_000_001, arrival_ms, T0_US) == LATE
    assert policy.judge(T0_US + 3_600_000_000, arrival_ms, T0_US) is None
    assert policy.judge(T0_US + 3_600_000_001, arrival_ms, T0_US) == FUTURE_TIMESTAMP
    never_late = LatenessPolicy(None, timedelta(hours=1))
    assert never_late.judge(0, arrival_ms, T0_US) is None


FUZZ = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=500),  # per example: a decode is microseconds; a hang fails
    suppress_health_check=[HealthCheck.too_slow],
)
"""Every fuzz below: at most 300 examples of at most 0.5 s each (about a second in all here)."""


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_raise(raw: bytes) -> None:
    result = CLICKS.decode(raw)
    assert isinstance(result, tuple | str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(["user_id", "page", "timestamp", "x"]), json_values))
def test_fuzz_json_objects_are_accepted_or_explained(body: dict[str, object]) -> None:
    result = PURCHASES.decode(json.dumps(body).encode())
    assert isinstance(result, str)  # a purchase needs order_id: never accepted here
    assert result.startswith("schema: ")
    result = CLICKS.decode(json.dumps(body).encode())
    if isinstance(result, tuple):
        assert isinstance(body["user_id"], str)
        assert isinstance(json.loads(result[2]), dict)
    else:
        assert result.startswith("schema: ")


@FUZZ
@given(st.binary(min_size=1, max_size=300), st.integers(min_value=0), st.integers(min_value=0, max_value=3))
def test_fuzz_a_damaged_valid_record_is_accepted_or_explained(noise: bytes, at: int, how: int) -> None:
    """Bytes inserted into, overwritten in or cut from a valid record: a row or a known reason."""
    valid = purchase()
    at %= len(valid)
    damaged = [
        valid[:at] + noise + valid[at:],
        valid[:at] + noise + valid[at + len(noise) :],
        valid[:at],
        noise + valid,
    ][how]
    result = PURCHASES.decode(damaged)
    if isinstance(result, str):
        assert result in KNOWN_REASONS or result.startswith("schema: "), result
    else:
        json.loads(damaged)  # accepted: it was valid JSON after all


KNOWN_REASONS = {"invalid_utf8", "invalid_json", "not_an_object", "too_deeply_nested"}
CLICK_FIELDS = ("user_id", "page", "timestamp")
KEY_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "user_id": st.text(max_size=6).filter(lambda k: "\x00" not in k),
    "page": st.text(max_size=6),
    "timestamp": st.sampled_from(["2024-05-01T12:00:00Z", 1714564800, 1714564800.5]),
    "x": json_values,
}


def spell(key: str, escaped: bool) -> str:
    """A JSON string for ``key``: plain, or every character as a ``\\uXXXX`` escape."""
    return '"' + "".join(f"\\u{ord(c):04x}" for c in key) + '"' if escaped else json.dumps(key)


@FUZZ
@given(
    st.lists(st.sampled_from(["user_id", "page", "timestamp", "x"]), max_size=7),
    st.data(),
)
def test_fuzz_a_repeated_field_is_never_accepted(names: list[str], data: st.DataObject) -> None:
    """Objects whose keys may repeat (spelt plainly or with escapes, any blanks around ``:``):
    accepted exactly when each field appears once, else a precise reason."""
    blank = st.sampled_from(["", " ", "\n", "\t "])
    parts = []
    for name in names:
        value = data.draw(KEY_VALUES[name])
        key = spell(name, data.draw(st.booleans()))
        parts.append(f"{data.draw(blank)}{key}{data.draw(blank)}:{data.draw(blank)}{json.dumps(value)}")
    raw = ("{" + ",".join(parts) + "}").encode()
    result = CLICKS.decode(raw)
    fields = [n for n in names if n in CLICK_FIELDS]
    repeated = sorted({n for n in fields if fields.count(n) > 1})
    if not repeated and set(fields) == set(CLICK_FIELDS):
        assert isinstance(result, tuple), result
    elif repeated:
        assert isinstance(result, str), raw
        if result.endswith(": duplicate key"):
            assert result.removeprefix("schema: ").removesuffix(": duplicate key") in repeated
        else:  # an occurrence had the wrong type, or a field is missing: msgspec said so first
            assert result.startswith("schema: ")
    else:
        assert result in {f"schema: {n}: missing" for n in CLICK_FIELDS if n not in fields}


@FUZZ
@given(st.lists(st.sampled_from(["a", "b", "ü", 'a"b']), max_size=5))
def test_fuzz_a_repeated_key_in_a_dict_field_is_never_accepted(keys: list[str]) -> None:
    attrs = "{" + ",".join(f"{json.dumps(k)}:{i}" for i, k in enumerate(keys)) + "}"
    raw = purchase().replace(b'{"n": 1}', attrs.encode())
    result = PURCHASES.decode(raw)
    if len(set(keys)) == len(keys):
        assert isinstance(result, tuple), result
    else:
        assert result == "schema: attrs: duplicate key"


def test_keys_a_store_cannot_index_are_dead_letters() -> None:
    longest = "k" * MAX_KEY_BYTES
    assert isinstance(CLICKS.decode(click(user_id=longest)), tuple)
    assert CLICKS.decode(click(user_id=longest + "k")) == "schema: user_id: key longer than 2048 bytes (UTF-8)"
    assert CLICKS.decode(click(user_id="é" * 1025)) == "schema: user_id: key longer than 2048 bytes (UTF-8)"
    assert isinstance(CLICKS.decode(click(user_id="é" * 1024)), tuple)
    assert CLICKS.decode(click(user_id="a\x00")) == "schema: user_id: a key cannot contain the NUL character (U+0000)"
    assert isinstance(PURCHASES.decode(purchase(order_id=2**62)), tuple)  # an int key has neither problem


# -- the envelope -----------------------------------------------------------------------------

b64_text = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
any_text = st.text(max_size=24)  # no lone surrogates: a JSON encoder escapes them, the daemon never sends them


@FUZZ
@given(
    st.lists(
        st.tuples(
            b64_text | any_text,
            any_text,
            st.integers(min_value=0, max_value=10**60),
            st.none() | st.integers(min_value=0, max_value=2**31 - 1),
            st.none() | st.integers(min_value=0, max_value=2**53),
        ),
        max_size=6,
    ),
    st.none() | st.integers(min_value=0, max_value=2**53),
    st.booleans(),
)
def test_fuzz_envelope_marks_only_the_records_with_bad_base64(
    items: list[tuple[str, str, int, int | None, int | None]], behind: int | None, ascii_only: bool
) -> None:
    """Any ``processRecords`` line: every record comes out, in order, with its fields; its bytes
    decoded if its ``data`` is strict base64, else kept as delivered and marked."""
    records = []
    for data, key, sequence, sub, arrival in items:
        record: dict[str, Any] = {
            "action": "record",
            "data": data,
            "partitionKey": key,
            "sequenceNumber": str(sequence),
        }
        if sub is not None:
            record["subSequenceNumber"] = sub
        if arrival is not None:
            record["approximateArrivalTimestamp"] = arrival
        records.append(record)
    line = json.dumps(
        {"action": "processRecords", "records": records, "millisBehindLatest": behind},
        separators=(",", ":"),
        ensure_ascii=ascii_only,
    )
    message = decode_process_records(line)
    assert message.millis_behind_latest == behind
    assert len(message.records) == len(items)
    for got, (data, key, sequence, sub, arrival) in zip(message.records, items, strict=True):
        try:
            raw, bad = binascii.a2b_base64(data, strict_mode=True), False
        except (binascii.Error, ValueError):
            raw, bad = data.encode(), True
        assert got == InputRecord(raw, key, str(sequence), sub or 0, arrival, bad)
