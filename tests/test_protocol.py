"""The MultiLangDaemon protocol, without Java: real multilang JSON lines in, exact replies out.

The first tests drive the amazon-kclpy loop through in-memory streams; the last ones run the
real child (``python -m record_processor``) as the daemon would, through pipes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from record_processor.kcl import EXIT_STORE_UNAVAILABLE, KclProcessor, kcl_process
from record_processor.worker import RetryPolicy, ShardWorker
from tests.child import (
    ARRIVAL_MS,
    SHARD,
    T0,
    checkpoint,
    checkpoint_reply,
    click,
    exchange,
    initialize,
    start_child,
    status,
)
from tests.factories import ClickEvent, feed_of, process_records, record_message, schema_of, seq
from thyme.errors import StoreUnavailableError
from thyme.logs import JsonLines
from thyme.records.lateness import LatenessPolicy
from thyme.serving import lookup
from thyme.store import Store, open_store

SCHEMA = schema_of(ClickEvent)
FEED = feed_of(SCHEMA)


def drive(store: Store, lines: list[str], retry: RetryPolicy | None = None) -> list[dict[str, Any]]:
    """Run the kclpy loop over ``lines``; return every message the child wrote to stdout."""
    worker = ShardWorker(FEED, LatenessPolicy(timedelta(minutes=5), timedelta(hours=1)), store, retry)
    stdin, stdout, stderr = io.StringIO("\n".join(lines) + "\n"), io.StringIO(), io.StringIO()
    context: dict[str, object] = {"component": "record_processor"}
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(JsonLines(context))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    process = kcl_process(KclProcessor(worker, context, sleep=lambda s: None), stdin, stdout, stderr)
    try:
        process.run()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        drive.stderr = stderr.getvalue()  # type: ignore[attr-defined]
        drive.stdout = stdout.getvalue()  # type: ignore[attr-defined]
    return [json.loads(line) for line in stdout.getvalue().splitlines() if line.strip()]


def test_full_lifecycle_exact_replies_and_store(store: Store) -> None:
    batch1 = [
        record_message(1, click("u1", 0, "/a"), ARRIVAL_MS),
        record_message(2, b"{not json", ARRIVAL_MS),
        record_message(3, b'{"user_id":"u2","page":"\xff","timestamp":1}', ARRIVAL_MS),
        record_message(4, '{"user_id":"u3","page":"\\udc00","timestamp":1}', ARRIVAL_MS),
        record_message(5, {"user_id": 5, "page": "/", "timestamp": "2024-05-01T12:00:00Z"}, ARRIVAL_MS),
        record_message(6, {"page": "/", "timestamp": "2024-05-01T12:00:00Z"}, ARRIVAL_MS),
        record_message(7, {"user_id": "u4", "page": "/", "timestamp": "2024-05-01T12:00:00"}, ARRIVAL_MS),
        record_message(8, {"user_id": "ms", "page": "/ms", "timestamp": int(T0.timestamp() * 1000)}, ARRIVAL_MS),
        record_message(9, {"user_id": "ns", "page": "/ns", "timestamp": int(T0.timestamp() * 10**9)}, ARRIVAL_MS),
        record_message(10, click("u1", 30, "/b"), ARRIVAL_MS + 1_800_000),
        record_message(11, click("late", 20), ARRIVAL_MS + 1_800_000),
        record_message(12, click("future", 200), ARRIVAL_MS + 1_800_000),
    ]
    # a KPL aggregate: three user records under one sequence number
    batch2 = [record_message(13, click(f"kpl{i}", 31), ARRIVAL_MS + 1_900_000, sub=i) for i in range(3)]
    lines = [
        initialize(),
        process_records(batch1),
        checkpoint_reply(seq(12)),
        process_records(batch2),
        checkpoint_reply(seq(13), 2),
        process_records(batch1 + batch2),
        checkpoint_reply(seq(13), 2),  # a replay
        json.dumps({"action": "shardEnded"}),
        checkpoint_reply(None, None),
    ]
    assert drive(store, lines) == [
        status("initialize"),
        checkpoint(seq(12), 0),
        status("processRecords"),
        checkpoint(seq(13), 2),
        status("processRecords"),
        checkpoint(seq(13), 2),
        status("processRecords"),
        checkpoint(None, None),
        status("shardEnded"),
    ]
    assert store.dead_letter_counts(SCHEMA) == {
        "future_timestamp": 1,
        "invalid_json": 2,
        "invalid_utf8": 1,
        "late": 1,
        'schema: timestamp: timestamp has no time zone; add "Z" or an offset such as "+00:00"': 1,
        "schema: user_id: expected str, got int": 1,
        "schema: user_id: missing": 1,
    }
    assert store.count_rows(SCHEMA) == 7  # u1 twice, ms, ns, and the three KPL users
    assert {
        k: lookup(ClickEvent, k, store=store) is not None for k in ("u1", "ms", "ns", "kpl0", "kpl2")
    } == dict.fromkeys(("u1", "ms", "ns", "kpl0", "kpl2"), True)
    assert lookup(ClickEvent, "u1", store=store).page == "/b"  # type: ignore[union-attr]
    assert lookup(ClickEvent, "u1", at=T0 + timedelta(minutes=1), store=store).page == "/a"  # type: ignore[union-attr]
    state = store.shard_state(FEED, SHARD)
    assert state is not None
    assert state.ended
    assert str(state.position) == f"{seq(13)}/2"
    # logs went to stderr as JSON lines, with the shard id
    logs = [json.loads(line) for line in drive.stderr.splitlines()]  # type: ignore[attr-defined]
    applied = [entry for entry in logs if entry["message"] == "batch applied"]
    assert [(e["shard"], e["applied"], e["replayed"]) for e in applied] == [
        (SHARD, 4, 0),
        (SHARD, 3, 0),
        (SHARD, 0, 15),
    ]


def test_lease_lost_and_shutdown_requested(store: Store) -> None:
    lines = [
        initialize(),
        process_records([record_message(1, click("u1", 0), ARRIVAL_MS)]),
        checkpoint_reply(seq(1)),
        json.dumps({"action": "shutdownRequested"}),
        checkpoint_reply(seq(1)),
        json.dumps({"action": "leaseLost"}),
    ]
    assert drive(store, lines) == [
        status("initialize"),
        checkpoint(seq(1), 0),
        status("processRecords"),
        checkpoint(seq(1), 0),
        status("shutdownRequested"),
        status("leaseLost"),
    ]
    # a requested shutdown ends in leaseLost (KCL 3's hand-over): said as such, not as a loss
    logs = [json.loads(line) for line in drive.stderr.splitlines()]  # type: ignore[attr-defined]
    events = [(e["message"], e.get("event")) for e in logs if "event" in e]
    assert events == [
        ("shutdown requested; checkpointing the last applied record", "shutdown"),
        ("shard handed over after a requested shutdown", "handed_over"),
    ]
    assert logs[-1]["checkpointed_at"] == f"{seq(1)}/0"


def test_lease_lost_without_a_shutdown_is_a_warning(store: Store) -> None:
    lines = [
        initialize(),
        process_records([record_message(1, click("u1", 0), ARRIVAL_MS)]),
        checkpoint_reply(seq(1)),
        json.dumps({"action": "leaseLost"}),
    ]
    assert drive(store, lines)[-1] == status("leaseLost")
    last = json.loads(drive.stderr.splitlines()[-1])  # type: ignore[attr-defined]
    assert (last["level"], last["event"], last["last_applied"]) == ("warning", "lease_lost", f"{seq(1)}/0")
    assert last["message"].startswith("lease lost; another worker took the shard")


def test_empty_batch_takes_no_checkpoint(store: Store) -> None:
    assert drive(store, [initialize(), process_records([])]) == [status("initialize"), status("processRecords")]


def test_checkpoint_refused_because_the_lease_moved_is_not_an_error(store: Store) -> None:
    lines = [
        initialize(),
        process_records([record_message(1, click("u1", 0), ARRIVAL_MS)]),
        checkpoint_reply(None, None, error="ShutdownException"),
    ]
    assert drive(store, lines)[-1] == status("processRecords")
    assert store.count_rows(SCHEMA) == 1


def test_throttled_checkpoint_is_retried(store: Store) -> None:
    lines = [
        initialize(),
        process_records([record_message(1, click("u1", 0), ARRIVAL_MS)]),
        checkpoint_reply(None, None, error="ThrottlingException"),
        checkpoint_reply(seq(1)),
    ]
    assert drive(store, lines) == [
        status("initialize"),
        checkpoint(seq(1), 0),
        checkpoint(seq(1), 0),
        status("processRecords"),
    ]


class BrokenStore:
    """A store whose writes always fail, as when the disk is full."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url

    def apply(self, *args: Any) -> None:
        raise StoreUnavailableError("SQLite store x: the disk (or the file-size limit) is full")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_batch_that_cannot_be_applied_is_never_acknowledged(store: Store) -> None:
    lines = [initialize(), process_records([record_message(1, click("u1", 0), ARRIVAL_MS)]), checkpoint_reply(seq(1))]
    with pytest.raises(SystemExit) as info:
        drive(BrokenStore(store), lines, RetryPolicy(initial_s=0, give_up_after_s=0))
    assert info.value.code == EXIT_STORE_UNAVAILABLE
    out = [json.loads(line) for line in drive.stdout.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert out == [status("initialize")]  # no checkpoint, no status for processRecords
    assert "batch not applied; exiting so the daemon restarts the shard" in drive.stderr  # type: ignore[attr-defined]
    assert store.count_rows(SCHEMA) == 0


# -- the real child process -------------------------------------------------------------


def test_real_child_speaks_only_protocol_on_stdout(store_url: str, tmp_path: Path) -> None:
    child = start_child(store_url, tmp_path / "stderr")
    assert exchange(child, initialize()) == status("initialize")
    records = [record_message(n, click(f"u{n}", n), ARRIVAL_MS + n * 60_000) for n in range(1, 4)]
    assert exchange(child, process_records(records)) == checkpoint(seq(3), 0)
    assert exchange(child, checkpoint_reply(seq(3))) == status("processRecords")
    assert exchange(child, json.dumps({"action": "shardEnded"})) == checkpoint(None, None)
    assert exchange(child, checkpoint_reply(None, None)) == status("shardEnded")
    out, _ = child.communicate(timeout=30)  # EOF on stdin ends the child
    err = (tmp_path / "stderr").read_text()
    assert child.returncode == 0
    assert out.strip() == ""
    for line in err.splitlines():
        entry = json.loads(line)  # every stderr line is a JSON log line
        assert entry["component"] == "record_processor"
    db = open_store(store_url)
    assert db.count_rows(schema_of(ClickEvent).replace(name="SourcedClick")) == 3
    db.close()


def test_real_child_exits_nonzero_when_the_store_is_locked(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "thyme.db")
    store_url = f"sqlite:///{path}"
    open_store(store_url).close()
    holder = sqlite3.connect(path, isolation_level=None)
    child = start_child(store_url + "?busy_timeout_ms=100", tmp_path / "stderr", "--give-up-after", "1")
    assert exchange(child, initialize()) == status("initialize")
    holder.execute("BEGIN IMMEDIATE")
    assert child.stdin is not None
    child.stdin.write(process_records([record_message(1, click("u1", 0), ARRIVAL_MS)]) + "\n")
    child.stdin.flush()
    child.wait(timeout=60)
    holder.execute("ROLLBACK")
    assert child.returncode == EXIT_STORE_UNAVAILABLE
    rest: list[str] = []
    with contextlib.suppress(queue.Empty):
        while True:
            rest.append(child.lines.get(timeout=2))  # type: ignore[attr-defined]
    assert "".join(rest).strip() == ""  # neither checkpoint nor status
    assert "held the write lock for more than 100 ms" in (tmp_path / "stderr").read_text()
