"""``thyme kinesis preflight``'s own logic: KPL records taken apart, each shard's sample judged as
the consumer would, the lateness measured and the suggestion made from it (the reading itself is
tested against the local stack in ``tests/e2e/test_preflight_e2e.py``)."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_records import cloudwatch_control_record, cloudwatch_logs_record

from thyme import Field, dataset, field
from thyme.cli import main
from thyme.connectors import KinesisSource, source
from thyme.connectors.source import source_spec
from thyme.kinesis.kpl import MAGIC, deaggregate
from thyme.kinesis.sample import Preflight, UserRecord, escaped, judge_sample
from thyme.schema import dataset_schema

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/sample"
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
ARRIVAL = int(T0.timestamp() * 1000) + 3_600_000


@source(KinesisSource(stream_arn=ARN), max_lateness="5m")
@dataset(index=True)
class Visit:
    user_id: Field[str] = field(key=True)
    timestamp: Field[datetime] = field(timestamp=True)


@source(KinesisSource(stream_arn=ARN, format="cloudwatch_logs"), max_lateness="5m")
@dataset(index=True)
class Line:
    request_id: Field[str] = field(key=True)
    timestamp: Field[datetime] = field(timestamp=True)


def visit(n: int, minutes: float) -> UserRecord:
    body = json.dumps({"user_id": f"u{n}", "timestamp": (T0 + timedelta(minutes=minutes)).isoformat()})
    return UserRecord("shardId-0", str(n), 0, f"u{n}", body.encode(), ARRIVAL)


def preflight(klass: type, shards: dict[str, list[UserRecord]], keep: float = 0.99) -> Preflight:
    schema, spec = dataset_schema(klass), source_spec(klass)
    assert schema is not None
    assert spec is not None
    samples, examples = judge_sample(schema, spec, shards)
    return Preflight(ARN, spec.connector.format, T0, spec.max_lateness, keep, samples, examples)


def test_kpl_records_come_apart_into_user_records_and_anything_else_is_a_plain_record() -> None:
    agg = RecordAggregator()
    for n in range(3):
        agg.add_user_record(f"key{n}", f"body{n}".encode())
    key, _, data = agg.clear_and_get().get_contents()
    assert deaggregate(data, key) == [(b"body0", "key0"), (b"body1", "key1"), (b"body2", "key2")]
    assert deaggregate(b'{"a": 1}', "k") is None
    assert deaggregate(data[:-1] + bytes([data[-1] ^ 1]), key) is None  # checksum mismatch: a plain record
    assert deaggregate(MAGIC + b"\xff" * 20, key) is None


def test_lateness_is_measured_per_shard_and_the_suggestion_keeps_the_share_asked_for() -> None:
    records = [visit(n, n) for n in range(100)]  # one a minute
    records.insert(50, visit(500, 49 - 12))  # 12 minutes behind the newest before it
    records.insert(80, visit(800, 78 - 7))  # 7 minutes behind
    report = preflight(Visit, {"shardId-0": records, "shardId-1": [visit(1000, 0)]})
    assert report.records == 103
    assert report.rows == 101
    assert report.dead_letters == {"late": 2}
    assert report.suggested_max_lateness() == timedelta(minutes=7)  # 99%: one of 103 may stay late
    assert report.suggested_max_lateness(1.0) == timedelta(minutes=12)
    shard = report.shards[0]
    assert shard.first_event_us == int(T0.timestamp() * 1_000_000)
    table = report.as_table()
    assert 'max_lateness="5m": 2 of 103 rows late (1.9%); max_lateness="7m" would keep 99% of them ("12m" all' in table
    assert json.loads(json.dumps(report.as_json()))["max_lateness_keeping_all"] == "12m"


def test_in_order_rows_and_no_rows() -> None:
    assert "every sampled row is in event-time order" in preflight(Visit, {"s": [visit(1, 0), visit(2, 1)]}).as_table()
    assert "no rows in the sample" in preflight(Visit, {"s": []}).as_table()


def test_dead_letters_keep_one_escaped_example_per_reason_and_fanouts_count_events() -> None:
    bad = UserRecord("s", "9", 0, "k", b"\xff{oops", ARRIVAL)
    report = preflight(Visit, {"s": [visit(1, 0), bad, UserRecord("s", "10", 0, "k", gzip.compress(b"[1]"), ARRIVAL)]})
    assert report.examples == {"invalid_utf8": "\\xff{oops", "not_an_object": "(gzip, 23 bytes) [1]"}
    envelope = cloudwatch_logs_record([(ARRIVAL - 60_000, '{"request_id": "r1"}'), (ARRIVAL, "text")])
    control = cloudwatch_control_record(ARRIVAL)
    logs = preflight(
        Line, {"s": [UserRecord("s", "1", 0, "k", envelope, ARRIVAL), UserRecord("s", "2", 0, "k", control, ARRIVAL)]}
    )
    assert (logs.records, logs.rows, dict(logs.dead_letters)) == (2, 1, {"invalid_json": 1})
    assert logs.shards[0].control_messages == 1
    assert escaped(b"x" * 500).endswith("…")


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (["--keep", "0"], "not a share between 0 and 100%"),
        (["--keep", "lots"], "not a share"),
        (["--limit", "0"], "not a positive whole number"),
        (["--timeout", "-1"], "not a positive number of seconds"),
        (["--since", "yesterday-ish"], "--since"),
    ],
)
def test_preflight_options_are_checked_before_any_call(
    argument: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as code:
        main(["kinesis", "preflight", "tests.test_sample:Visit", *argument])
    assert code.value.code == 2
    assert message in capsys.readouterr().err
