"""The peer: what an AWS user reaches for today, behind the same multilang pipe.

AWS Lambda Powertools' batch processor for Kinesis (``BatchProcessor`` with
``EventType.KinesisDataStreams`` and a pydantic parser model for the click schema, the
documented ``Json[Model]`` payload pattern) handles each record; the handler applies the same
lateness rule as Thyme (so the same rows are written) and collects the rows; then the batch
is written with plain ``executemany``, one ``BEGIN IMMEDIATE`` transaction per batch, with the
same pragmas as the Thyme store (WAL, ``synchronous=FULL``, 32 MiB cache), into

* ``plain`` (the default): a table of its own, ``peer_clicks (rid, user_id, ts, row)`` indexed
  on ``(user_id, ts)`` for lookups, as a user would write it, holding the same prefilled rows;
* ``runs``: Thyme's own tables (the rows table, and each batch's index entries as one new
  sorted run, never merged), which isolates the per-record decoding path.

It does not store dead letters or the shard offset: every simplification is in the peer's favour.

The process speaks the multilang protocol like the floor child: read a line, build the
Lambda-shaped event from it, run the batch processor, write, checkpoint the last record, reply.

    python benchmarks/peer_child.py sqlite:///path/to/store.db [plain|runs]
"""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import UTC, datetime
from typing import Any, Final

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.parser.models import KinesisDataStreamRecord, KinesisDataStreamRecordPayload
from pydantic import AwareDatetime, BaseModel, Json

TABLE: Final = "ds_SourcedClick_v1"
LATENESS_US: Final = 5 * 60 * 1_000_000
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class Click(BaseModel):
    user_id: str
    page: str
    timestamp: AwareDatetime


class ClickPayload(KinesisDataStreamRecordPayload):
    data: Json[Click]


class ClickRecord(KinesisDataStreamRecord):
    kinesis: ClickPayload


class LateError(Exception):
    """The record is older than the watermark minus the allowed lateness."""


class Peer:
    def __init__(self, url: str, layout: str) -> None:
        self.layout = layout
        self.db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        for pragma in (
            "busy_timeout = 30000",
            "journal_mode = WAL",
            "synchronous = FULL",
            "cache_size = -32768",
            "wal_autocheckpoint = 10000",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.processor = BatchProcessor(event_type=EventType.KinesisDataStreams, model=ClickRecord)
        self.watermark_us: int | None = None
        self.rows: list[tuple[str, int, str]] = []

    def handle(self, record: ClickRecord) -> None:
        click = record.kinesis.data
        assert isinstance(click, Click)
        delta = click.timestamp - EPOCH
        ts_us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        if self.watermark_us is not None and ts_us < self.watermark_us - LATENESS_US:
            raise LateError(record.kinesis.sequenceNumber)
        self.watermark_us = ts_us if self.watermark_us is None else max(self.watermark_us, ts_us)
        self.rows.append((click.user_id, ts_us, click.model_dump_json()))

    def process(self, shard: str, records: list[dict[str, Any]]) -> None:
        event = {
            "Records": [
                {
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": r["partitionKey"],
                        "sequenceNumber": r["sequenceNumber"],
                        "data": r["data"],
                        "approximateArrivalTimestamp": r["approximateArrivalTimestamp"] / 1000,
                    },
                    "eventSource": "aws:kinesis",
                    "eventVersion": "1.0",
                    "eventID": f"{shard}:{r['sequenceNumber']}",
                    "eventName": "aws:kinesis:record",
                    "invokeIdentityArn": "arn:aws:iam::123456789012:role/peer",
                    "awsRegion": "us-east-1",
                    "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/clicks",
                }
                for r in records
            ]
        }
        self.rows = []
        process_partial_response(event=event, record_handler=self.handle, processor=self.processor)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        if self.layout == "plain":
            db.executemany("INSERT INTO peer_clicks (user_id, ts, row) VALUES (?, ?, ?)", self.rows)
            db.execute("COMMIT")
            return
        base = db.execute(f'SELECT coalesce(max(rid), 0) FROM "{TABLE}"').fetchone()[0] + 1
        db.executemany(
            f'INSERT INTO "{TABLE}" (rid, row) VALUES (?, ?)', [(base + i, r[2]) for i, r in enumerate(self.rows)]
        )
        run = db.execute(f'SELECT coalesce(max(run), 0) + 1 FROM "{TABLE}_runs"').fetchone()[0]
        db.execute(
            f'CREATE TABLE "{TABLE}_run{run}" (key NOT NULL, ts INTEGER NOT NULL, rid INTEGER NOT NULL, '
            "PRIMARY KEY (key, ts, rid)) WITHOUT ROWID"
        )
        db.executemany(
            f'INSERT INTO "{TABLE}_run{run}" (key, ts, rid) VALUES (?, ?, ?)',
            sorted((r[0], r[1], base + i) for i, r in enumerate(self.rows)),
        )
        db.execute(f'INSERT INTO "{TABLE}_runs" (run, size_class, entries) VALUES (?, 0, ?)', (run, len(self.rows)))
        db.execute("COMMIT")


def main() -> None:
    peer = Peer(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "plain")
    inp, out = sys.stdin, sys.stdout
    shard = ""

    def write(message: dict[str, Any]) -> None:
        out.write("\n" + json.dumps(message) + "\n")
        out.flush()

    while True:
        line = inp.readline()
        if not line:
            return
        message = json.loads(line)
        action = message["action"]
        if action == "initialize":
            shard = message["shardId"]
        if action == "processRecords" and message["records"]:
            peer.process(shard, message["records"])
            last = message["records"][-1]
            write(
                {
                    "action": "checkpoint",
                    "sequenceNumber": last["sequenceNumber"],
                    "subSequenceNumber": last["subSequenceNumber"],
                }
            )
            json.loads(inp.readline())
        write({"action": "status", "responseFor": action})


if __name__ == "__main__":
    main()
