"""Fault injection on the stream side: the Kinesis endpoint goes down and comes back, and the
stream is resharded (split, then the two children merged) while the consumer runs. Each
scenario ends with every produced record in the store exactly once and writes a row for the
README's reliability table."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import local_aws
import pytest
import streams
from botocore.exceptions import BotoCoreError, ClientError

from tests.e2e.faults import (
    RESTARTING,
    MakeConsumer,
    checkpoints,
    conclude,
    messages,
    records,
)
from tests.e2e.harness import (
    Ledger,
    StoreView,
    click,
    events,
    now,
    produce,
    unique,
    wait_active,
    wait_for,
    write_app,
)

# -- 1. the Kinesis endpoint down for a while --------------------------------------------------------

KINESIS_DOWN_S = 10.0
PERSIST_INTERVAL_S = 1.0


@pytest.fixture
def own_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[local_aws.LocalAWS]:
    """A local stack of this test's own (its kinesis-mock is stopped and started again), with
    kinesis-mock persisting its streams to disk so that a restart keeps them."""
    data = tmp_path / "kinesis-data"
    data.mkdir()
    monkeypatch.setenv("SHOULD_PERSIST_DATA", "true")
    monkeypatch.setenv("LOAD_DATA_IF_EXISTS", "true")
    monkeypatch.setenv("PERSIST_PATH", str(data))
    monkeypatch.setenv("PERSIST_INTERVAL", f"{PERSIST_INTERVAL_S:g}s")
    stack = local_aws.LocalAWS(state_dir=tmp_path / "own-aws")
    stack.start()  # raises with the servers' log tails if it cannot start
    try:
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def kinesis_down(stack: local_aws.LocalAWS, persisted_after: float, seconds: float) -> Iterator[None]:
    """kill -9 kinesis-mock once it has persisted what was put before ``persisted_after``; keep it
    down for ``seconds``; start it again on the same port (it reloads its streams)."""
    service = stack.state.kinesis
    saved = Path(os.environ["PERSIST_PATH"]) / "kinesis-data.json"
    wait_for(
        lambda: saved.exists() and saved.stat().st_mtime > persisted_after + PERSIST_INTERVAL_S,
        30,
        "kinesis-mock to persist its streams",
    )
    os.kill(service.pid, signal.SIGKILL)
    wait_for(lambda: not service.is_running(), 10, "kinesis-mock to die")
    time.sleep(seconds)  # the outage
    package = Path(service.argv[-1]).parent
    env = {
        **os.environ,
        **local_aws.KINESIS_MOCK_SETTINGS,
        "KINESIS_MOCK_CERT_PATH": str(package / "server.json"),
        "KINESIS_MOCK_PLAIN_PORT": str(service.port),
        "KINESIS_MOCK_TLS_PORT": str(stack.state.kinesis_tls_port),
    }
    with (stack.state_dir / "kinesis-mock-restarted.log").open("wb") as log:
        again = subprocess.Popen(
            list(service.argv),
            cwd=stack.state_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield
    finally:
        again.send_signal(signal.SIGKILL)
        again.wait(10)


def test_kinesis_endpoint_down_then_back(
    own_stack: local_aws.LocalAWS, fault_consumer: MakeConsumer, tmp_path: Path
) -> None:
    env = own_stack.env()
    kinesis = boto3.client(
        "kinesis",
        endpoint_url=env["THYME_KINESIS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    stream = unique("e2e-fault-kinesis")
    arn = streams.create_stream(kinesis, stream, 1)
    consumer = fault_consumer(write_app(tmp_path, arn), env=env).start()
    view = StoreView(consumer.store)
    ledger = Ledger()
    started = time.monotonic()
    streams.put_payloads(kinesis, stream, records(ledger, 0, 30))
    put_at = time.time()
    view.wait_total(ledger.total, 180, consumer)
    table_env = {**env, "AWS_REGION": env["AWS_REGION"]}
    before = checkpoints(table_env, consumer.application)

    with kinesis_down(own_stack, put_at, KINESIS_DOWN_S):
        assert consumer.alive(), consumer.log_text()[-4000:]
        assert checkpoints(table_env, consumer.application) == before

        def answers() -> bool:
            try:
                return stream in kinesis.list_streams()["StreamNames"]
            except (BotoCoreError, ClientError):
                return False

        wait_for(answers, 60, "kinesis-mock to answer again with the stream", interval=0.5)
        streams.put_payloads(kinesis, stream, records(ledger, 100, 50))
        view.wait_total(ledger.total, 180, consumer)
        restarts = len(messages(consumer, RESTARTING))
        conclude(
            "Kinesis endpoint down",
            f"kinesis-mock killed, down {KINESIS_DOWN_S:.0f} s, restarted with its persisted streams",
            ledger,
            view,
            started,
            f"the daemon kept its leases and resumed reading by itself (daemon restarts: {restarts})",
        )
        assert consumer.stop() == 0


# -- 2. split, then merge the two children, while consuming -------------------------------------------


def test_split_then_merge_while_consuming(kinesis: Any, fault_consumer: MakeConsumer, tmp_path: Path) -> None:
    stream = unique("e2e-fault-reshard")
    arn = streams.create_stream(kinesis, stream, 1)
    consumer = fault_consumer(write_app(tmp_path, arn)).start()
    view = StoreView(consumer.store)
    ledger = Ledger()
    started = time.monotonic()
    base = now()
    produce(kinesis, stream, ledger.expect_valid(events(0, 50, at=base)))
    view.wait_total(ledger.total, 180, consumer)

    (parent,) = kinesis.list_shards(StreamName=stream)["Shards"]
    low, high = int(parent["HashKeyRange"]["StartingHashKey"]), int(parent["HashKeyRange"]["EndingHashKey"])
    kinesis.split_shard(
        StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str((low + high) // 2 + 1)
    )
    wait_active(kinesis, stream)
    produce(kinesis, stream, ledger.expect_valid(events(100, 60, users=40, at=base - timedelta(minutes=1))))
    view.wait_total(ledger.total, 120, consumer)
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    children = sorted(
        (s for s in shards if s.get("ParentShardId") == parent["ShardId"]),
        key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]),
    )
    assert len(children) == 2

    kinesis.merge_shards(
        StreamName=stream, ShardToMerge=children[0]["ShardId"], AdjacentShardToMerge=children[1]["ShardId"]
    )
    wait_active(kinesis, stream)
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    (merged,) = [s for s in shards if s.get("AdjacentParentShardId") is not None]
    assert {merged["ParentShardId"], merged["AdjacentParentShardId"]} == {c["ShardId"] for c in children}
    # late for the merged shard only if it inherited its parents' watermark (base + 49 ms)
    late = click(9000, "late-user", base - timedelta(minutes=6))
    produce(kinesis, stream, [late])
    ledger.expect_rejected("late")
    produce(kinesis, stream, ledger.expect_valid(events(200, 60, users=40, at=base - timedelta(minutes=2))))
    view.wait_total(ledger.total, 120, consumer)

    found = view.shards()
    ids = [parent["ShardId"], *(c["ShardId"] for c in children), merged["ShardId"]]
    assert set(found) == set(ids), found
    assert [found[i]["ended"] for i in ids] == [True, True, True, False]
    assert found[merged["ShardId"]]["watermark_us"] == max(found[c["ShardId"]]["watermark_us"] for c in children)
    conclude(
        "split, then merge, while consuming",
        "SplitShard 1→2, then MergeShards of the two children, with records on every shard",
        ledger,
        view,
        started,
        "parents read to their end first; the merged shard inherited the greater parent watermark",
    )
    assert consumer.stop() == 0
