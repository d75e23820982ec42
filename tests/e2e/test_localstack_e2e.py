"""End to end on the LocalStack engine: LocalStack on the host for Kinesis and STS, moto for DynamoDB.

The stack is ``scripts/local_aws.py --engine localstack``, started once for this module (not
the session's default stack, and also with ``THYME_E2E_ENDPOINTS=env``: the engine is what is
tested); if LocalStack cannot start, every test here fails with its log tail, never skips.

The user's path, through the real daemon: records land once and lookups read them, bad input
becomes dead letters, SIGTERM and a restart resume exactly once, a role in the stream's
account is assumed for Kinesis only, and a shard split while consuming. Then the engine
itself, as a user runs it from the command line: the same variables as the default engine,
127.0.0.1 only, and every process it started stopped by PID.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import streams
from botocore.exceptions import ClientError

from tests.e2e.harness import (
    REPO,
    Ledger,
    StoreView,
    check_lookups,
    click,
    events,
    log_per_start,
    logged,
    now,
    produce,
    unique,
    wait_active,
    wait_for,
    write_app,
)

sys.path.insert(0, str(REPO / "scripts"))

import local_aws

GRACEFUL_CHECKPOINT = "shutdown requested; checkpointing the last applied record"
STREAM_ACCOUNT = "111122223333"
"""The account that owns the stream in the role test: not the consumer's (``local_aws.ACCOUNT_ID``)."""


@pytest.fixture(scope="module")
def localstack_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_aws.LocalAWS]:
    stack = local_aws.LocalAWS(state_dir=tmp_path_factory.mktemp("localstack"), engine=local_aws.LOCALSTACK_ENGINE)
    stack.start()  # raises with LocalStack's log tail if it cannot start
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def aws(localstack_stack: local_aws.LocalAWS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This module's stack in place of the session's (``kinesis`` and ``new_consumer`` use it)."""
    env = localstack_stack.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # boto3's default session keeps the credentials it first found: an earlier module's ("test",
    # LocalStack's account 000000000000) would create this module's streams in the wrong account.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return env


def test_consume_dead_letters_lookups_then_sigterm_and_restart_resume_once(
    kinesis: Any, new_consumer: Any, tmp_path: Path
) -> None:
    stream = unique("ls-basic")
    arn = streams.create_stream(kinesis, stream, 2)
    assert arn == f"arn:aws:kinesis:us-east-1:{local_aws.ACCOUNT_ID}:stream/{stream}"  # as on the default engine
    ledger = Ledger()
    base = now() - timedelta(minutes=1)
    valid = ledger.expect_valid(events(0, 200, users=20, at=base))
    produce(kinesis, stream, valid)
    bad: list[tuple[str, bytes]] = [
        ("u1", b"{not json"),
        ("u2", b"\xff\xfe not utf-8"),
        ("u3", b'{"n": 1, "page": "/", "timestamp": "2024-05-01T12:00:00Z"}'),
        *[(f"u{i}", json.dumps(click(10_000 + i, f"u{i}", base - timedelta(hours=1))).encode()) for i in range(3)],
    ]
    for reason in ("invalid_json", "invalid_utf8", "schema: user_id: missing"):
        ledger.expect_rejected(reason)
    ledger.expect_rejected("late", 3)
    produce(kinesis, stream, bad)

    app = write_app(tmp_path, arn, "trim_horizon")
    consumer = new_consumer(app, application=unique("ls-basic"))
    started = now()
    consumer.start()
    store = StoreView(consumer.store)
    store.wait_total(ledger.total, 180, consumer)
    print(f"LocalStack engine: all records visible {(now() - started).total_seconds():.1f}s after run started")  # noqa: T201
    store.check(ledger)

    check_lookups(app, consumer.store, valid, base)

    # thyme kinesis status: the lease table (moto) and the store agree, per shard (Kinesis: LocalStack)
    def agreed() -> dict[str, Any] | None:
        found = consumer.status()
        shards = found["shards"]
        same = all(s["kcl_checkpoint"] == s["store_position"].removesuffix("/0") for s in shards)
        return found if len(shards) == 2 and same else None

    status = wait_for(agreed, 30, "the KCL checkpoints to reach the store positions")
    assert {s["lease_owner"] for s in status["shards"]} == {consumer.worker_id}
    assert sum(s["applied"] for s in status["shards"]) == len(valid)
    assert status["dead_letters_by_reason"] == dict(ledger.rejected)

    # SIGTERM: each shard checkpoints what the store applied; records put while it is down, then
    # a restart resumes from those checkpoints: every record still exactly once, none replayed.
    assert consumer.stop() == 0
    at_stop = store.shards()
    first = log_per_start(consumer)[0]
    assert len(logged(first, GRACEFUL_CHECKPOINT)) == 2, first[-4000:]
    produce(kinesis, stream, ledger.expect_valid(events(5000, 100, at=now())))
    consumer.start()
    store.wait_total(ledger.total, 180, consumer)
    store.check(ledger)
    second = log_per_start(consumer)[1]
    resumed = {str(e["shard"]): e.get("kcl_checkpoint") for e in logged(second, "initialize")}
    assert resumed == {shard: state["sequence"] for shard, state in at_stop.items()}
    assert sum(int(e.get("replayed", 0)) for e in logged(second, "batch applied")) == 0
    assert consumer.stop() == 0


def _recorded_moto_calls(moto_url: str) -> list[tuple[str, str, str]]:
    """(service, access key, table) of each call moto recorded, from their SigV4 Authorization headers."""
    with urllib.request.urlopen(f"{moto_url}/moto-api/recorder/download-recording", timeout=30) as reply:
        lines = reply.read().decode().splitlines()
    credential = re.compile(r"Credential=([^/,\s]+)/\d{8}/[^/]+/([^/]+)/aws4_request")
    calls = []
    for line in lines:
        entry = json.loads(line)
        headers = {k.lower(): v for k, v in entry["headers"].items()}
        found = credential.search(headers.get("authorization", ""))
        assert found is not None, f"unsigned call recorded: {entry['url']}"
        body = entry.get("body") or ""
        raw = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
        table = str(json.loads(raw or b"{}").get("TableName", "")) if found.group(2) == "dynamodb" else ""
        calls.append((found.group(2), found.group(1), table))
    return calls


def _moto_api(moto_url: str, action: str) -> None:
    request = urllib.request.Request(f"{moto_url}/moto-api/recorder/{action}", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=30):
        pass


def test_a_role_in_the_streams_account_is_assumed_for_kinesis_only(
    kinesis: Any, new_consumer: Any, aws: dict[str, str], tmp_path: Path
) -> None:
    """The cross-account set-up as on AWS: the stream is in another account, which the consumer's
    own credentials cannot see at all (LocalStack keeps accounts apart by credentials); the role
    there, assumed through LocalStack's STS, reads it; the lease table stays in moto, every call
    to it signed with the consumer's own key."""
    role = f"arn:aws:iam::{STREAM_ACCOUNT}:role/e2e-reader"
    owner = boto3.client(  # the stream account's own producer
        "kinesis",
        endpoint_url=aws["THYME_KINESIS_ENDPOINT_URL"],
        region_name=aws["AWS_REGION"],
        aws_access_key_id=STREAM_ACCOUNT,
        aws_secret_access_key="test",
    )
    stream = unique("ls-role")
    arn = streams.create_stream(owner, stream, 1)
    assert arn == f"arn:aws:kinesis:us-east-1:{STREAM_ACCOUNT}:stream/{stream}"
    with pytest.raises(ClientError) as denied:
        kinesis.describe_stream_summary(StreamName=stream)
    assert denied.value.response["Error"]["Code"] == "ResourceNotFoundException"  # not in the consumer's account
    ledger = Ledger()
    produce(owner, stream, ledger.expect_valid(events(0, 50)))

    moto = aws["THYME_DYNAMODB_ENDPOINT_URL"]
    _moto_api(moto, "reset-recording")
    _moto_api(moto, "start-recording")
    application = unique("ls-role")
    consumer = new_consumer(
        write_app(tmp_path, arn, "trim_horizon", role_env="E2E_ROLE"),
        application=application,
        env={"E2E_ROLE": role, "THYME_KINESIS_EXTERNAL_ID": "e2e-external-id"},
    ).start()
    store = StoreView(consumer.store)
    try:
        store.wait_total(ledger.total, 180, consumer)
        store.check(ledger)
        assert consumer.stop() == 0
    finally:
        _moto_api(moto, "stop-recording")

    calls = _recorded_moto_calls(moto)
    assert calls, "moto recorded no call"
    assert {service for service, _, _ in calls} == {"dynamodb"}
    assert {key for _, key, _ in calls} == {local_aws.ACCOUNT_ID}  # never the role's (LocalStack-issued) key
    assert application in {table for _, _, table in calls}
    tables = boto3.client("dynamodb", endpoint_url=moto, region_name=aws["AWS_REGION"]).list_tables()["TableNames"]
    assert application in tables
    log = consumer.log_text()
    assert role not in log
    assert "e2e-external-id" not in log


def test_a_shard_split_while_consuming(kinesis: Any, new_consumer: Any, tmp_path: Path) -> None:
    stream = unique("ls-split")
    arn = streams.create_stream(kinesis, stream, 1)
    ledger = Ledger()
    consumer = new_consumer(write_app(tmp_path, arn, "trim_horizon"), application=unique("ls-split")).start()
    store = StoreView(consumer.store)
    base = now()
    produce(kinesis, stream, ledger.expect_valid(events(0, 60, at=base)))
    store.wait_total(ledger.total, 180, consumer)

    (parent,) = kinesis.list_shards(StreamName=stream)["Shards"]
    low, high = int(parent["HashKeyRange"]["StartingHashKey"]), int(parent["HashKeyRange"]["EndingHashKey"])
    middle = (low + high) // 2
    kinesis.split_shard(StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(middle + 1))
    wait_active(kinesis, stream)
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    children = sorted(s["ShardId"] for s in shards if s.get("ParentShardId") == parent["ShardId"])
    assert len(children) == 2, shards

    after = ledger.expect_valid(events(100, 100, users=50, at=base + timedelta(seconds=1)))
    produce(kinesis, stream, after)
    store.wait_total(ledger.total, 180, consumer)
    store.check(ledger)
    found = store.shards()
    assert set(found) == {parent["ShardId"], *children}
    assert found[parent["ShardId"]]["ended"] is True
    assert [found[c]["ended"] for c in children] == [False, False]
    assert all(found[c]["applied"] > 0 for c in children), found  # both children got records
    assert consumer.stop() == 0


# -- the engine itself, from the command line ---------------------------------------------------


def _listening(pids: set[int]) -> set[tuple[int, str]]:
    """(pid, local address) of every TCP socket the processes ``pids`` listen on."""
    inodes: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                address, port = local.split(":")
                if len(address) == 8:
                    host = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
                else:
                    host = "::1" if address == "0" * 24 + "01000000" else f"ipv6:{address}"
                found.add((inodes[inode], f"{host}:{int(port, 16)}"))
    return found


def _alive(process: dict[str, Any]) -> bool:
    return local_aws.ServiceProcess.from_json(process).is_running()


def test_the_engine_from_the_command_line(tmp_path: Path) -> None:
    """``THYME_LOCAL_AWS_ENGINE=localstack local_aws.py start``: the default engine's variables,
    127.0.0.1 only, and ``stop`` ends LocalStack, moto and every kinesis-mock LocalStack started
    (its own session each: not in LocalStack's process group), also one started after ``start``."""
    state_dir = tmp_path / "cli-stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "THYME_"))}
    env[local_aws.ENGINE_ENV] = local_aws.LOCALSTACK_ENGINE

    def cli(command: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(REPO / "scripts" / "local_aws.py"), command, "--state-dir", str(state_dir)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)

    started = cli("start")
    assert started.returncode == 0, started.stderr
    recorded: list[dict[str, Any]] = []
    later: set[int] = set()
    try:
        exports = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
        default = local_aws.StackState(
            kinesis=local_aws.ServiceProcess("kinesis-mock", 1, 1, "", "", ()),
            kinesis_tls_port=2,
            moto=local_aws.ServiceProcess("moto", 1, 3, "", "", ()),
            started_at="",
        )
        assert list(exports) == list(default.env())  # the same variables, in the same order
        assert exports["THYME_STS_ENDPOINT_URL"] == exports["THYME_KINESIS_ENDPOINT_URL"]  # STS: LocalStack
        assert exports["THYME_DYNAMODB_ENDPOINT_URL"] != exports["THYME_KINESIS_ENDPOINT_URL"]  # DynamoDB: moto
        again = cli("env")
        assert again.stdout == started.stdout

        # another account's first call: LocalStack starts a kinesis-mock for it, after `start`
        other = boto3.client(
            "kinesis",
            endpoint_url=exports["THYME_KINESIS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=STREAM_ACCOUNT,
            aws_secret_access_key="test",
        )
        assert other.list_streams()["StreamNames"] == []
        state = json.loads((state_dir / "stack.json").read_text())
        recorded = [state["kinesis"], state["moto"], *state["spawned"]]
        assert [p["name"] for p in recorded] == ["localstack", "moto", "kinesis-mock"]
        localstack_pid = state["kinesis"]["pid"]
        later = {c.pid for c in local_aws._spawned_by_pid(localstack_pid)} - {p["pid"] for p in state["spawned"]}
        assert len(later) == 1, later
        pids = {p["pid"] for p in recorded} | later
        kinesis_mocks = {p["pid"] for p in state["spawned"]} | later
        assert {os.getsid(pid) for pid in kinesis_mocks} == kinesis_mocks  # each its own session and group
        listening = _listening(pids)
        assert {pid for pid, _ in listening} == pids, listening  # each of them serves something
        assert {address.rsplit(":", 1)[0] for _, address in listening} == {"127.0.0.1"}, listening
    finally:
        stopped = cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(_alive(p) for p in recorded), stopped.stderr
    for pid in later:
        assert local_aws._start_marker(pid) is None, stopped.stderr  # exited (at most a zombie until reaped)
        assert f"kinesis-mock (pid {pid})" in stopped.stderr  # found by `stop`, not only by LocalStack
    assert not (state_dir / "stack.json").exists()


def test_a_localstack_that_cannot_start_fails_loudly_with_its_log_tail(tmp_path: Path) -> None:
    """A LocalStack that exits at once (here: a virtualenv whose Python only complains) is an
    error naming it with the last lines of its log, and nothing is left running."""
    venv = tmp_path / "broken-venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named localstack (simulated)' >&2\nexit 3\n")
    python.chmod(0o755)
    (venv / local_aws.LOCALSTACK_STAMP).write_text(local_aws._localstack_stamp(local_aws.LOCALSTACK_REQUIREMENTS))
    stack = local_aws.LocalAWS(
        state_dir=tmp_path / "stack", engine=local_aws.LOCALSTACK_ENGINE, localstack_venv=venv, start_timeout=30
    )
    with pytest.raises(local_aws.LocalAWSError) as failed:
        stack.start()
    message = str(failed.value)
    assert message.startswith("localstack exited"), message
    assert "No module named localstack (simulated)" in message
    assert f"last lines of {tmp_path / 'stack' / 'localstack.log'}" in message
    assert not (tmp_path / "stack" / "stack.json").exists()
    assert stack._children == []  # the failed start stopped what it had started
