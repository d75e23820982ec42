"""The strict record decoder: every kind of bad input gets one precise reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from record_processor.decode import RecordDecoder, to_utc_us
from record_processor.envelope import InputRecord, decode_process_records, from_base64
from record_processor.lateness import FUTURE_TIMESTAMP, LATE, LatenessPolicy
from tests.factories import ClickEvent, Purchase, b64, schema_of

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


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_raise(raw: bytes) -> None:
    result = CLICKS.decode(raw)
    assert isinstance(result, tuple | str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
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
