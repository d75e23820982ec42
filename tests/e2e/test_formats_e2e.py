"""End to end: the record formats AWS services put on Kinesis, through the real daemon.

Records are built as the services build them (``scripts/aws_records.py``, from AWS's documented
shapes): CloudWatch Logs subscription records (gzip envelopes of many events, a control message)
and CloudFront real-time log lines (every documented field). Compressed JSON goes through the
bad-input corpus (``tests/e2e/test_badinput_e2e.py``), which holds gzip and zlib cases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import streams
from aws_records import (
    CLOUDFRONT_FIELDS,
    cloudfront_line,
    cloudfront_request,
    cloudwatch_control_record,
    cloudwatch_logs_record,
)

from tests.e2e.harness import THYME, StoreView, json_lines, now, unique, wait_for

LOGS_APP = """\
from datetime import datetime

from thyme import Field, dataset, field
from thyme.connectors import KinesisSource, source


@source(KinesisSource(stream_arn={arn!r}, init_position="trim_horizon", format="cloudwatch_logs"), max_lateness="5m")
@dataset(index=True)
class AppLogs:
    request_id: Field[str] = field(key=True)
    n: Field[int] = field()
    level: Field[str] = field()
    timestamp: Field[datetime] = field(timestamp=True)
    log_group: Field[str] = field()
    log_stream: Field[str] = field()
    log_event_id: Field[str] = field()
"""

EDGE_APP = """\
from datetime import datetime
from typing import Optional

from thyme import Field, dataset, field
from thyme.connectors import KinesisSource, source

FIELDS = {fields!r}


@source(KinesisSource(stream_arn={arn!r}, init_position="trim_horizon", format="cloudfront_realtime", fields=FIELDS))
@dataset(index=True)
class EdgeRequests:
    x_edge_request_id: Field[str] = field(key=True)
    timestamp: Field[datetime] = field(timestamp=True)
    c_ip: Field[str] = field()
    sc_status: Field[int] = field()
    sc_bytes: Field[int] = field()
    time_to_first_byte: Field[float] = field()
    cs_uri_stem: Field[str] = field()
    cs_referer: Field[Optional[str]] = field()
    x_edge_location: Field[str] = field()
"""


def log_message(n: int, at: datetime | None) -> str:
    body: dict[str, Any] = {"request_id": f"r{n}", "n": n, "level": "INFO" if n % 7 else "WARN"}
    if at is not None:
        body["timestamp"] = at.isoformat()
    return json.dumps(body)


def envelopes(start: int, records: int, base: datetime, stream_name: str) -> tuple[list[tuple[str, bytes]], set[int]]:
    """``records`` subscription records of 20 events each, numbered from ``start``: 18 good events
    (half with a timestamp in the message, half relying on the event's), one plain-text line and
    one event an hour older than its record's first (late). Returns the payloads and the good ``n``."""
    payloads: list[tuple[str, bytes]] = []
    good: set[int] = set()
    n = start
    for r in range(records):
        at = base + timedelta(seconds=r)
        at_ms = int(at.timestamp() * 1000)
        events: list[tuple[int, str]] = []
        for i in range(18):
            events.append((at_ms + i, log_message(n, at + timedelta(milliseconds=i) if n % 2 else None)))
            good.add(n)
            n += 1
        events.append((at_ms, f"REPORT RequestId: {n} Duration: 1.2 ms"))
        events.append((at_ms - 3_600_000, log_message(1_000_000 + n, None)))  # late
        n += 1
        payloads.append(
            (f"pk{r}", cloudwatch_logs_record(events, log_stream=f"{stream_name}/{r % 3}", first_id=n * 100))
        )
    return payloads, good


def test_cloudwatch_logs_subscription_records_one_row_per_event_once_across_a_child_kill(
    kinesis: Any, new_consumer: Any, tmp_path: Path
) -> None:
    stream = unique("e2e-cwl")
    arn = streams.create_stream(kinesis, stream, 2)
    base = now() - timedelta(minutes=2)
    base = base.replace(microsecond=base.microsecond // 1000 * 1000)  # CloudWatch's times are in ms
    first, good_first = envelopes(0, 20, base, "2024/05/01/[$LATEST]a")
    control = ("control", cloudwatch_control_record(int(base.timestamp() * 1000)))
    streams.put_payloads(kinesis, stream, [control, *first])

    app = tmp_path / "logs_app.py"
    app.write_text(LOGS_APP.format(arn=arn))
    consumer = new_consumer(app)
    consumer.dataset = "AppLogs"
    consumer.start()
    store = StoreView(consumer.store)

    def applied() -> Counter[int]:
        return Counter(int(n) for (n,) in store.query("SELECT json_extract(row, '$.n') FROM ds_AppLogs_v1"))

    def letters() -> Counter[str]:
        return Counter(dict(store.query("SELECT reason, count(*) FROM thyme_dead_letters GROUP BY reason")))

    def landed(expected_rows: int, expected_letters: int) -> bool:
        assert consumer.alive(), consumer.log_text()[-4000:]
        return sum(applied().values()) >= expected_rows and sum(letters().values()) >= expected_letters

    wait_for(lambda: landed(len(good_first), 40), 180, "the first 20 subscription records")

    # kill -9 a child between batches of fanned-out records: the daemon restarts the shard from its
    # last checkpoint, which may be behind what the store applied; no event may land twice
    victims = consumer.children()
    assert victims, "no record processor child found"
    os.kill(victims[0], signal.SIGKILL)
    second, good_second = envelopes(10_000, 20, base + timedelta(seconds=30), "2024/05/01/[$LATEST]b")
    streams.put_payloads(kinesis, stream, second)
    good = good_first | good_second
    wait_for(lambda: landed(len(good), 80), 240, "all 40 subscription records")

    counts = applied()
    assert {n: c for n, c in counts.items() if c > 1} == {}, "an event applied twice"
    assert set(counts) == good
    assert letters() == Counter({"invalid_json": 40, "late": 40})  # the control message is neither

    rows = [json.loads(r) for (r,) in store.query("SELECT row FROM ds_AppLogs_v1 WHERE json_extract(row, '$.n') = 0")]
    assert rows[0]["log_group"] == "/aws/lambda/checkout"
    assert rows[0]["log_stream"] == "2024/05/01/[$LATEST]a/0"
    assert rows[0]["timestamp"] == base.isoformat().replace("+00:00", "Z")  # the event's time: none in the message
    assert len(rows[0]["log_event_id"]) == 56

    out = subprocess.run(
        [THYME, "kinesis", "dead-letters", f"{app}:AppLogs", "--store", consumer.store_url, "--reason", "late"],
        capture_output=True,
        text=True,
        check=True,
        env=consumer.env,
    )
    first_letter = json.loads(out.stdout.splitlines()[0])
    event = json.loads(first_letter["payload"])  # the event's own bytes, not the envelope
    assert set(event) == {"id", "timestamp", "message"}
    assert "behind the shard's watermark" in first_letter["detail"]
    assert "log event 19 from log group /aws/lambda/checkout" in first_letter["detail"]
    batches = [e for e in json_lines(consumer.log_text()) if "control_messages" in e]
    assert sum(e["control_messages"] for e in batches) >= 1
    assert consumer.stop() == 0


def test_cloudfront_realtime_log_lines_with_every_documented_field(
    kinesis: Any, new_consumer: Any, tmp_path: Path
) -> None:
    stream = unique("e2e-cf")
    arn = streams.create_stream(kinesis, stream, 2)
    base = now() - timedelta(minutes=1)
    payloads: list[tuple[str, bytes]] = []
    for n in range(300):
        values = cloudfront_request(n, base + timedelta(milliseconds=10 * n), status=200 if n % 10 else 404)
        payloads.append((f"ip{n % 50}", cloudfront_line(values)))
    good = 300
    bad_status = cloudfront_request(900, base)
    bad_status["sc-status"] = "2OO"
    short = cloudfront_line(cloudfront_request(901, base), CLOUDFRONT_FIELDS[:-1])
    absent = cloudfront_request(902, base)
    absent["c-ip"] = None
    payloads += [("bad1", cloudfront_line(bad_status)), ("bad2", short), ("bad3", cloudfront_line(absent))]
    streams.put_payloads(kinesis, stream, payloads)

    app = tmp_path / "edge_app.py"
    app.write_text(EDGE_APP.format(arn=arn, fields=list(CLOUDFRONT_FIELDS)))
    consumer = new_consumer(app)
    consumer.dataset = "EdgeRequests"
    consumer.start()
    store = StoreView(consumer.store)

    def total() -> int:
        assert consumer.alive(), consumer.log_text()[-4000:]
        rows = store.query("SELECT count(*) FROM ds_EdgeRequests_v1")
        dead = store.query("SELECT count(*) FROM thyme_dead_letters")
        return (rows[0][0] if rows else 0) + (dead[0][0] if dead else 0)

    wait_for(lambda: total() >= good + 3, 180, "every CloudFront line in the store")
    assert store.query("SELECT count(DISTINCT json_extract(row, '$.x_edge_request_id')) FROM ds_EdgeRequests_v1") == [
        (good,)
    ]
    assert dict(store.query("SELECT reason, count(*) FROM thyme_dead_letters GROUP BY reason")) == {
        'schema: sc_status: expected int, got "2OO"': 1,
        "wrong_field_count": 1,
        "schema: c_ip: missing (sent as -)": 1,
    }
    ((raw,),) = store.query("SELECT raw FROM thyme_dead_letters WHERE reason = 'wrong_field_count'")
    assert bytes(raw) == short

    out = subprocess.run(
        [
            THYME,
            "lookup",
            f"{app}:EdgeRequests",
            "req-000000000010-Example==",
            "--store",
            consumer.store_url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env=consumer.env,
    )
    row = json.loads(out.stdout)
    assert row["sc_status"] == 404
    assert row["cs_referer"] is None
    assert row["time_to_first_byte"] == 0.002
    assert row["x_edge_location"] == "IAD89-P1"
    assert consumer.stop() == 0
