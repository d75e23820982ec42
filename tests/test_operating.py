"""Operating it: metrics lines, the progress line, status, dead-letter listing and re-drive."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from record_processor.metrics import METRIC_NAMES, EmfMetrics
from tests.child import ARRIVAL_MS, checkpoint_reply, exchange, initialize, start_child
from tests.factories import feed_of, process_records, record_message, seq
from thyme.cli import main
from thyme.handover import DEFAULT_NAMESPACE, BatchEvent
from thyme.kinesis.progress import Progress
from thyme.kinesis.status import ShardStatus, as_table
from thyme.loader import load_dataset
from thyme.schema import dataset_schema
from thyme.serving import lookup
from thyme.store import Batch, DeadLetter, Position, ShardState, open_store


def event(shard: str, seconds: float, lag: int | None) -> BatchEvent:
    dead = {"late": 2, "schema: page": 1}
    return BatchEvent(
        shard=shard,
        received=10,
        applied=7,
        dead_letters=dead,
        millis_behind_latest=lag,
        seconds=seconds,
        store_seconds=0.012,
    )


def check_emf(entry: dict[str, Any]) -> None:
    """The structure CloudWatch requires of an EMF log event."""
    directive = entry["_aws"]
    assert isinstance(directive["Timestamp"], int)
    for block in directive["CloudWatchMetrics"]:
        for dimensions in block["Dimensions"]:
            for name in dimensions:
                assert isinstance(entry[name], str)
        for metric in block["Metrics"]:
            assert isinstance(entry[metric["Name"]], int | float), metric
            assert metric["Unit"] in {"Count", "Milliseconds"}


def test_emf_line_per_batch() -> None:
    out = io.StringIO()
    EmfMetrics("Clicks", stream=out, clock=lambda: 1_700_000_000.5).batch(event("shardId-1", 0.0255, 1500))
    (line,) = out.getvalue().splitlines()
    entry = json.loads(line)
    check_emf(entry)
    assert entry["_aws"]["Timestamp"] == 1_700_000_000_500
    (block,) = entry["_aws"]["CloudWatchMetrics"]
    assert block["Namespace"] == DEFAULT_NAMESPACE
    assert block["Dimensions"] == [["Dataset", "Shard"], ["Dataset"]]
    assert [m["Name"] for m in block["Metrics"]] == list(METRIC_NAMES)
    assert {k: entry[k] for k in ("Dataset", "Shard", "RecordsReceived", "RecordsApplied", "RecordsLate")} == {
        "Dataset": "Clicks",
        "Shard": "shardId-1",
        "RecordsReceived": 10,
        "RecordsApplied": 7,
        "RecordsLate": 2,
    }
    assert (entry["RecordsInvalid"], entry["RecordsReplayed"]) == (1, 0)
    assert (entry["BatchDuration"], entry["StoreWriteLatency"], entry["MillisBehindLatest"]) == (25.5, 12.0, 1500)


def test_emf_line_leaves_out_a_lag_kcl_did_not_report() -> None:
    out = io.StringIO()
    EmfMetrics("Clicks", "Team/Feature", stream=out).batch(event("s", 0.01, None))
    entry = json.loads(out.getvalue())
    check_emf(entry)
    assert "MillisBehindLatest" not in entry
    assert entry["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Team/Feature"


def test_real_child_writes_metrics_lines_on_stderr_only(tmp_path: Path) -> None:
    child = start_child(f"sqlite:///{tmp_path / 'thyme.db'}", tmp_path / "stderr", "--metrics", "emf")
    exchange(child, initialize())
    payload = {"user_id": "u", "page": "/", "timestamp": "2024-05-01T12:00:00Z"}
    records = [record_message(1, payload, ARRIVAL_MS), record_message(2, b"{oops", ARRIVAL_MS)]
    assert exchange(child, process_records(records, millis_behind=4200))["action"] == "checkpoint"
    assert exchange(child, checkpoint_reply(seq(2)))["action"] == "status"
    out, _ = child.communicate(timeout=30)
    assert out.strip() == ""
    metrics = [
        json.loads(line) for line in (tmp_path / "stderr").read_text().splitlines() if line.startswith('{"_aws"')
    ]
    (entry,) = metrics
    check_emf(entry)
    assert (entry["RecordsApplied"], entry["RecordsInvalid"], entry["MillisBehindLatest"]) == (1, 1, 4200)
    assert entry["Shard"] == "shardId-000000000001"


# -- the progress line ----------------------------------------------------------------------


def batch_line(shard: str, received: int, lag: int | None, dead: dict[str, int] | None = None) -> str:
    fields = {
        "time": "t",
        "level": "info",
        "message": "batch applied",
        "shard": shard,
        "received": received,
        "applied": received - sum((dead or {}).values()),
        "dead_letters": dead or {},
        "millis_behind_latest": lag,
    }
    return json.dumps(fields) + "\n"


def test_progress_counts_batches_and_keeps_one_status_line() -> None:
    clock = [100.0]
    out = io.StringIO()
    progress = Progress(out, clock=lambda: clock[0])
    assert progress.summary() == "thyme: waiting for the first batch…"
    clock[0] = 102.0
    progress.write(batch_line("shardId-0", 10_000, 90_000))
    progress.write("2026-11-27 INFO some daemon line\n")
    clock[0] = 104.0
    progress.write(batch_line("shardId-1", 6_000, 2500, {"late": 3}))
    assert progress.summary() == "thyme: 2 shards · 16,000 records · 4,000 rec/s · behind 1.5 min · 3 dead letters"
    # each write clears the status line, writes the log line, redraws the status line
    text = out.getvalue()
    assert "\r\x1b[Kthyme: 1 shard · 10,000 records" in text
    assert "\r\x1b[K2026-11-27 INFO some daemon line\n\r\x1b[Kthyme: " in text
    clock[0] = 200.0  # nothing for a while: the rate decays, the lag is the last reported
    progress.write(batch_line("shardId-0", 1, 200))
    progress.write(batch_line("shardId-1", 1, 300))
    assert progress.summary() == "thyme: 2 shards · 16,002 records · 0 rec/s · caught up · 3 dead letters"
    progress.clear()
    assert out.getvalue().endswith("\r\x1b[K")


def test_progress_ignores_other_lines() -> None:
    progress = Progress(io.StringIO())
    for line in ("not json batch applied", '{"message": "batch applied", "received": "x"}', "{}", ""):
        progress.observe(line)
    assert progress.received == 0


# -- status table ---------------------------------------------------------------------------


def test_status_table_shows_lag_last_batch_and_reasons_per_shard() -> None:
    row = ShardStatus(
        shard="shardId-000000000001",
        lease_owner="host-a",
        lease_counter=12,
        kcl_checkpoint="49590338271490256608559692538361571095921575989136588898",
        store_position="49590338271490256608559692538361571095921575989136588898/0",
        watermark="2026-11-27T09:00:00.000Z",
        ended=False,
        applied=300,
        dead_lettered=4,
        dead_letters_by_reason={"late": 3, "invalid_json": 1},
        millis_behind_latest=1500,
        last_batch_at="2026-11-27T09:00:01.000Z",
    )
    lines = as_table([row], {"invalid_json": 1, "late": 3}).splitlines()
    assert lines[0].split() == [
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
    assert lines[1].split() == [
        "shardId-000000000001",
        "host-a",
        "12",
        "…989136588898",
        "…989136588898",  # the same length as the checkpoint, so the two compare by eye
        "2026-11-27T09:00:00.000Z",
        "1.5s",
        "2026-11-27T09:00:01.000Z",
        "300",
        "4",
    ]
    assert lines[-1] == "  shardId-000000000001: late 3, invalid_json 1"


# -- dead letters: list and re-drive through the CLI --------------------------------------

APP = """\
from datetime import datetime
from typing import Optional

from thyme import Field, dataset, field
from thyme.connectors import KinesisSource, source


@source(KinesisSource(stream_arn="arn:aws:kinesis:us-east-1:000000000000:stream/clicks"), max_lateness="5m")
@dataset(index=True, version={version})
class Clicks:
    user_id: Field[str] = field(key=True)
    page: Field[{page}] = field()
    timestamp: Field[datetime] = field(timestamp=True)
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[Any]]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines()]


def test_dead_letters_list_and_redrive_against_the_fixed_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = tmp_path / "app_v1.py"
    v1.write_text(APP.format(version=1, page="str"))
    # the fix: page made optional, which stored rows can follow, so the same version
    fixed = tmp_path / "app_fixed.py"
    fixed.write_text(APP.format(version=1, page="Optional[str]"))
    v2 = tmp_path / "app_v2.py"
    v2.write_text(APP.format(version=2, page="int"))
    url = f"sqlite:///{tmp_path / 'thyme.db'}"
    s1 = dataset_schema(load_dataset(f"{v1}:Clicks"))
    assert s1 is not None
    no_page = b'{"user_id": "u1", "timestamp": "2024-05-01T12:00:00Z"}'
    letters = [
        DeadLetter("shardId-0", "1", 0, "u1", no_page, "schema: page: missing", ARRIVAL_MS),
        DeadLetter("shardId-0", "2", 0, "u2", b"{broken", "invalid_json", ARRIVAL_MS),
        DeadLetter(
            "shardId-1", "3", 0, "u3", b'{"user_id": "u3", "page": "/", "timestamp": 1714564700}', "late", ARRIVAL_MS
        ),
    ]
    db = open_store(url)
    assert db.apply(feed_of(s1), Batch("shardId-0", ShardState(Position(2)), [], letters[:2]), None) is None
    assert db.apply(feed_of(s1), Batch("shardId-1", ShardState(Position(3)), [], letters[2:]), None) is None
    db.close()

    code, listed = run_cli(capsys, "kinesis", "dead-letters", f"{v1}:Clicks", "--store", url)  # the old form
    assert code == 0
    assert [(d["shard"], d["reason"], d["payload"]) for d in listed] == [
        ("shardId-0", "schema: page: missing", no_page.decode()),
        ("shardId-0", "invalid_json", "{broken"),
        ("shardId-1", "late", '{"user_id": "u3", "page": "/", "timestamp": 1714564700}'),
    ]
    _, only = run_cli(capsys, "kinesis", "dead-letters", "list", f"{v1}:Clicks", "--store", url, "--shard", "shardId-1")
    assert [d["sequence"] for d in only] == ["3"]
    _, none = run_cli(
        capsys, "kinesis", "dead-letters", "list", f"{v1}:Clicks", "--store", url, "--since", "2999-01-01T00:00:00Z"
    )
    assert none == []

    # against the dataset as it was: nothing passes, nothing changes
    _, (report,) = run_cli(capsys, "kinesis", "dead-letters", "redrive", f"{v1}:Clicks", "--store", url)
    assert report == {
        "examined": 3,
        "redriven": 0,
        "would_redrive": 0,
        "still_failing": {"invalid_json": 1, "schema: page: missing": 1},
        "not_redriven": {"late": 1},
    }
    # the fixed dataset (page optional, same version): a dry run, then the re-drive, then again
    _, (dry,) = run_cli(capsys, "kinesis", "dead-letters", "redrive", f"{fixed}:Clicks", "--store", url, "--dry-run")
    assert (dry["would_redrive"], dry["redriven"]) == (1, 0)
    _, (done,) = run_cli(capsys, "kinesis", "dead-letters", "redrive", f"{fixed}:Clicks", "--store", url)
    assert (done["redriven"], done["still_failing"], done["not_redriven"]) == (1, {"invalid_json": 1}, {"late": 1})
    _, (again,) = run_cli(capsys, "kinesis", "dead-letters", "redrive", f"{fixed}:Clicks", "--store", url)
    assert (again["examined"], again["redriven"]) == (2, 0)
    found = lookup(load_dataset(f"{fixed}:Clicks"), "u1", store=url)
    assert found is not None
    assert found.page is None
    # late letters only when asked for by name
    _, (late,) = run_cli(
        capsys, "kinesis", "dead-letters", "redrive", f"{fixed}:Clicks", "--store", url, "--reason", "late"
    )
    assert late["redriven"] == 1
    _, held = run_cli(capsys, "kinesis", "dead-letters", "list", f"{fixed}:Clicks", "--store", url)
    assert [d["reason"] for d in held] == ["invalid_json"]
    _, history = run_cli(
        capsys, "kinesis", "dead-letters", "list", f"{fixed}:Clicks", "--store", url, "--include-redriven"
    )
    assert [d["redriven_at_us"] is not None for d in history] == [True, False, True]
    # the store now holds the widened shape: the old code still reads it (a rolling deploy)
    old = lookup(load_dataset(f"{v1}:Clicks"), "u1", store=url)
    assert old is not None
    assert old.page is None
    # a new version is a dataset of its own: none of version 1's dead letters, rows or state
    _, nothing = run_cli(capsys, "kinesis", "dead-letters", "list", f"{v2}:Clicks", "--store", url)
    assert nothing == []
    assert lookup(load_dataset(f"{v2}:Clicks"), "u1", store=url) is None


# -- the launcher's Prometheus endpoint ---------------------------------------------------------


def test_prometheus_exporter_adds_up_batches_per_shard_and_serves_them() -> None:
    import urllib.error
    import urllib.request

    from thyme.kinesis.prometheus import CONTENT_TYPE, PrometheusExporter

    exporter = PrometheusExporter("Clicks")
    exporter.daemon_started()
    exporter.observe(batch_line("shardId-0", 100, 5000, {"late": 2}))
    exporter.observe(batch_line("shardId-0", 50, 0))
    exporter.observe(batch_line("shardId-1", 10, None, {'schema: "page"': 1}))
    exporter.observe("not a batch line")
    text = exporter.render()
    assert 'thyme_records_received_total{dataset="Clicks",shard="shardId-0"} 150' in text
    assert 'thyme_records_applied_total{dataset="Clicks",shard="shardId-0"} 148' in text
    assert 'thyme_batches_total{dataset="Clicks",shard="shardId-0"} 2' in text
    assert 'thyme_dead_letters_total{dataset="Clicks",shard="shardId-0",reason="late"} 2' in text
    assert 'thyme_dead_letters_total{dataset="Clicks",shard="shardId-1",reason="schema: \\"page\\""} 1' in text
    assert 'thyme_millis_behind_latest{dataset="Clicks",shard="shardId-0"} 0' in text
    assert 'thyme_millis_behind_latest{dataset="Clicks",shard="shardId-1"}' not in text  # never reported
    assert 'thyme_daemon_starts_total{dataset="Clicks"} 1' in text
    for line in text.splitlines():  # the text format: comments, or `name{labels} number`
        assert line.startswith("# ") or float(line.rsplit(" ", 1)[1]) >= 0
    port = exporter.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert reply.headers["Content-Type"] == CONTENT_TYPE
            assert reply.read().decode() == exporter.render()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert missing.value.code == 404
    finally:
        exporter.close()
