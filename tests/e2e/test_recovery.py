"""End to end: where a consumer starts, and how it recovers (SIGTERM, kill -9, a shard split, a role).

Every test runs the real ``thyme kinesis run`` (the Java KCL MultiLangDaemon and its
``python -m record_processor`` children) against the local stack, on its own stream and
application, and ends with the store holding each produced record exactly once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import streams

from tests.e2e.harness import (
    Consumer,
    Ledger,
    StoreView,
    click,
    events,
    json_lines,
    now,
    produce,
    produce_slowly,
    unique,
    wait_active,
    wait_for,
    write_app,
)

GRACEFUL_CHECKPOINT = "shutdown requested; checkpointing the last applied record"


# -- helpers ---------------------------------------------------------------------------------


def log_runs(consumer: Consumer) -> list[str]:
    """The consumer's log split per start (``Consumer.start`` writes a marker line each time)."""
    return consumer.log_text().split("\n===== start ")[1:]


def messages(text: str, message: str) -> list[dict[str, Any]]:
    return [e for e in json_lines(text) if e.get("message") == message]


def initialized_shards(consumer: Consumer, run: int = -1) -> dict[str, Any]:
    """shard id -> the KCL checkpoint its child was initialised with, in one run of the consumer."""
    runs = log_runs(consumer)
    text = runs[run] if runs else ""
    return {str(e["shard"]): e.get("kcl_checkpoint") for e in messages(text, "initialize")}


def replayed(text: str) -> int:
    return sum(int(e.get("replayed", 0)) for e in messages(text, "batch applied"))


def hash_key(partition_key: str) -> int:
    """Kinesis maps a partition key to the shard whose range holds MD5(key) as a 128-bit integer."""
    return int(hashlib.md5(partition_key.encode()).hexdigest(), 16)


def processor_pids(config_file: str) -> list[int]:
    """Every live ``record_processor`` process on this machine started with ``config_file``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (
            b"record_processor" in cmdline
            and state != "Z"
            and f"THYME_PROCESSOR_CONFIG={config_file}".encode() in environ
        ):
            found.append(int(entry.name))
    return found


def processor_config_of(pid: int) -> str:
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"THYME_PROCESSOR_CONFIG="):
            return item.split(b"=", 1)[1].decode()
    raise AssertionError(f"process {pid} has no THYME_PROCESSOR_CONFIG")


class Producer(threading.Thread):
    """Puts ``items`` at ``per_second`` in the background (``produce_slowly``)."""

    def __init__(self, client: Any, stream: str, items: list[dict[str, Any]], per_second: float) -> None:
        super().__init__(daemon=True)
        self.client, self.stream, self.items, self.per_second = client, stream, items, per_second
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            produce_slowly(self.client, self.stream, self.items, self.per_second, self._halt.is_set)
        except BaseException as exc:  # re-raised by finish()
            self.error = exc

    def finish(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error

    def halt(self) -> None:
        self._halt.set()


@pytest.fixture
def producers() -> Iterator[list[Producer]]:
    started: list[Producer] = []
    yield started
    for producer in started:
        producer.halt()
        producer.join(30)


@pytest.fixture
def moto_by_credentials(aws: dict[str, str]) -> str:
    """The stack's moto server (DynamoDB + STS). It runs without ``MOTO_ACCOUNT_ID``, so it keeps
    accounts apart by the credentials that sign each call, and a table shows where it was made."""
    return aws["THYME_DYNAMODB_ENDPOINT_URL"]


# -- 1. initial position ---------------------------------------------------------------------


def test_init_position_trim_horizon_timestamp_latest(kinesis: Any, new_consumer: Any, tmp_path: Path) -> None:
    stream = unique("e2e-initpos")
    arn = streams.create_stream(kinesis, stream, 1)
    batch_a = events(0, 10)
    produce(kinesis, stream, batch_a)
    a_done = time.time()
    time.sleep(2.0)  # spacing in arrival time, not synchronisation
    at = math.floor(time.time())  # KCL's AT_TIMESTAMP takes whole epoch seconds
    assert at - a_done >= 1.0
    at_iso = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(at + 1.5 - time.time())
    batch_b = events(100, 10)
    produce(kinesis, stream, batch_b)

    # The premise, as Kinesis itself sees it: A arrived well before T, B after it.
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    arrivals = {
        json.loads(r["Data"])["n"]: r["ApproximateArrivalTimestamp"].timestamp()
        for r in kinesis.get_records(ShardIterator=iterator["ShardIterator"], Limit=100)["Records"]
    }
    assert sorted(arrivals) == [*range(10), *range(100, 110)]
    assert max(arrivals[n] for n in range(10)) < at - 0.5
    assert min(arrivals[n] for n in range(100, 110)) >= at + 1.0

    def start(position: str, name: str) -> Consumer:
        consumer: Consumer = new_consumer(
            write_app(tmp_path, arn, position), store=tmp_path / f"{name}.db", application=unique(f"e2e-{name}")
        )
        return consumer.start()

    trim, stamp, latest = start("trim_horizon", "trim"), start(at_iso, "stamp"), start("latest", "latest")
    trim_ledger, stamp_ledger, latest_ledger = Ledger(), Ledger(), Ledger()
    trim_ledger.expect_valid(batch_a + batch_b)
    stamp_ledger.expect_valid(batch_b)
    trim_store, stamp_store, latest_store = StoreView(trim.store), StoreView(stamp.store), StoreView(latest.store)

    trim_store.wait_total(trim_ledger.total, 180, trim)
    stamp_store.wait_total(stamp_ledger.total, 180, stamp)
    trim_store.check(trim_ledger)
    stamp_store.check(stamp_ledger)

    wait_for(lambda: messages(latest.log_text(), "shard initialised"), 180, "the latest consumer's child to initialise")
    assert latest_store.total() == 0
    batch_c = events(200, 10)
    produce(kinesis, stream, batch_c)
    for ledger in (trim_ledger, stamp_ledger, latest_ledger):
        ledger.expect_valid(batch_c)
    trim_store.wait_total(trim_ledger.total, 60, trim)
    stamp_store.wait_total(stamp_ledger.total, 60, stamp)
    latest_store.wait_total(latest_ledger.total, 60, latest)
    trim_store.check(trim_ledger)
    stamp_store.check(stamp_ledger)
    latest_store.check(latest_ledger)
    assert initialized_shards(trim) == {shard: "TRIM_HORIZON"}
    assert initialized_shards(stamp) == {shard: "AT_TIMESTAMP"}
    assert initialized_shards(latest) == {shard: "LATEST"}

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda c: c.stop(), [trim, stamp, latest])) == [0, 0, 0]


@dataclass
class MidStream:
    """A 2-shard stream with a running consumer and a producer still putting records."""

    stream: str
    ledger: Ledger
    consumer: Consumer
    store: StoreView
    producer: Producer


def start_mid_stream(
    name: str, kinesis: Any, new_consumer: Any, producers: list[Producer], tmp_path: Path, count: int, per_second: float
) -> MidStream:
    """Start a consumer, wait until it applies a warm-up, start a producer of ``count`` records and
    return once the store holds 60 records (the producer is then mid-stream)."""
    stream = unique(name)
    arn = streams.create_stream(kinesis, stream, 2)
    ledger = Ledger()
    consumer = new_consumer(write_app(tmp_path, arn, "trim_horizon"), application=unique(name)).start()
    store = StoreView(consumer.store)
    produce(kinesis, stream, ledger.expect_valid(events(0, 20)))
    store.wait_total(ledger.total, 180, consumer)  # the consumer is running: now produce a stream
    producer = Producer(kinesis, stream, ledger.expect_valid(events(1000, count)), per_second=per_second)
    producers.append(producer)
    producer.start()
    store.wait_total(60, 60, consumer)
    return MidStream(stream, ledger, consumer, store, producer)


# -- 2. SIGTERM mid-stream --------------------------------------------------------------------


def test_sigterm_mid_stream_then_restart(
    kinesis: Any, new_consumer: Any, producers: list[Producer], tmp_path: Path
) -> None:
    run = start_mid_stream("e2e-sigterm", kinesis, new_consumer, producers, tmp_path, count=300, per_second=40)
    stream, ledger, consumer, store, producer = run.stream, run.ledger, run.consumer, run.store, run.producer
    assert producer.is_alive(), "the producer finished before the stop: not mid-stream"
    assert consumer.stop() == 0
    first_run = log_runs(consumer)[0]
    at_stop = store.shards()
    assert len(at_stop) == 2
    assert len(messages(first_run, GRACEFUL_CHECKPOINT)) == 2, first_run[-4000:]
    assert len(messages(first_run, "daemon stopped")) == 1

    producer.finish()
    produce(kinesis, stream, ledger.expect_valid(events(5000, 50)))  # while the consumer is down
    consumer.start()
    store.wait_total(ledger.total, 180, consumer)
    store.check(ledger)
    # The graceful stop checkpointed exactly what the store had applied: the restart resumes there.
    assert initialized_shards(consumer, 1) == {shard: state["sequence"] for shard, state in at_stop.items()}
    assert replayed(log_runs(consumer)[1]) == 0
    assert consumer.stop() == 0


# -- 3. kill -9 mid-batch ---------------------------------------------------------------------


def test_kill9_mid_stream_then_restart(
    kinesis: Any, new_consumer: Any, producers: list[Producer], tmp_path: Path
) -> None:
    run = start_mid_stream("e2e-kill9", kinesis, new_consumer, producers, tmp_path, count=300, per_second=40)
    stream, ledger, consumer, store, producer = run.stream, run.ledger, run.consumer, run.store, run.producer
    children = consumer.children()
    assert children, "no record processor child to kill"
    config_file = processor_config_of(children[0])
    assert producer.is_alive(), "the producer finished before the kill: not mid-stream"
    consumer.kill9()
    # No child of the killed daemon survives it (an orphan exits on stdin EOF).
    wait_for(lambda: not processor_pids(config_file), 10, "the killed run's record processors to exit")

    producer.finish()
    produce(kinesis, stream, ledger.expect_valid(events(5000, 50)))
    consumer.start()
    store.wait_total(ledger.total, 180, consumer)
    store.check(ledger)
    restarted = initialized_shards(consumer, 1)
    assert set(restarted) == set(store.shards())
    assert all(str(checkpoint).isdigit() for checkpoint in restarted.values()), restarted  # resumed, not re-read
    print(f"kill -9: records replayed (and skipped) after the restart: {replayed(log_runs(consumer)[1])}")  # noqa: T201
    assert consumer.stop() == 0


# -- 4. shard split while consuming -----------------------------------------------------------


def test_shard_split_while_consuming(kinesis: Any, new_consumer: Any, tmp_path: Path) -> None:
    stream = unique("e2e-split")
    arn = streams.create_stream(kinesis, stream, 1)
    ledger = Ledger()
    consumer = new_consumer(write_app(tmp_path, arn, "trim_horizon"), application=unique("e2e-split"))
    consumer.extra_args = ["--no-bootstrap-leases"]  # KCL builds its lease table itself: that path is tested too
    consumer.start()
    store = StoreView(consumer.store)
    base = now()
    before = ledger.expect_valid(events(0, 100, at=base))
    produce(kinesis, stream, before)
    store.wait_total(ledger.total, 180, consumer)

    (parent,) = kinesis.list_shards(StreamName=stream)["Shards"]
    low, high = int(parent["HashKeyRange"]["StartingHashKey"]), int(parent["HashKeyRange"]["EndingHashKey"])
    middle = (low + high) // 2
    kinesis.split_shard(StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(middle + 1))
    wait_active(kinesis, stream)
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    children = sorted(s["ShardId"] for s in shards if s.get("ParentShardId") == parent["ShardId"])
    assert len(children) == 2

    # Event times older than the parent's watermark (but within max_lateness): each child's
    # watermark can only reach the parent's by inheriting it. And each child's first record is
    # older than the parent's watermark - 5m: late only if the child inherited the watermark.
    def key_in(lower: bool) -> str:
        return next(k for i in range(1000) if ((hash_key(k := f"late-{i}") <= middle) == lower))

    late = [click(9000 + i, key_in(lower), base - timedelta(minutes=10)) for i, lower in enumerate((True, False))]
    produce(kinesis, stream, late)
    ledger.expect_rejected("late", len(late))
    after = ledger.expect_valid(events(100, 100, users=50, at=base - timedelta(minutes=1)))
    assert {hash_key(e["user_id"]) <= middle for e in after} == {True, False}, "both children must get records"
    produce(kinesis, stream, after)
    store.wait_total(ledger.total, 120, consumer)
    store.check(ledger)

    found = store.shards()
    assert set(found) == {parent["ShardId"], *children}
    assert found[parent["ShardId"]]["ended"] is True
    assert [found[c]["ended"] for c in children] == [False, False]
    parent_mark = found[parent["ShardId"]]["watermark_us"]
    expected_mark = (base + timedelta(milliseconds=99) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert parent_mark == expected_mark
    for child in children:
        assert found[child]["watermark_us"] >= parent_mark
        assert found[child]["watermark_us"] == parent_mark  # all its own records are older: inherited
        assert found[child]["dead"] == 1
    assert consumer.stop() == 0


# -- 5. role_arn ------------------------------------------------------------------------------


def test_role_arn_is_assumed_for_kinesis_only(
    kinesis: Any, new_consumer: Any, moto_by_credentials: str, aws: dict[str, str], tmp_path: Path
) -> None:
    role = "arn:aws:iam::111122223333:role/e2e-reader"  # not the consumer's account (123456789012)
    stream = unique("e2e-role")
    arn = streams.create_stream(kinesis, stream, 1)
    ledger = Ledger()
    produce(kinesis, stream, ledger.expect_valid(events(0, 50)))
    application = unique("e2e-role")
    moto = moto_by_credentials
    consumer = new_consumer(
        write_app(tmp_path, arn, "trim_horizon", role_env="E2E_ROLE"),
        application=application,
        env={
            "E2E_ROLE": role,
            "THYME_KINESIS_EXTERNAL_ID": "e2e-external-id",  # the trust policy's sts:ExternalId
            "THYME_DYNAMODB_ENDPOINT_URL": moto,
            "THYME_STS_ENDPOINT_URL": moto,
        },
    ).start()
    store = StoreView(consumer.store)
    store.wait_total(ledger.total, 180, consumer)
    store.check(ledger)
    assert consumer.stop() == 0

    # (a) The daemon assumed the role (moto's STS keeps every assumed role), for this application.
    with urllib.request.urlopen(f"{moto}/moto-api/data.json", timeout=30) as reply:
        everything = json.load(reply)["sts"]["AssumedRole"]
    assumed = [a for a in everything if a["role_arn"] == role]  # the stack is shared with other tests
    assert assumed, "nothing assumed the role"
    # (the launcher's lease bootstrap lists the shards and KCL reads them: both as the role, with
    # the ExternalId the role's trust policy would check)
    assert {(a["role_arn"], a["session_name"], a["account_id"], a["external_id"]) for a in assumed} == {
        (role, application, "111122223333", "e2e-external-id")
    }

    # (b) The lease table is in the consumer's own account, not in the role's: moto keeps
    # accounts apart by the credentials a call is signed with.
    def tables(**credentials: str) -> set[str]:
        client = boto3.client("dynamodb", endpoint_url=moto, region_name=aws["AWS_REGION"], **credentials)
        return {str(t) for t in client.list_tables()["TableNames"]}

    assert application in tables()
    for session in assumed:
        as_role = tables(
            aws_access_key_id=session["access_key_id"],
            aws_secret_access_key=session["secret_access_key"],
            aws_session_token=session["session_token"],
        )
        assert as_role == set()

    assert role not in consumer.log_text()
    assert "e2e-external-id" not in consumer.log_text()


# -- 6. one child killed: the daemon exits, the launcher restarts it ---------------------------

RESTARTING = "the daemon exited (a shard's processor failed or the daemon crashed); restarting with the same worker id"


def test_a_killed_child_restarts_the_daemon_and_loses_nothing(
    kinesis: Any, new_consumer: Any, producers: list[Producer], tmp_path: Path
) -> None:
    run = start_mid_stream("e2e-child", kinesis, new_consumer, producers, tmp_path, count=200, per_second=20)
    ledger, consumer, store, producer = run.ledger, run.consumer, run.store, run.producer
    children = consumer.children()
    assert len(children) == 2, children
    os.kill(children[0], signal.SIGKILL)  # the daemon sees "end of STDIN" and exits its whole JVM

    def restarted() -> bool:
        assert consumer.alive(), consumer.log_text()[-4000:]
        return len(messages(consumer.log_text(), RESTARTING)) >= 1

    wait_for(restarted, 120, "the launcher to restart the daemon", interval=1)
    producer.finish()
    store.wait_total(ledger.total, 180, consumer)
    store.check(ledger)
    assert len(messages(consumer.log_text(), "starting the KCL MultiLangDaemon")) == 2
    assert consumer.stop() == 0
