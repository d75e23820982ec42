"""The PostgreSQL store beyond the shared contract: outages, credentials, racing writers.

The contract suite (``test_store.py``, ``test_worker.py``, ``test_protocol.py``) already runs
against PostgreSQL through the parametrized ``store`` fixture; these tests cover what only a
server has: it can go away and come back, refuse a password, and serve writers on other hosts.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from record_processor.worker import RetryPolicy, ShardWorker
from tests.factories import ClickEvent, Purchase, b64, feed_of, schema_of, seq
from tests.pg_server import PASSWORD, PgServer
from thyme.errors import StoreConfigError, StoreUnavailableError
from thyme.records.lateness import LatenessPolicy
from thyme.store import Batch, Conflict, Position, Row, ShardState, migration_script, open_store, redact_url
from thyme.store.postgres import SCHEMA_VERSION, PostgresStore, table_name

SCHEMA = schema_of(ClickEvent)
FEED = feed_of(SCHEMA)
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
T0_US = int(T0.timestamp() * 1_000_000)


def row(key: str, page: str, offset_s: int = 0) -> Row:
    return (key, T0_US + offset_s * 1_000_000, json.dumps({"user_id": key, "page": page, "timestamp": "x"}))


def state(n: int) -> ShardState:
    return ShardState(Position(n, 0), T0_US)


def assert_no_password(text: str) -> None:
    assert PASSWORD not in text
    assert quote(PASSWORD, safe="") not in text


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server of this test's own, which it may stop and start."""
    with PgServer() as server:
        yield server


def test_outage_is_unavailable_then_the_same_store_recovers(own_server: PgServer) -> None:
    url = own_server.create_database()
    db = open_store(url)
    assert db.apply(FEED, Batch("s", state(1), [row("u1", "/a")]), None) is None

    own_server.stop()
    with pytest.raises(StoreUnavailableError) as info:
        db.apply(FEED, Batch("s", state(2), [row("u1", "/b", 1)]), state(1))
    assert "PostgreSQL store postgresql://thyme:***@127.0.0.1" in str(info.value)
    assert_no_password(str(info.value))
    with pytest.raises(StoreUnavailableError, match="cannot connect"):
        db.shard_state(FEED, "s")  # the next call tries a new connection, which is refused
    with pytest.raises(StoreUnavailableError, match="cannot connect") as opening:
        open_store(url)
    assert_no_password(str(opening.value))

    own_server.start()
    assert db.apply(FEED, Batch("s", state(2), [row("u1", "/b", 1)]), state(1)) is None

    # restarted between two calls: the dead connection is found on the first statement and
    # replaced, so the apply goes through without the caller seeing an error
    own_server.stop()
    own_server.start()
    assert db.apply(FEED, Batch("s", state(3), [row("u1", "/c", 2)]), state(2)) is None
    assert db.count_rows(SCHEMA) == 3
    assert db.lookup(SCHEMA, "u1", T0_US + 10_000_000) == row("u1", "/c", 2)[2]
    db.close()


def test_worker_rides_out_a_server_restart(own_server: PgServer) -> None:
    db = open_store(own_server.create_database())
    worker = ShardWorker(
        FEED, LatenessPolicy(timedelta(minutes=5), timedelta(hours=1)), db, RetryPolicy(give_up_after_s=60)
    )
    worker.initialize("shardId-000000000000")
    arrival_ms = int(T0.timestamp() * 1000)
    from record_processor.envelope import from_base64

    def rec(n: int) -> Any:
        payload = {"user_id": f"u{n}", "page": "/", "timestamp": T0.isoformat()}
        return from_base64(b64(payload), "pk", seq(n), 0, arrival_ms)

    assert worker.process([rec(1)]).applied == 1
    own_server.stop()
    restart = threading.Timer(1.0, own_server.start)
    restart.start()
    try:
        outcome = worker.process([rec(2), rec(3)])
    finally:
        restart.join()
    assert outcome.applied == 2
    assert outcome.attempts > 1
    assert db.count_rows(SCHEMA) == 3
    db.close()


def test_wrong_password_is_one_clear_line_without_the_password(pg_server: PgServer) -> None:
    good = pg_server.create_database()
    wrong = "not-the-p@ssword-7x"
    url = good.replace(quote(PASSWORD, safe=""), quote(wrong, safe=""))
    with pytest.raises(StoreConfigError) as info:
        open_store(url)
    message = str(info.value)
    assert message == (
        'store URL: PostgreSQL refused the connection: password authentication failed for user "thyme" '
        f"(got {redact_url(url)!r}). Check the user, password, host and database in the store URL."
    )
    assert "\n" not in message
    assert wrong not in message
    assert quote(wrong, safe="") not in message
    assert_no_password(message)
    with pytest.raises(StoreConfigError, match='database "nope" does not exist'):
        open_store(pg_server.url("nope"))


def test_user_without_create_privilege_is_told_what_to_grant(pg_server: PgServer) -> None:
    url = pg_server.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-pw'")
    limited = url.replace(f"thyme:{quote(PASSWORD, safe='')}@", "reader:reader-pw@")
    with pytest.raises(StoreConfigError) as info:
        open_store(limited)
    assert str(info.value) == (
        "store URL: the user cannot create or upgrade Thyme's tables (permission denied for schema public) "
        f"(got {redact_url(limited)!r}). Grant it CREATE on the schema (PostgreSQL 15+: GRANT CREATE ON SCHEMA "
        "public TO the user), or have an admin run the script `thyme store migrate MODULE:DATASET --print` prints."
    )


def test_migrate_print_lets_an_admin_create_the_tables_for_a_read_write_user(
    pg_server: PgServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from thyme.cli import main

    url = pg_server.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE ROLE writer LOGIN PASSWORD 'writer-pw'")
    limited = url.replace(f"thyme:{quote(PASSWORD, safe='')}@", "writer:writer-pw@")
    # --print only renders: it creates nothing, even as a user who could
    assert main(["store", "migrate", "tests.factories:ClickEvent", "--store", url, "--print"]) == 0
    script = capsys.readouterr().out
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('thyme_shards')").fetchone() == (None,)
        conn.execute(script)  # the admin reviews and runs it, then grants read/write only
        conn.execute(script)  # idempotent
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO writer")
    schema = schema_of(ClickEvent)
    store = open_store(limited)  # no CREATE right needed now
    rows: list[Row] = [
        ("u1", 1_000_000, json.dumps({"user_id": "u1", "page": "/", "timestamp": "1970-01-01T00:00:01Z"}))
    ]
    assert store.apply(feed_of(schema), Batch("s", ShardState(Position(1), 1_000_000), rows), None) is None
    assert store.count_rows(schema) == 1
    store.close()
    # without --print the command applies the same, idempotently
    assert main(["store", "migrate", "tests.factories:ClickEvent", "--store", url]) == 0
    assert "is ready for tests.factories:ClickEvent" in capsys.readouterr().err


def test_unreachable_server_is_unavailable_and_redacted(pg_server: PgServer) -> None:
    url = pg_server.url("x").replace(f":{pg_server.port}/", ":1/")
    with pytest.raises(StoreUnavailableError, match="cannot connect") as info:
        open_store(url + "?connect_timeout=2")
    assert_no_password(str(info.value))
    assert "\n" not in str(info.value)


def test_bad_url_parameter_is_a_config_error(pg_server: PgServer) -> None:
    with pytest.raises(StoreConfigError, match='invalid URI query parameter: "journal"'):
        open_store(pg_server.url("x") + "?journal=off")


def test_postgres_scheme_and_psycopg_missing(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = pg_server.create_database().replace("postgresql://", "postgres://")
    db = open_store(url)
    assert isinstance(db, PostgresStore)
    assert db.url == redact_url(url)
    db.close()
    import sys

    monkeypatch.delitem(sys.modules, "thyme.store.postgres")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StoreConfigError) as info:
        open_store(url)
    assert str(info.value) == (
        "store URL: a PostgreSQL store needs the psycopg package, which is not installed "
        f"(got {redact_url(url)!r}). Run: pip install 'thyme-kinesis[postgres]'."
    )


def test_tables_are_versioned_and_int_keys_are_bigint(pg_server: PgServer) -> None:
    url = pg_server.create_database()
    db = open_store(url)
    purchase = schema_of(Purchase)
    row_json = json.dumps({"order_id": 2**40})
    assert db.apply(feed_of(purchase), Batch("s", state(1), [(2**40, 5, row_json)]), None) is None
    assert db.lookup(purchase, 2**40, 5) == row_json
    assert db.lookup(purchase, 2**40, 4) is None
    assert db.lookup(purchase, 2**70, 5) is None  # out of bigint range: cannot be stored
    db.close()
    open_store(url).close()  # a second open finds the tables in place
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM thyme_schema_version").fetchall() == [(SCHEMA_VERSION,)]
        types = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s ORDER BY 1",
            (table_name(purchase),),
        ).fetchall()
        assert dict(types) == {"key": "bigint", "rid": "bigint", "row": "text", "ts": "bigint"}


def test_long_dataset_names_get_distinct_tables(pg_server: PgServer) -> None:
    db = open_store(pg_server.create_database())
    long_a = SCHEMA.replace(name="A" * 60 + "one")
    long_b = SCHEMA.replace(name="A" * 60 + "two")
    assert table_name(long_a) != table_name(long_b)
    assert max(len(table_name(long_a)), len(table_name(long_b))) <= 63
    assert db.apply(feed_of(long_a), Batch("s", state(1), [row("u", "/a")]), None) is None
    assert db.apply(feed_of(long_b), Batch("s", state(1), [row("u", "/b"), row("v", "/b")]), None) is None
    assert (db.count_rows(long_a), db.count_rows(long_b)) == (1, 2)
    db.close()


# -- writers racing on the same shard ---------------------------------------------------

RACERS = 3
ROUNDS = 15


def _racer(url: str, me: int, barrier: Any, results: Any) -> None:
    """Each round: every racer applies its own batch to a new shard from ``None``, then all apply
    again from the state they read back. Exactly one may win each time."""
    db = open_store(url)  # the database is fresh: every racer creates the tables at once
    barrier.wait()
    for r in range(ROUNDS):
        shard = f"race-{r}"
        expect: ShardState | None = None
        for phase in range(2):
            rows = [row(f"{shard}-{phase}-{me}-{i}", "/", i) for i in range(200)]
            barrier.wait()
            outcome = db.apply(FEED, Batch(shard, state(100 * (phase + 1) + me), rows), expect)
            results.put((r, phase, me, outcome))
            barrier.wait()
            expect = db.shard_state(FEED, shard)
    db.close()


def test_racing_writers_on_one_shard_exactly_one_wins(pg_server: PgServer) -> None:
    url = pg_server.create_database()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(RACERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(url, me, barrier, results)) for me in range(RACERS)]
    for p in procs:
        p.start()
    outcomes: dict[tuple[int, int], dict[int, Conflict | None]] = {}
    for _ in range(ROUNDS * 2 * RACERS):
        r, phase, me, outcome = results.get(timeout=120)
        outcomes.setdefault((r, phase), {})[me] = outcome
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    db = open_store(url)
    for (r, phase), by_racer in sorted(outcomes.items()):
        winners = [me for me, outcome in by_racer.items() if outcome is None]
        assert len(winners) == 1, (r, phase, by_racer)
        won = state(100 * (phase + 1) + winners[0])
        assert all(o == Conflict(won) for me, o in by_racer.items() if me != winners[0]), (r, phase, by_racer)
        if phase == 1:
            assert db.shard_state(FEED, f"race-{r}") == won
    assert db.count_rows(SCHEMA) == ROUNDS * 2 * 200  # only the winners' rows
    assert {s.applied for s in db.shards(FEED)} == {400}
    db.close()


class GatedRows(list[Row]):
    """Rows whose iteration (inside the store's COPY, so inside its transaction) stops after the
    first row until ``gate`` is set: the writer holds the shard's row lock meanwhile."""

    def __init__(self, rows: list[Row], gate: threading.Event, inside: threading.Event) -> None:
        super().__init__(rows)
        self.gate = gate
        self.inside = inside

    def __iter__(self) -> Iterator[Row]:
        for n, item in enumerate(super().__iter__()):
            if n == 1:
                self.inside.set()
                assert self.gate.wait(30)
            yield item


@pytest.mark.parametrize("existing", [False, True], ids=["new-shard", "existing-shard"])
def test_a_writer_waits_for_the_lock_holder_then_conflicts(pg_server: PgServer, existing: bool) -> None:
    url = pg_server.create_database()
    first, second = open_store(url), open_store(url)
    expect = None
    if existing:
        assert first.apply(FEED, Batch("s", state(1), [row("u0", "/")]), None) is None
        expect = state(1)
    gate, inside = threading.Event(), threading.Event()
    results: dict[str, Conflict | None] = {}
    holder = threading.Thread(
        target=lambda: results.setdefault(
            "first",
            first.apply(FEED, Batch("s", state(2), GatedRows([row("a", "/"), row("b", "/")], gate, inside)), expect),
        )
    )
    holder.start()
    try:
        assert inside.wait(30)  # the first writer is mid-transaction, holding the shard row
        racer = threading.Thread(
            target=lambda: results.setdefault(
                "second", second.apply(FEED, Batch("s", state(3), [row("c", "/")]), expect)
            )
        )
        racer.start()
        racer.join(0.5)
        assert racer.is_alive()  # blocked on the shard row, not deciding on a stale read
        gate.set()
        holder.join(30)
        racer.join(30)
    finally:
        gate.set()
    assert results == {"first": None, "second": Conflict(state(2))}
    assert first.shard_state(FEED, "s") == state(2)
    assert first.count_rows(SCHEMA) == (3 if existing else 2)
    first.close()
    second.close()


def test_real_child_exits_nonzero_when_postgres_is_down(own_server: PgServer, tmp_path: Any) -> None:
    from record_processor.kcl import EXIT_STORE_UNAVAILABLE
    from tests.child import ARRIVAL_MS, click, exchange, initialize, start_child
    from tests.factories import process_records, record_message

    url = own_server.create_database()
    child = start_child(url, tmp_path / "stderr", "--give-up-after", "1")
    assert exchange(child, initialize()) == {"action": "status", "responseFor": "initialize"}
    own_server.stop()
    assert child.stdin is not None
    child.stdin.write(process_records([record_message(1, click("u1", 0), ARRIVAL_MS)]) + "\n")
    child.stdin.flush()
    assert child.wait(timeout=60) == EXIT_STORE_UNAVAILABLE
    err = (tmp_path / "stderr").read_text()
    assert "PostgreSQL store postgresql://thyme:***@127.0.0.1" in err
    assert_no_password(err)
    own_server.start()
    db = open_store(url)
    assert db.count_rows(schema_of(ClickEvent).replace(name="SourcedClick")) == 0
    db.close()


V1_TABLES = """
CREATE TABLE thyme_schema_version (version INTEGER NOT NULL);
INSERT INTO thyme_schema_version VALUES (1);
CREATE TABLE thyme_datasets (name TEXT NOT NULL, version INTEGER NOT NULL, schema_json TEXT NOT NULL,
    created_at_us BIGINT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE thyme_shards (dataset TEXT NOT NULL, shard TEXT NOT NULL, sequence TEXT, sub_sequence INTEGER,
    watermark_us BIGINT, ended BOOLEAN NOT NULL DEFAULT false, applied BIGINT NOT NULL DEFAULT 0,
    dead_lettered BIGINT NOT NULL DEFAULT 0, updated_at_us BIGINT NOT NULL, PRIMARY KEY (dataset, shard));
CREATE TABLE thyme_dead_letters (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, dataset TEXT NOT NULL,
    shard TEXT NOT NULL, sequence TEXT NOT NULL, sub_sequence INTEGER NOT NULL, partition_key TEXT NOT NULL,
    arrival_ms BIGINT, reason TEXT NOT NULL, raw BYTEA NOT NULL, recorded_at_us BIGINT NOT NULL);
INSERT INTO thyme_dead_letters (dataset, shard, sequence, sub_sequence, partition_key, reason, raw, recorded_at_us)
    VALUES ('ClickEvent', 's', '1', 0, 'pk', 'late', '\\x7b7d', 5);
INSERT INTO thyme_shards (dataset, shard, sequence, sub_sequence, applied, updated_at_us)
    VALUES ('ClickEvent', 's', '1', 0, 3, 5);
"""
"""Thyme's tables as version 1 (the first release) created them."""


def test_version_1_tables_are_upgraded_by_the_consumer_or_by_the_printed_script(pg_server: PgServer) -> None:
    for how in ("open", "script"):
        url = pg_server.create_database()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(V1_TABLES)
        if how == "open":
            open_store(url).close()
        else:
            with pytest.raises(StoreConfigError, match=r"tables are at version 1, older than this Thyme's \(4\)"):
                open_store(url, create=False)  # a read-only command does not upgrade them
            script = migration_script(url, [SCHEMA])
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(script)
        with psycopg.connect(url) as conn:
            assert max(v for (v,) in conn.execute("SELECT version FROM thyme_schema_version")) == SCHEMA_VERSION == 4
        db = open_store(url)
        try:
            assert db.shard_state(FEED, "s") is None
            db.ensure_feed(FEED)  # the dataset's first feed adopts the state kept before streams and versions
            (old,) = db.dead_letters(SCHEMA)
            assert (old.reason, old.raw, old.redriven_at_us, old.stream) == ("late", b"{}", None, FEED.stream), how
            assert db.shard_state(FEED, "s") == ShardState(Position(1))
            assert db.apply(FEED, Batch("s", state(2), [], millis_behind_latest=9), ShardState(Position(1))) is None
            ((summary),) = db.shards(FEED)
            assert (summary.millis_behind_latest, summary.applied) == (9, 3)
            assert db.redrive(SCHEMA, [(old.id, row("u", "/r"))]) == 1
        finally:
            db.close()
