"""End to end: a leader lock nobody renews (a leader killed, awslabs/amazon-kinesis-client#1803)
is noticed, said in one line and removed by the launcher, and consumption starts; ``status``
names the leader."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import streams

from tests.e2e.harness import Ledger, StoreView, events, json_lines, now, produce, unique, write_app


def test_a_lock_left_by_a_dead_leader_is_removed_and_consumption_starts(
    kinesis: Any, aws: dict[str, str], new_consumer: Any, tmp_path: Path
) -> None:
    stream = unique("e2e-leader")
    arn = streams.create_stream(kinesis, stream, 2)
    ledger = Ledger()
    produce(kinesis, stream, ledger.expect_valid(events(0, 100, at=now() - timedelta(minutes=1))))
    application = unique("e2e-leader-app")
    # a leader that died holding the lock: KCL's own item, with a version nobody will renew
    dynamodb = boto3.client(
        "dynamodb", endpoint_url=os.environ.get("THYME_DYNAMODB_ENDPOINT_URL"), region_name="us-east-1"
    )
    table = f"{application}-CoordinatorState"
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ghost = {"S": "ghost-worker"}
    dynamodb.put_item(
        TableName=table,
        Item={
            "key": {"S": "Leader"},
            "ownerName": ghost,
            "recordVersionNumber": {"S": str(uuid.uuid4())},
            "leaseDuration": {"S": "120000"},
        },
    )
    consumer = new_consumer(write_app(tmp_path, arn), application=application)
    consumer.extra_args = ["--leader-stale-s", "45"]
    started = time.monotonic()
    consumer.start()
    store = StoreView(consumer.store)
    store.wait_total(ledger.total, 240, consumer)
    took = time.monotonic() - started
    store.check(ledger)
    events_seen = [line for line in json_lines(consumer.log_text()) if line.get("event", "").startswith("leader_")]
    assert [e["event"] for e in events_seen] == ["leader_lock_stale", "leader_lock_removed"], events_seen
    assert events_seen[0]["owner"] == "ghost-worker"
    # KCL alone waits out the lock's 120 s lease from when it first sees it; the watch removed it at 45 s
    assert took < 120, f"records landed {took:.0f}s after the start"
    leader = consumer.status()["leader"]
    assert leader["owner"] == consumer.worker_id
    assert leader["owner_gone"] is False
    print(f"records landed {took:.0f}s after the start, behind a dead leader's lock")  # noqa: T201 - for the log
    assert consumer.stop() == 0
