"""End to end: the real KCL daemon consumes a 2-shard stream into the store."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import streams

from tests.e2e.harness import (
    THYME,
    Ledger,
    StoreView,
    check_lookups,
    click,
    events,
    now,
    produce,
    unique,
    wait_for,
    write_app,
)
from thyme.loader import load_dataset
from thyme.serving import lookup


def test_records_land_once_with_lookups_and_dead_letters(kinesis: Any, new_consumer: Any, tmp_path: Path) -> None:
    stream = unique("e2e-basic")
    arn = streams.create_stream(kinesis, stream, 2)
    ledger = Ledger()
    base = now() - timedelta(minutes=1)
    valid = ledger.expect_valid(events(0, 300, users=20, at=base))
    produce(kinesis, stream, valid)
    bad: list[tuple[str, bytes]] = [
        ("u1", b"{not json"),
        ("u2", b'{"user_id": "u2", "n": "7", "page": "/", "timestamp": "2024-05-01T12:00:00Z"}'),
        ("u3", b'{"n": 1, "page": "/", "timestamp": "2024-05-01T12:00:00Z"}'),
        ("u4", json.dumps(click(9001, "u4", base)).encode().replace(b"+00:00", b"")),
        ("u5", b"\xff\xfe not utf-8"),
        ("u6", json.dumps({"user_id": "u6", "n": 6, "timestamp": base.isoformat()}).encode()),  # fixed by v2
    ]
    for reason in (
        "invalid_json",
        "schema: n: expected int, got str",
        "schema: user_id: missing",
        'schema: timestamp: timestamp has no time zone; add "Z" or an offset such as "+00:00"',
        "invalid_utf8",
        "schema: page: missing",
    ):
        ledger.expect_rejected(reason)
    late = [click(10_000 + i, f"u{i}", base - timedelta(hours=1)) for i in range(5)]
    future = [click(20_000, "u0", now() + timedelta(hours=3))]
    ledger.expect_rejected("late", len(late))
    ledger.expect_rejected("future_timestamp", len(future))
    produce(kinesis, stream, [*bad, *[(e["user_id"], json.dumps(e).encode()) for e in late + future]])

    app = write_app(tmp_path, arn, "trim_horizon")
    consumer = new_consumer(app)
    consumer.extra_args = ["--metrics", "emf"]
    consumer.start()
    store = StoreView(consumer.store)
    started = now()
    store.wait_total(ledger.total, 180, consumer)
    first_visible = now() - started
    store.check(ledger)

    # lookups: the newest version per user is the highest n of that user
    check_lookups(app, consumer.store, valid, base)
    url = f"sqlite:///{consumer.store}"
    out = subprocess.run(
        [THYME, "lookup", f"{app}:Clicks", "u7", "--store", url], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["n"] == max(e["n"] for e in valid if e["user_id"] == "u7")

    # thyme kinesis status: the lease table and the store agree once each batch is checkpointed
    def agreed() -> dict[str, Any] | None:
        found = consumer.status()
        shards = found["shards"]
        same = all(s["kcl_checkpoint"] == s["store_position"].removesuffix("/0") for s in shards)
        return found if len(shards) == 2 and same else None

    found = wait_for(agreed, 30, "the KCL checkpoints to reach the store positions")
    assert {s["lease_owner"] for s in found["shards"]} == {consumer.worker_id}
    assert sum(s["applied"] for s in found["shards"]) == len(valid)
    assert found["dead_letters_by_reason"] == dict(ledger.rejected)
    by_shard: Counter[str] = Counter()
    for shard in found["shards"]:
        by_shard.update(shard["dead_letters_by_reason"])
        assert shard["last_batch_at"] is not None
        # the lag KCL reported with the last batch: behind by at most the test's age, never negative
        assert 0 <= shard["millis_behind_latest"] < 600_000
    assert by_shard == ledger.rejected
    table = subprocess.run(
        [THYME, "kinesis", "status", f"{app}:Clicks", "--store", url, "--application-name", consumer.application],
        capture_output=True,
        text=True,
        check=True,
        env=consumer.env,
    ).stdout
    assert table.splitlines()[0].split() == [
        "shard",
        "owner",
        "renewals",
        "kcl",
        "checkpoint",
        "store",
        "position",
        "watermark",
        "behind",
        "last",
        "batch",
        "applied",
        "dead",
    ]
    assert "shardId-000000000000" in table and "late" in table

    assert consumer.stop() == 0
    log = consumer.log_text()
    assert "shutdown requested; checkpointing the last applied record" in log
    assert "\x1b[K" not in log  # no progress line when stderr is not a terminal
    # metrics: one CloudWatch EMF line per applied batch; their counts add up to the ledger
    metrics = [json.loads(line) for line in log.splitlines() if line.startswith('{"_aws":')]
    assert sum(m["RecordsApplied"] for m in metrics) == len(valid)
    assert sum(m["RecordsLate"] for m in metrics) == len(late)
    assert sum(m["RecordsInvalid"] for m in metrics) == ledger.total - len(valid) - len(late)
    assert {m["Shard"] for m in metrics} == {"shardId-000000000000", "shardId-000000000001"}
    assert all(m["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Thyme/KinesisSource" for m in metrics)

    # dead letters: list with filters, then re-drive against the fixed dataset (page made optional:
    # stored rows can follow that, so it is the same version)
    def cli_lines(*args: str) -> list[dict[str, Any]]:
        done = run_cli(*args, "--store", url, env=consumer.env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    listed = cli_lines("kinesis", "dead-letters", "list", f"{app}:Clicks", "--reason", "invalid_utf8")
    assert [(d["partition_key"], d["payload"]) for d in listed] == [("u5", "\\xff\\xfe not utf-8")]
    per_shard = cli_lines("kinesis", "dead-letters", "list", f"{app}:Clicks", "--shard", "shardId-000000000000")
    assert {d["shard"] for d in per_shard} == {"shardId-000000000000"}
    fixed = tmp_path / "app_fixed.py"
    fixed.write_text(app.read_text().replace("page: Field[str]", "page: Field[str | None]"))
    (report,) = cli_lines("kinesis", "dead-letters", "redrive", f"{fixed}:Clicks")
    assert (report["redriven"], report["not_redriven"]) == (1, {"late": len(late)})
    assert sum(report["still_failing"].values()) == ledger.total - len(valid) - len(late) - 1
    (again,) = cli_lines("kinesis", "dead-letters", "redrive", f"{fixed}:Clicks")
    assert again["redriven"] == 0
    u6 = lookup(load_dataset(f"{fixed}:Clicks"), "u6", at=base, store=url)  # u6's other clicks are later
    assert u6 is not None
    assert (u6.n, u6.page) == (6, None)
    assert set(store.shards()) == {"shardId-000000000000", "shardId-000000000001"}
    print(f"first records visible after {first_visible.total_seconds():.1f}s")  # noqa: T201

    # a new version (n becomes a float: stored rows cannot follow) is a dataset of its own: its
    # consumer reads the stream again from init_position, beside version 1, into its own rows
    v2 = tmp_path / "app_v2.py"
    v2.write_text(
        fixed.read_text()
        .replace("@dataset(index=True)", "@dataset(index=True, version=2)")
        .replace("n: Field[int]", "n: Field[float]")
    )
    second = new_consumer(v2, store=consumer.store)
    second.start()
    v2_rows = "SELECT count(*) FROM ds_Clicks_v2"
    wait_for(lambda: store.query(v2_rows) == [(len(valid) + 1,)], 180, "version 2 to read the stream again")
    found = lookup(load_dataset(f"{v2}:Clicks"), "u6", at=base, store=url)
    assert found is not None
    assert (found.n, found.page) == (6.0, None)
    v2_status = second.status()
    assert sum(s["applied"] for s in v2_status["shards"]) == len(valid) + 1  # its own counts, not v1's
    assert second.stop() == 0
    assert store.applied() == Counter(ledger.valid) + Counter([6])  # version 1 untouched (u6 re-driven)


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([THYME, *args], check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_bad_configuration_fails_fast_with_one_line(aws: dict[str, str], tmp_path: Path) -> None:
    arn = "arn:aws:kinesis:us-east-1:123456789012:stream/never-created"
    env = {**os.environ, **aws}
    app = write_app(tmp_path, arn, "trim_horizon", role_env="E2E_UNSET_ROLE")
    cases = {
        "missing secret": (
            ["kinesis", "run", f"{app}:Clicks"],
            env,
            "thyme: error: Secret(env='E2E_UNSET_ROLE'): environment variable E2E_UNSET_ROLE is not set. Set "
            "E2E_UNSET_ROLE in the consumer's environment (for example from your secret manager) before starting it.",
        ),
        "no such module": (
            ["kinesis", "run", "no_such_module:Clicks"],
            env,
            "thyme: error: cannot import no_such_module: No module named 'no_such_module'",
        ),
        "not a dataset": (
            ["kinesis", "run", f"{app}:datetime"],
            env,
            f"thyme: error: {app}:datetime is not a @dataset class",
        ),
        "missing jars": (
            ["kinesis", "run", f"{app}:Clicks"],
            {
                **env,
                "E2E_UNSET_ROLE": "arn:aws:iam::123456789012:role/r",
                "THYME_KCL_CLASSPATH": str(tmp_path / "nothing"),
            },
            f"thyme: error: the KCL jars are missing from {tmp_path / 'nothing'}: run thyme kinesis install-jars "
            f"--into {tmp_path / 'nothing'} (the pinned set, checked against its hashes), or set THYME_KCL_CLASSPATH "
            "to a folder holding the multilang daemon's classpath.",
        ),
        "no java": (
            ["kinesis", "run", f"{app}:Clicks"],
            {
                **env,
                "E2E_UNSET_ROLE": "arn:aws:iam::123456789012:role/r",
                "PATH": str(Path(THYME).parent),
                "JAVA_HOME": "",
            },
            "thyme: error: java not found: the KCL MultiLangDaemon needs a Java runtime (11 or newer). Install one "
            "(e.g. apt-get install default-jre-headless) or set JAVA_HOME.",
        ),
        "bad role": (
            ["kinesis", "run", f"{app}:Clicks"],
            {**env, "E2E_UNSET_ROLE": "arn:aws:iam::123456789012:user/bob"},
            "thyme: error: KinesisSource(role_arn=Secret(env='E2E_UNSET_ROLE')): not an IAM role ARN (got "
            "<redacted>). Use arn:<partition>:iam::<12-digit account>:role/<name>, the role the consumer assumes "
            "to read the stream.",
        ),
    }
    cases["status of a stream that does not exist"] = (
        ["kinesis", "status", f"{app}:Clicks"],
        {**env, "E2E_UNSET_ROLE": "arn:aws:iam::123456789012:role/r"},
        "thyme: error: stream never-created (account 123456789012, region us-east-1) does not exist. Check the "
        "dataset's stream_arn (and the account and region it names), or create the stream.",
    )
    for name, (args, case_env, message) in cases.items():
        result = run_cli(*args, env=case_env, cwd=tmp_path)
        assert (name, result.returncode, result.stderr.strip()) == (name, 2, message)
        assert result.stdout == ""
    bad_arn = tmp_path / "bad_arn.py"
    bad_arn.write_text(write_app(tmp_path, arn).read_text().replace(arn, "click-events"))
    result = run_cli("kinesis", "run", f"{bad_arn}:Clicks", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(
        "thyme: error: KinesisSource(stream_arn=...): not a Kinesis stream ARN (got 'click-events')."
    )
    assert result.stderr.count("\n") == 1
