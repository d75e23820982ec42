"""Fault injection, end to end: the store goes away (PostgreSQL stopped, SQLite locked, a full
disk) and a large batch is interrupted by SIGTERM. After each fault the store holds every
produced valid record exactly once and every invalid or late one exactly once as a dead letter,
no KCL checkpoint moves while the store cannot take the batch, and the consumer recovers by
itself. Each scenario also writes a row for the README's reliability table (``reliability.py``).

The helpers are in ``faults.py``, shared with ``test_faults_process.py`` and ``test_faults_stream.py``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import streams

from tests.e2e.faults import (
    GAVE_UP,
    GRACEFUL_CHECKPOINT,
    RESTARTING,
    RETRYING,
    MakeConsumer,
    PgView,
    checkpoints,
    conclude,
    fill,
    messages,
    records,
    said,
    small_disk,
    wait_message,
    wait_total,
)
from tests.e2e.harness import (
    Ledger,
    StoreView,
    events,
    produce,
    unique,
    write_app,
)
from tests.pg_server import PgServer

# -- 1. SQLite: locked by another process, a full disk, SIGTERM in a large batch ------------------

LOCK_S = 6.0
"""How long the test holds ``BEGIN EXCLUSIVE`` (the store's busy timeout is set to 1 s)."""
FULL_S = 5.0
"""How long the disk stays full."""


def test_sqlite_locked_then_disk_full_then_sigterm_during_a_large_batch(
    kinesis: Any, aws: dict[str, str], fault_consumer: MakeConsumer, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", "24m") as disk:
        store = disk / "thyme.db"
        stream = unique("e2e-fault-sqlite")
        arn = streams.create_stream(kinesis, stream, 1)
        consumer = fault_consumer(
            write_app(tmp_path, arn), store=store, store_url=f"sqlite:///{store}?busy_timeout_ms=1000"
        ).start()
        table = consumer.application
        view = StoreView(store)
        ledger = Ledger()
        started = time.monotonic()
        produce(kinesis, stream, ledger.expect_valid(events(0, 20)))
        view.wait_total(ledger.total, 180, consumer)

        # (a) another process holds the write lock for longer than the busy timeout
        before, held = checkpoints(aws, table), view.total()
        lock = sqlite3.connect(store, isolation_level=None, timeout=10)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            streams.put_payloads(kinesis, stream, records(ledger, 100, 50))
            line = wait_message(consumer, RETRYING, 1, 60, contains="held the write lock")
            time.sleep(LOCK_S)  # the fault's duration
            assert checkpoints(aws, table) == before, "a checkpoint moved while the store was locked"
            assert view.total() == held, "the store changed while locked"
            assert consumer.alive()
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        view.wait_total(ledger.total, 60, consumer)
        conclude(
            "SQLite locked by another process",
            f"`BEGIN EXCLUSIVE` held {LOCK_S:.0f} s from another process (busy timeout 1 s)",
            ledger,
            view,
            started,
            f"retried with backoff, logged `{said(line)}`; no checkpoint moved",
        )
        assert checkpoints(aws, table) != before

        # (b) the disk is full
        started = time.monotonic()
        before, held = checkpoints(aws, table), view.total()
        filler = disk / "filler"
        fill(filler)
        try:
            streams.put_payloads(kinesis, stream, records(ledger, 200, 50))
            line = wait_message(consumer, RETRYING, 1, 60, contains="is full")
            time.sleep(FULL_S)
            assert checkpoints(aws, table) == before, "a checkpoint moved while the disk was full"
            assert view.total() == held
            assert consumer.alive()
        finally:
            filler.unlink()
        view.wait_total(ledger.total, 60, consumer)
        conclude(
            "SQLite on a full disk",
            f"the store's file system (tmpfs) filled to the last byte for {FULL_S:.0f} s",
            ledger,
            view,
            started,
            f"logged `{said(line)}`; no checkpoint moved",
        )

        # (c) SIGTERM while a large batch is in the child (held there by the lock)
        started = time.monotonic()
        batch_start = 1000
        big = ledger.expect_valid(events(batch_start, 3000, users=100))
        retries = len(messages(consumer, RETRYING))
        lock = sqlite3.connect(store, isolation_level=None, timeout=10)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            jvm = consumer.jvm()
            os.kill(jvm, signal.SIGSTOP)  # so that one GetRecords call returns the whole batch
            try:
                produce(kinesis, stream, big)
            finally:
                os.kill(jvm, signal.SIGCONT)
            wait_message(consumer, RETRYING, retries + 1, 60)  # the child holds the batch
            assert consumer.process is not None
            signalled = time.monotonic()
            consumer.process.send_signal(signal.SIGTERM)
            time.sleep(2.0)  # the batch stays blocked into the shutdown
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        rc = consumer.process.wait(90)
        drained_s = time.monotonic() - signalled
        assert rc == 0, consumer.log_text()[-4000:]
        assert drained_s < 30, f"the graceful stop took {drained_s:.1f}s, more than shutdownGraceMillis (30 s)"
        sizes = [int(e["received"]) for e in messages(consumer, "batch applied") if int(e.get("first") or 0) > 0]
        assert max(sizes) >= 2000, f"no large batch was delivered: {sizes[-10:]}"
        assert len(messages(consumer, GRACEFUL_CHECKPOINT)) == 1
        positions = {s: state["sequence"] for s, state in view.shards().items()}
        assert checkpoints(aws, table) == positions, "the checkpoint is not the last applied record"
        conclude(
            "SIGTERM during a large batch",
            "SIGTERM while a 3,000-record batch was held in the child (store locked 2 s into the stop)",
            ledger,
            view,
            started,
            f"batch applied, checkpointed; exit 0 {drained_s:.0f} s after SIGTERM (grace 30 s)",
        )


# -- 2. PostgreSQL stopped for longer than the child's retry bound ---------------------------------

OUTAGE_S = 15.0
GIVE_UP_S = 5


def test_postgres_stopped_longer_than_the_retry_bound(
    kinesis: Any, aws: dict[str, str], fault_consumer: MakeConsumer, tmp_path: Path
) -> None:
    with PgServer() as pg:
        url = pg.create_database()
        stream = unique("e2e-fault-pg")
        arn = streams.create_stream(kinesis, stream, 1)
        consumer = fault_consumer(
            write_app(tmp_path, arn),
            store_url=url,
            env={"THYME_STORE_GIVE_UP_AFTER_S": str(GIVE_UP_S)},
            extra=["--shutdown-grace-ms", "5000"],
        ).start()
        table = consumer.application
        view = PgView(url)
        ledger = Ledger()
        started = time.monotonic()
        produce(kinesis, stream, ledger.expect_valid(events(0, 20)))
        wait_total(view, ledger.total, 180, consumer)

        before = checkpoints(aws, table)
        pg.stop()
        stopped = time.monotonic()
        try:
            streams.put_payloads(kinesis, stream, records(ledger, 100, 50))
            line = wait_message(consumer, RETRYING, 1, 30, contains="PostgreSQL")
            wait_message(consumer, GAVE_UP, 1, 30)  # longer than a retry round: the child gives up
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
            assert checkpoints(aws, table) == before, "a checkpoint moved while PostgreSQL was down"
            assert consumer.alive(), consumer.log_text()[-4000:]
        finally:
            pg.start()
        wait_total(view, ledger.total, 120, consumer)
        restarts = len(messages(consumer, RESTARTING))
        assert restarts >= 1
        conclude(
            "PostgreSQL outage",
            f"PostgreSQL stopped {OUTAGE_S:.0f} s mid-stream (child retry bound {GIVE_UP_S} s)",
            ledger,
            view,
            started,
            f"logged `{said(line)}`; child exited unacknowledged, daemon restarted {restarts}x; no checkpoint moved",
        )
        assert consumer.stop() == 0
