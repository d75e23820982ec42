"""Record formats: compressed JSON, CloudWatch Logs subscription records, CloudFront real-time
logs — the decoders, the settings that declare them, and what the worker and re-drive do with
the rows and dead letters they give."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_records import (
    CLOUDFRONT_FIELDS,
    cloudfront_line,
    cloudfront_request,
    cloudwatch_control_record,
    cloudwatch_logs_record,
)

from record_processor.envelope import InputRecord
from record_processor.worker import ShardWorker
from tests.factories import seq
from thyme import Field, dataset, field
from thyme.connectors import KinesisSource, source
from thyme.connectors.formats import FormatSpec, dataset_field_name
from thyme.errors import SourceError
from thyme.records import (
    DECOMPRESSED_TOO_LARGE,
    INVALID_COMPRESSION,
    INVALID_ENVELOPE,
    INVALID_LOG_EVENT,
    TRUNCATED_COMPRESSION,
    WRONG_FIELD_COUNT,
    Fanout,
    LatenessPolicy,
    RecordRules,
    Rejected,
    describe,
)
from thyme.records.formats import MAX_DECOMPRESSED_BYTES, RATIO_FREE_BYTES
from thyme.redrive import redrive
from thyme.schema import dataset_schema
from thyme.serving import lookup
from thyme.store import Feed, Store

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/logs"
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
ARRIVAL = T0_MS + 60_000
POLICY = LatenessPolicy(timedelta(minutes=5), timedelta(hours=1))


@dataset(index=True)
class Order:
    order_id: Field[str] = field(key=True)
    amount: Field[float] = field()
    timestamp: Field[datetime] = field(timestamp=True)


@dataset(index=True)
class AppLog:
    request_id: Field[str] = field(key=True)
    level: Field[str] = field()
    latency_ms: Field[int] = field()
    timestamp: Field[datetime] = field(timestamp=True)
    log_group: Field[str] = field()
    log_stream: Field[str | None] = field()
    log_event_id: Field[str] = field()


@dataset(index=True)
class EdgeRequest:
    x_edge_request_id: Field[str] = field(key=True)
    timestamp: Field[datetime] = field(timestamp=True)
    c_ip: Field[str] = field()
    sc_status: Field[int] = field()
    time_to_first_byte: Field[float] = field()
    cs_uri_stem: Field[str] = field()
    cs_referer: Field[str | None] = field()
    sc_range_start: Field[int | None] = field()


def schema(klass: type) -> Any:
    found = dataset_schema(klass)
    assert found is not None
    return found


def rules(klass: type, fmt: FormatSpec | None = None, policy: LatenessPolicy = POLICY) -> RecordRules:
    return RecordRules(schema(klass), policy, fmt)


def order(n: int, minutes: float = 0, **extra: Any) -> bytes:
    body = {"order_id": f"o{n}", "amount": 9.5 + n, "timestamp": (T0 + timedelta(minutes=minutes)).isoformat()}
    return json.dumps({**body, **extra}).encode()


# -- compressed JSON ------------------------------------------------------------------------------


def test_gzip_and_zlib_records_decode_like_plain_json() -> None:
    r = rules(Order)
    plain = r.judge(order(1), ARRIVAL, None)
    assert isinstance(plain, tuple)
    assert r.judge(gzip.compress(order(1)), ARRIVAL, None) == plain
    assert r.judge(zlib.compress(order(1)), ARRIVAL, None) == plain
    assert r.judge(zlib.compress(order(1), level=9), ARRIVAL, None) == plain
    # two gzip members, as `cat a.gz b.gz` makes: one document, decompressed whole (as gunzip does)
    body = order(1)
    assert r.judge(gzip.compress(body[:10]) + gzip.compress(body[10:]), ARRIVAL, None) == plain


def test_compressed_records_that_are_not_good_json_say_so_and_that_they_were_compressed() -> None:
    r = rules(Order)
    assert r.judge(gzip.compress(b"{not json"), ARRIVAL, None) == "invalid_json"
    assert describe(r.facts("invalid_json", ARRIVAL, None)) == (
        "the record was gzip-compressed; this is what it held once decompressed"
    )
    assert r.judge(gzip.compress(b'{"order_id": "o1"}'), ARRIVAL, None) == "schema: amount: missing"
    assert r.facts("schema: amount: missing", ARRIVAL, None) == '{"compression":"gzip"}'


def test_truncated_and_corrupt_compression_are_dead_letters_with_their_own_reason() -> None:
    r = rules(Order)
    whole = gzip.compress(order(1) * 20)
    assert r.judge(whole[: len(whole) // 2], ARRIVAL, None) == TRUNCATED_COMPRESSION
    assert "ends early" in (describe(r.facts(TRUNCATED_COMPRESSION, ARRIVAL, None)) or "")
    corrupt = bytearray(whole)
    corrupt[-6] ^= 0xFF  # the CRC-32 in the trailer
    assert r.judge(bytes(corrupt), ARRIVAL, None) == INVALID_COMPRESSION
    assert "gzip data of" in (describe(r.facts(INVALID_COMPRESSION, ARRIVAL, None)) or "")
    assert r.judge(whole + b"junk", ARRIVAL, None) == INVALID_COMPRESSION
    assert "4 bytes after the end" in (describe(r.facts(INVALID_COMPRESSION, ARRIVAL, None)) or "")
    assert r.judge(b"\x1f\x8b\x08garbage", ARRIVAL, None) in (INVALID_COMPRESSION, TRUNCATED_COMPRESSION)


def test_a_decompression_bomb_is_a_dead_letter_without_holding_it_in_memory() -> None:
    r = rules(Order)
    bomb = gzip.compress(b"{" + b" " * (1 << 30) + b"}")  # 1 GiB of spaces: ~1 MiB compressed
    assert len(bomb) < 1_100_000
    assert r.judge(bomb, ARRIVAL, None) == DECOMPRESSED_TOO_LARGE
    facts = json.loads(r.facts(DECOMPRESSED_TOO_LARGE, ARRIVAL, None) or "{}")
    assert facts["limit_bytes"] == MAX_DECOMPRESSED_BYTES
    # the ratio bound: a small record may not expand 1,000 times, beyond the ratio-free allowance
    small = gzip.compress(order(1, note="x" * (RATIO_FREE_BYTES * 2)))
    assert len(small) * 250 < RATIO_FREE_BYTES * 2
    assert r.judge(small, ARRIVAL, None) == DECOMPRESSED_TOO_LARGE
    assert "expand past" in (describe(r.facts(DECOMPRESSED_TOO_LARGE, ARRIVAL, None)) or "")
    # within the allowance, a highly compressible record is fine
    assert isinstance(r.judge(gzip.compress(order(1, note="x" * 60_000)), ARRIVAL, None), tuple)


def test_plain_json_that_merely_starts_like_zlib_stays_invalid_json() -> None:
    r = rules(Order)
    assert r.judge(b"x marks the spot", ARRIVAL, None) == "invalid_json"
    assert r.facts("invalid_json", ARRIVAL, None) is None


# -- CloudWatch Logs ------------------------------------------------------------------------------

LOGS = FormatSpec("cloudwatch_logs")


def log_line(request: str, level: str = "INFO", latency: int = 12, at: datetime | None = None) -> str:
    body: dict[str, Any] = {"request_id": request, "level": level, "latency_ms": latency}
    if at is not None:
        body["timestamp"] = at.isoformat()
    return json.dumps(body)


def test_each_log_event_is_a_row_with_envelope_fields_and_the_event_time_when_the_message_has_none() -> None:
    r = rules(AppLog, LOGS)
    at = T0 + timedelta(seconds=5)
    record = cloudwatch_logs_record(
        [(T0_MS, log_line("r1")), (T0_MS + 1000, log_line("r2", at=at)), (T0_MS + 2000, log_line("r3", "WARN"))],
        log_group="/aws/lambda/checkout",
        log_stream="2024/05/01/[$LATEST]abc",
    )
    out = r.judge(record, ARRIVAL, None)
    assert isinstance(out, Fanout)
    assert not out.control
    rows = [json.loads(row[2]) for row in out if isinstance(row, tuple)]
    assert [row["request_id"] for row in rows] == ["r1", "r2", "r3"]
    assert rows[0]["timestamp"] == "2024-05-01T12:00:00Z"  # the event's timestamp (epoch ms)
    assert rows[1]["timestamp"] == "2024-05-01T12:00:05Z"  # the message's own wins
    assert {row["log_group"] for row in rows} == {"/aws/lambda/checkout"}
    assert rows[2]["log_stream"] == "2024/05/01/[$LATEST]abc"
    assert len({row["log_event_id"] for row in rows}) == 3


def test_a_bad_event_is_one_dead_letter_of_its_own_bytes_and_never_rejects_its_siblings() -> None:
    r = rules(AppLog, LOGS)
    record = cloudwatch_logs_record(
        [
            (T0_MS, log_line("r1")),
            (T0_MS, "START RequestId: 8f5 Version: $LATEST"),  # a plain-text line
            (T0_MS, '{"request_id": "r3", "level": "INFO", "latency_ms": "slow"}'),
            (T0_MS, log_line("r4")),
        ]
    )
    out = r.judge(record, ARRIVAL, None)
    assert isinstance(out, Fanout)
    assert [e if isinstance(e, tuple) else e.reason for e in out][1:3] == [
        "invalid_json",
        "schema: latency_ms: expected int, got str",
    ]
    assert sum(isinstance(e, tuple) for e in out) == 2
    letter = out[1]
    assert isinstance(letter, Rejected)
    event = json.loads(letter.raw)  # the event's own bytes, not the envelope
    assert set(event) == {"id", "timestamp", "message"}
    assert event["message"].startswith("START RequestId")
    assert describe(letter.detail) == (
        "log event 1 from log group /aws/lambda/checkout, stream "
        "2024/05/01/[$LATEST]0123456789abcdef0123456789abcdef, account 123456789012"
    )


def test_lateness_is_judged_per_event_against_a_watermark_that_moves_with_them() -> None:
    r = rules(AppLog, LOGS)
    record = cloudwatch_logs_record(
        [(T0_MS + 600_000, log_line("r1")), (T0_MS, log_line("r2")), (T0_MS + 400_000, log_line("r3"))]
    )
    out = r.judge(record, T0_MS + 700_000, None)
    assert isinstance(out, Fanout)
    late = out[1]
    assert isinstance(late, Rejected)
    assert late.reason == "late"
    assert "behind the shard's watermark" in (describe(late.detail) or "")
    assert "log event 1 from log group" in (describe(late.detail) or "")
    assert isinstance(out[0], tuple)
    assert isinstance(out[2], tuple)


def test_log_messages_that_are_json_but_not_objects() -> None:
    record = cloudwatch_logs_record([(T0_MS, "[1, 2]"), (T0_MS, "42"), (T0_MS, '"text"'), (T0_MS, "")])
    out = rules(AppLog, LOGS).judge(record, ARRIVAL, None)
    assert isinstance(out, Fanout)
    assert [e.reason for e in out if isinstance(e, Rejected)] == [
        "not_an_object",
        "not_an_object",
        "not_an_object",
        "invalid_json",
    ]


def test_control_messages_give_no_rows_and_no_dead_letters() -> None:
    out = rules(AppLog, LOGS).judge(cloudwatch_control_record(T0_MS), ARRIVAL, None)
    assert isinstance(out, Fanout)
    assert out.control
    assert list(out) == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (gzip.compress(b'{"owner": "1"}'), INVALID_ENVELOPE),
        (gzip.compress(b'{"messageType": "DATA_MESSAGE", "logEvents": {}}'), INVALID_ENVELOPE),
        (gzip.compress(b'{"messageType": "SOMETHING_ELSE"}'), INVALID_ENVELOPE),
        (gzip.compress(b"not json"), "invalid_json"),
        (gzip.compress(b"\xff\xfe"), "invalid_utf8"),
        (gzip.compress(b"{}")[:12], TRUNCATED_COMPRESSION),
        (b"plain text", "invalid_json"),
    ],
)
def test_records_that_are_not_subscription_records(raw: bytes, reason: str) -> None:
    r = rules(AppLog, LOGS)
    assert r.judge(raw, ARRIVAL, None) == reason
    assert r.facts(reason, ARRIVAL, None) is not None or reason in ("invalid_json", "invalid_utf8")


def test_an_event_without_its_fields_is_an_invalid_log_event() -> None:
    envelope = {"messageType": "DATA_MESSAGE", "logEvents": [{"id": "1", "message": "{}"}, {"id": "2"}]}
    out = rules(AppLog, LOGS).judge(gzip.compress(json.dumps(envelope).encode()), ARRIVAL, None)
    assert isinstance(out, Fanout)
    assert [e.reason for e in out if isinstance(e, Rejected)] == [INVALID_LOG_EVENT, INVALID_LOG_EVENT]
    first = out[0]
    assert isinstance(first, Rejected)
    assert "timestamp" in (describe(first.detail) or "")


def test_an_uncompressed_envelope_is_read_too() -> None:
    out = rules(AppLog, LOGS).judge(cloudwatch_logs_record([(T0_MS, log_line("r1"))], compress=False), ARRIVAL, None)
    assert isinstance(out, Fanout)
    assert isinstance(out[0], tuple)


# -- CloudFront real-time logs --------------------------------------------------------------------

EDGE = FormatSpec("cloudfront_realtime", CLOUDFRONT_FIELDS)


def edge(n: int, **changes: Any) -> bytes:
    values = cloudfront_request(n, T0 + timedelta(seconds=n))
    values.update(changes)
    return cloudfront_line(values)


def test_cloudfront_lines_map_every_documented_field_by_the_naming_rule() -> None:
    assert dataset_field_name("cs-uri-stem") == "cs_uri_stem"
    assert dataset_field_name("timestamp(ms)") == "timestamp_ms"
    row = rules(EdgeRequest, EDGE).judge(edge(7), ARRIVAL, None)
    assert isinstance(row, tuple)
    key, ts_us, body = row
    assert key == "req-000000000007-Example=="
    assert ts_us == (T0_MS + 7000) * 1000
    assert json.loads(body) == {
        "x_edge_request_id": "req-000000000007-Example==",
        "timestamp": "2024-05-01T12:00:07Z",
        "c_ip": "192.0.2.8",
        "sc_status": 200,
        "time_to_first_byte": 0.002,
        "cs_uri_stem": "/index.html",
        "cs_referer": None,  # sent as "-"
        "sc_range_start": None,
    }


def test_cloudfront_timestamps_keep_their_milliseconds() -> None:
    row = rules(EdgeRequest, EDGE).judge(edge(1, timestamp="1714564800.123"), ARRIVAL, None)
    assert isinstance(row, tuple)
    assert row[1] == 1_714_564_800_123_000


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sc-status": "2OO"}, 'schema: sc_status: expected int, got "2OO"'),
        ({"sc-status": None}, "schema: sc_status: missing (sent as -)"),
        ({"time-to-first-byte": "nan"}, 'schema: time_to_first_byte: expected a finite number, got "nan"'),
        ({"sc-range-start": "12.5"}, 'schema: sc_range_start: expected int | null, got "12.5"'),
        ({"timestamp": "yesterday"}, 'schema: timestamp: invalid RFC3339 encoded datetime, got "yesterday"'),
    ],
)
def test_cloudfront_values_are_converted_as_strictly_as_json(changes: dict[str, Any], reason: str) -> None:
    assert rules(EdgeRequest, EDGE).judge(edge(1, **changes), ARRIVAL, None) == reason


def test_a_line_with_the_wrong_number_of_fields_names_the_counts() -> None:
    r = rules(EdgeRequest, EDGE)
    short = b"\t".join(edge(1).rstrip(b"\n").split(b"\t")[:-1])
    assert r.judge(short, ARRIVAL, None) == WRONG_FIELD_COUNT
    assert describe(r.facts(WRONG_FIELD_COUNT, ARRIVAL, None)) == (
        "44 tab-separated values, but the source lists 45 fields "
        "(KinesisSource(fields=...) must match the real-time log configuration)"
    )
    assert r.judge(b"\xff\t" * 44 + b"x", ARRIVAL, None) == "invalid_utf8"


def test_a_configuration_with_a_few_fields() -> None:
    fields = ("timestamp", "x-edge-request-id", "c-ip", "sc-status", "time-to-first-byte", "cs-uri-stem")
    r = rules(EdgeRequest, FormatSpec("cloudfront_realtime", fields))
    line = cloudfront_line(cloudfront_request(3, T0), fields)
    assert isinstance(r.judge(line, ARRIVAL, None), tuple)
    assert r.judge(line.replace(b"\t", b" ", 1), ARRIVAL, None) == WRONG_FIELD_COUNT


# -- declaring a format ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "csv"}, "KinesisSource(format=...): unsupported format (got 'csv'). Supported formats: 'json', "),
        ({"format": "json", "fields": ["c-ip"]}, "KinesisSource(fields=...): fields are the columns of a CloudFront"),
        ({"format": "cloudfront_realtime"}, "KinesisSource(fields=...): format 'cloudfront_realtime' needs the"),
        ({"format": "cloudfront_realtime", "fields": "c-ip"}, "not a non-empty list of CloudFront field names"),
        ({"format": "cloudfront_realtime", "fields": []}, "not a non-empty list of CloudFront field names"),
        ({"format": "cloudfront_realtime", "fields": ["c_ip"]}, 'CloudFront names use hyphens: "c-ip"'),
        ({"format": "cloudfront_realtime", "fields": ["c-ip", "c-ip"]}, "'c-ip' is listed twice"),
        ({"format": "cloudfront_realtime", "fields": ["x-y", "x(y)"]}, "'x-y' and 'x(y)' both fill the dataset field"),
    ],
)
def test_format_settings_are_checked_eagerly(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SourceError) as caught:
        KinesisSource(stream_arn=ARN, **kwargs)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_dataset_its_format_cannot_fill_is_refused_where_it_is_declared() -> None:
    fields = ["timestamp", "x-edge-request-id", "c-ip"]
    with pytest.raises(SourceError, match="required field 'sc_status' is not among the CloudFront fields"):
        source(KinesisSource(stream_arn=ARN, format="cloudfront_realtime", fields=fields))(EdgeRequest)

    @dataset
    class Headers:
        x_edge_request_id: Field[str] = field(key=True)
        timestamp: Field[datetime] = field(timestamp=True)
        cs_headers: Field[list[str]] = field()

    with pytest.raises(SourceError, match="CloudFront sends 'cs-headers' as one text value"):
        source(KinesisSource(stream_arn=ARN, format="cloudfront_realtime", fields=[*fields, "cs-headers"]))(Headers)

    @dataset
    class BadGroup:
        request_id: Field[str] = field(key=True)
        timestamp: Field[datetime] = field(timestamp=True)
        log_group: Field[int] = field()

    with pytest.raises(SourceError, match=r"'log_group' is filled from the CloudWatch Logs envelope \(logGroup\)"):
        source(KinesisSource(stream_arn=ARN, format="cloudwatch_logs"))(BadGroup)


def test_the_format_reaches_the_child_and_shows_in_repr() -> None:
    src = KinesisSource(stream_arn=ARN, format="cloudfront_realtime", fields=list(CLOUDFRONT_FIELDS))
    assert "format='cloudfront_realtime (45 fields)'" in repr(src)
    assert src.format == "cloudfront_realtime"
    assert src.record_format.fields == CLOUDFRONT_FIELDS


# -- the worker and re-drive ----------------------------------------------------------------------


def record(n: int, data: bytes, sub: int = 0) -> InputRecord:
    return InputRecord(data, "pk", seq(n), sub, ARRIVAL)


def test_a_record_of_many_events_commits_whole_and_a_replay_applies_none_twice(store: Store) -> None:
    feed = Feed(schema(AppLog), ARN)
    w = ShardWorker(feed, POLICY, store, record_format=LOGS)
    w.initialize("shardId-000000000000")
    batch = [
        record(1, cloudwatch_control_record(T0_MS)),
        record(2, cloudwatch_logs_record([(T0_MS, log_line(f"r{i}")) for i in range(20)] + [(T0_MS, "oops")])),
        record(3, cloudwatch_logs_record([(T0_MS + 1, log_line("r0", latency=99))], first_id=50)),
    ]
    outcome = w.process(batch)
    assert outcome.received == 3
    assert outcome.applied == 21
    assert outcome.control_messages == 1
    assert dict(outcome.dead_letters) == {"invalid_json": 1}
    assert store.count_rows(feed.dataset) == 21
    again = ShardWorker(feed, POLICY, store, record_format=LOGS)
    again.initialize("shardId-000000000000")
    replay = again.process(batch)
    assert replay.replayed == 3
    assert replay.applied == 0
    assert store.count_rows(feed.dataset) == 21
    row = lookup(AppLog, "r0", T0 + timedelta(hours=1), store=store)
    assert row is not None
    assert row.latency_ms == 99
    (letter,) = store.dead_letters(feed.dataset)
    assert json.loads(letter.raw)["message"] == "oops"
    assert letter.sequence == seq(2)
    assert "log event 20 from log group /aws/lambda/checkout" in (describe(letter.detail) or "")


def requests_v1_int() -> type:
    @source(KinesisSource(stream_arn=ARN, format="cloudwatch_logs"))
    @dataset(index=True)
    class Requests:
        request_id: Field[str] = field(key=True)
        timestamp: Field[datetime] = field(timestamp=True)
        log_group: Field[str] = field()
        level: Field[str] = field()

    return Requests


def requests_v1_float() -> type:
    """The same dataset (name, version) with ``level`` made optional: the fix."""

    @source(KinesisSource(stream_arn=ARN, format="cloudwatch_logs"))
    @dataset(index=True)
    class Requests:
        request_id: Field[str] = field(key=True)
        timestamp: Field[datetime] = field(timestamp=True)
        log_group: Field[str] = field()
        level: Field[str | None] = field()

    return Requests


def test_redrive_of_a_log_event_keeps_its_envelope_fields(store: Store) -> None:
    requests = requests_v1_int()
    feed = Feed(schema(requests), ARN)
    w = ShardWorker(feed, POLICY, store, record_format=LOGS)
    w.initialize("shardId-000000000000")
    bad = '{"request_id": "r9"}'
    w.process([record(1, cloudwatch_logs_record([(T0_MS, bad)], log_group="/ecs/api"))])
    assert store.count_rows(feed.dataset) == 0
    report = redrive(requests, store)
    assert report.still_failing == {"schema: level: missing": 1}
    fixed = requests_v1_float()
    report = redrive(fixed, store)
    assert report.redriven == 1
    row = store.lookup(schema(fixed), "r9", (T0_MS + 1000) * 1000)
    assert row is not None
    assert json.loads(row)["log_group"] == "/ecs/api"
    assert json.loads(row)["timestamp"] == "2024-05-01T12:00:00Z"


def test_dead_letters_list_shows_a_compressed_payload_decompressed(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.factories import SourcedClick, feed_of
    from thyme.cli import main
    from thyme.store import open_store

    url = f"sqlite:///{tmp_path / 'letters.db'}"
    store = open_store(url)
    w = ShardWorker(feed_of(SourcedClick), POLICY, store)
    w.initialize("shardId-000000000000")
    w.process([record(1, gzip.compress(b'{"user_id": 7}')), record(2, b"\xff plain")])
    store.close()
    assert main(["kinesis", "dead-letters", "tests.factories:SourcedClick", "--store", url]) == 0
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (first["payload"], first["payload_compression"]) == ('{"user_id": 7}', "gzip")
    assert first["detail"] == "the record was gzip-compressed; this is what it held once decompressed"
    assert second["payload"] == "\\xff plain"
    assert "payload_compression" not in second
