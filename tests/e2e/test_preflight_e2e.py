"""End to end: ``thyme kinesis preflight`` against a stream holding good, bad, late and
KPL-aggregated records, read-only, on the local stack."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import streams
from aws_kinesis_agg.aggregator import RecordAggregator

from tests.e2e.harness import THYME, click, now, unique, write_app


def test_preflight_reports_rows_dead_letters_and_lateness_without_writing(
    kinesis: Any, aws: dict[str, str], tmp_path: Path
) -> None:
    stream = unique("e2e-preflight")
    arn = streams.create_stream(kinesis, stream, 2)
    base = now() - timedelta(minutes=30)
    good = [click(n, f"u{n % 5}", base + timedelta(seconds=n)) for n in range(200)]
    # 10 records 20 minutes behind the newest before them on the same partition key (and shard);
    # max_lateness is 5m, so they are late, and a max_lateness of 20m+ keeps them
    late = [click(1000 + n, f"u{n % 5}", base + timedelta(seconds=199 - 1200)) for n in range(10)]
    payloads: list[tuple[str, bytes]] = [(e["user_id"], json.dumps(e).encode()) for e in good + late]
    payloads += [
        ("u1", b"{not json"),
        ("u2", b'{"user_id": "u2", "n": "x", "page": "/", "timestamp": "2024-01-01T00:00:00Z"}'),
    ]
    streams.put_payloads(kinesis, stream, payloads)
    agg = RecordAggregator()  # one KPL-aggregated record of 5 user records, one of them bad
    for n in range(2000, 2004):
        agg.add_user_record("u3", json.dumps(click(n, "u3", base + timedelta(seconds=300))).encode())
    agg.add_user_record("u3", b"[1, 2]")
    key, _, data = agg.clear_and_get().get_contents()
    kinesis.put_record(StreamName=stream, Data=data, PartitionKey=key)

    app = write_app(tmp_path, arn)
    store = tmp_path / "never.db"
    command = [THYME, "kinesis", "preflight", f"{app}:Clicks", "--since", "2h", "--json"]
    out = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        env={**aws, "PATH": "/usr/bin:/bin", "THYME_STORE_URL": f"sqlite:///{store}"},
    )
    assert out.returncode == 1, out.stderr  # dead letters in the sample
    report = json.loads(out.stdout)
    assert report["records"] == 200 + 10 + 2 + 5
    assert report["rows"] == 200 + 4
    assert report["dead_letters"] == {
        "late": 10,
        "invalid_json": 1,
        "schema: n: expected int, got str": 1,
        "not_an_object": 1,
    }
    assert report["examples"]["invalid_json"] == "{not json"
    assert report["examples"]["not_an_object"] == "[1, 2]"  # a user record from inside the aggregate
    assert report["max_lateness"] == "5m"
    suggested = report["suggested_max_lateness"]
    assert suggested is not None
    assert {s["shard"] for s in report["shards"]} == {"shardId-000000000000", "shardId-000000000001"}
    assert sum(s["records"] for s in report["shards"]) == report["records"]
    assert all(s["complete"] for s in report["shards"])
    assert not store.exists(), "preflight wrote a store"

    # keep everything: the suggestion covers the 20-minute-late records
    out = subprocess.run(
        [*command[:-1], "--keep", "100%"],
        check=False,
        capture_output=True,
        text=True,
        env={**aws, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 1
    assert 'max_lateness="5m": 10 of 214 rows late (4.7%)' in out.stdout
    assert 'max_lateness="20m' in out.stdout
    assert "shardId-000000000000" in out.stdout
    assert "e.g. {not json" in out.stdout
    tables = kinesis.list_streams()["StreamNames"]
    assert stream in tables
