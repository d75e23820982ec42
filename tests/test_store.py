"""The store contract: as-of lookups, atomic compare-and-set batches, replays, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.factories import ClickEvent, feed_of, schema_of
from thyme.errors import SchemaChangedError, StoreConfigError, StoreUnavailableError
from thyme.serving import lookup
from thyme.store import (
    Batch,
    Conflict,
    DeadLetter,
    DeadLetterQuery,
    Position,
    Row,
    ShardState,
    Store,
    open_store,
    redact_url,
)

SCHEMA = schema_of(ClickEvent)
FEED = feed_of(SCHEMA)
OTHER = feed_of(SCHEMA, "arn:aws:kinesis:us-east-1:123456789012:stream/other")
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


def us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def row(key: str, page: str, moment: datetime) -> Row:
    data = json.dumps({"user_id": key, "page": page, "timestamp": moment.isoformat().replace("+00:00", "Z")})
    return (key, us(moment), data)


def state(seq: int, wm: datetime | None = None) -> ShardState:
    return ShardState(Position(seq, 0), None if wm is None else us(wm))


def test_lookup_as_of_ties_and_missing(store: Store) -> None:
    rows = [
        row("u1", "/a", T0),
        row("u1", "/b", T0 + timedelta(minutes=1)),
        row("u1", "/c", T0 + timedelta(minutes=1)),  # same event time: stream order decides
        row("u1", "/old", T0 - timedelta(minutes=1)),  # arrives later, older event time
        row("u2", "/x", T0),
    ]
    assert store.apply(FEED, Batch("shard-0", state(5, T0), rows), None) is None

    def at(key: str, moment: datetime | None = None) -> str | None:
        found = lookup(ClickEvent, key, at=moment, store=store)
        return None if found is None else found.page

    assert at("u1") == "/c"
    assert at("u1", T0 + timedelta(seconds=59)) == "/a"
    assert at("u1", T0 - timedelta(seconds=1)) == "/old"
    assert at("u1", T0 - timedelta(minutes=2)) is None
    assert at("u2") == "/x"
    assert at("nobody") is None
    found = ClickEvent.lookup("u2", store=store)  # type: ignore[attr-defined]
    assert found == ClickEvent(user_id="u2", page="/x", timestamp=T0)
    assert found.timestamp.tzinfo is not None
    assert store.count_rows(SCHEMA) == 5


def test_apply_is_compare_and_set_and_replays_change_nothing(store: Store) -> None:
    first = Batch(
        "s", state(10, T0), [row("u1", "/a", T0)], [DeadLetter("s", "9", 0, "pk", b"\xff", "invalid_utf8", 1)]
    )
    assert store.apply(FEED, first, None) is None
    # the same batch again, computed from the old state: refused, nothing written
    conflict = store.apply(FEED, first, None)
    assert conflict == Conflict(state(10, T0))
    assert store.count_rows(SCHEMA) == 1
    assert store.dead_letter_counts(SCHEMA) == {"invalid_utf8": 1}
    assert store.shard_state(FEED, "s") == state(10, T0)
    second = Batch("s", state(20, T0), [row("u1", "/b", T0)])
    assert store.apply(FEED, second, state(10, T0)) is None
    assert store.shard_state(FEED, "s") == state(20, T0)
    (summary,) = store.shards(FEED)
    assert (summary.shard, summary.applied, summary.dead_lettered) == ("s", 2, 1)
    assert store.shard_state(FEED, "other") is None


def test_dead_letters_keep_raw_bytes(store: Store) -> None:
    raw = bytes(range(256))
    letter = DeadLetter("s", "123", 4, "pk", raw, "invalid_utf8", 1_714_564_800_000)
    assert store.apply(FEED, Batch("s", state(123), [], [letter]), None) is None
    (back,) = store.dead_letters(SCHEMA)
    assert (back.raw, back.sequence, back.sub_sequence, back.reason, back.arrival_ms) == (
        raw,
        "123",
        4,
        "invalid_utf8",
        1_714_564_800_000,
    )
    assert back.recorded_at_us > 0
    assert store.dead_letters(SCHEMA, reason="late") == []


def test_sequence_numbers_compare_as_numbers(store: Store) -> None:
    big = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898
    s = ShardState(Position(big, 3), 1)
    assert store.apply(FEED, Batch("s", s), None) is None
    assert store.shard_state(FEED, "s") == s
    assert Position(9, 0) < Position(10, 0) < Position(10, 1)


def test_changed_schema_is_refused(store_url: str) -> None:
    db = open_store(store_url)
    db.ensure_dataset(SCHEMA)
    db.close()
    changed = SCHEMA.replace(fields=SCHEMA.fields[:1] + SCHEMA.fields[2:])
    db = open_store(store_url)
    with pytest.raises(SchemaChangedError) as info:
        db.ensure_dataset(changed)
    assert "Increase the version (@dataset(version=2))" in str(info.value)
    db.ensure_dataset(changed.replace(version=2))  # a new version is its own table
    db.close()


def test_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///rel.db").close()
    assert (tmp_path / "rel.db").exists()
    monkeypatch.setenv("THYME_STORE_URL", f"sqlite:///{tmp_path}/env.db")
    open_store().close()
    assert (tmp_path / "env.db").exists()
    with pytest.raises(StoreConfigError) as info:
        open_store("mysql://bob:hunter2@db/thyme")
    assert "hunter2" not in str(info.value)
    assert str(info.value) == (
        "store URL: unsupported store scheme 'mysql' (got 'mysql://bob:***@db/thyme'). "
        "Use sqlite:///path/to/thyme.db or postgresql://user:password@host:5432/dbname."
    )
    with pytest.raises(StoreConfigError, match="unknown SQLite option"):
        open_store("sqlite:///x.db?journal=off")
    with pytest.raises(StoreConfigError, match="unknown SQLite option merge_rows"):  # the two-tier index's
        open_store("sqlite:///x.db?merge_rows=200000")
    with pytest.raises(StoreConfigError) as fanout:
        open_store("sqlite:///x.db?fanout=1")
    assert (
        str(fanout.value) == "store URL fanout: must be a whole number of at least 2 (got '1'). For example ?fanout=8."
    )
    assert redact_url("postgresql://u:p%40ss@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert redact_url("sqlite:///a.db") == "sqlite:///a.db"


def test_locked_store_is_unavailable_not_silently_wrong(tmp_path: Path) -> None:
    path = tmp_path / "thyme.db"
    db = open_store(f"sqlite:///{path}?busy_timeout_ms=200")
    db.ensure_dataset(SCHEMA)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailableError, match="held the write lock for more than 200 ms"):
        db.apply(FEED, Batch("s", state(1), [row("u", "/", T0)]), None)
    holder.execute("ROLLBACK")
    assert db.apply(FEED, Batch("s", state(1), [row("u", "/", T0)]), None) is None
    assert db.count_rows(SCHEMA) == 1


def _writer(url: str, shard: str, batches: int, per_batch: int) -> None:
    db = open_store(url)
    expect: ShardState | None = None
    for b in range(batches):
        rows = [row(f"{shard}-{b}-{i}", "/", T0 + timedelta(seconds=i)) for i in range(per_batch)]
        new = state(b + 1, T0)
        assert db.apply(FEED, Batch(shard, new, rows), expect) is None
        expect = new
    db.close()


def test_two_processes_write_concurrently_without_lock_errors(store_url: str) -> None:
    open_store(store_url).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(store_url, f"shard-{n}", 40, 500)) for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    db = open_store(store_url)
    assert db.count_rows(SCHEMA) == 2 * 40 * 500
    assert {s.shard: s.applied for s in db.shards(FEED)} == {"shard-0": 20_000, "shard-1": 20_000}
    db.close()


def test_lookups_span_index_runs_and_ties_follow_apply_order(tmp_path: Path) -> None:
    db = open_store(f"sqlite:///{tmp_path / 't.db'}?fanout=2")
    batches = [
        [row("u1", "/a", T0), row("u2", "/x", T0)],
        [row("u1", "/b", T0 + timedelta(minutes=1)), row("u3", "/y", T0)],  # a 2nd run of 2: merged
        [row("u1", "/c", T0 + timedelta(minutes=1))],  # same key and time as /b, applied later: wins
        [row("u1", "/old", T0 - timedelta(minutes=1))],
    ]
    expect: ShardState | None = None
    for n, rows in enumerate(batches, start=1):
        assert db.apply(FEED, Batch("s", state(n, T0), rows), expect) is None
        expect = state(n, T0)

    def page(key: str, moment: datetime | None = None) -> str | None:
        found = lookup(ClickEvent, key, at=moment, store=db)
        return None if found is None else found.page

    assert page("u1") == "/c"
    assert page("u1", T0 + timedelta(seconds=30)) == "/a"
    assert page("u1", T0 - timedelta(seconds=1)) == "/old"
    assert (page("u2"), page("u3")) == ("/x", "/y")
    assert db.count_rows(SCHEMA) == 6
    db.close()
    raw = sqlite3.connect(tmp_path / "t.db")
    runs = raw.execute("SELECT size_class, entries, merging_into FROM ds_ClickEvent_v1_runs ORDER BY run").fetchall()
    # the two runs of 2 merged into one of 4 (class 2); the two runs of 1 merged into one of 2 (class 1)
    assert runs == [(2, 4, None), (1, 2, None)]
    entries = index_entries(raw, "ds_ClickEvent_v1")
    assert len(entries) == len(set(entries)) == 6


def index_entries(raw: sqlite3.Connection, table: str) -> list[tuple[object, int, int]]:
    """Every ``(key, ts, rid)`` of every index run of ``table``, run by run."""
    runs = [run for (run,) in raw.execute(f"SELECT run FROM {table}_runs ORDER BY run")]
    return [entry for run in runs for entry in raw.execute(f"SELECT key, ts, rid FROM {table}_run{run}")]


def _reference(applied: list[tuple[str, int, int, str]], key: str, at: int) -> str | None:
    """The newest (ts, apply order) version of ``key`` with ts <= at, by brute force."""
    best = max(((ts, rid, data) for k, ts, rid, data in applied if k == key and ts <= at), default=None)
    return None if best is None else best[2]


@pytest.mark.parametrize("fanout", [2, 3, 8])
def test_index_runs_stay_few_and_lookups_match_a_brute_force_reference(tmp_path: Path, fanout: int) -> None:
    """Batches of every size from 1 to 120 into a store with a small fanout, so that merges
    start, run across many writes, and finish all the time: after every write each entry is
    indexed (twice at most, while a merge copies it), the runs stay few, and lookups at random
    keys and moments answer what a brute-force scan of everything applied answers."""
    import random

    rng = random.Random(fanout)
    db = open_store(f"sqlite:///{tmp_path / 't.db'}?fanout={fanout}")
    raw = sqlite3.connect(tmp_path / "t.db")
    applied: list[tuple[str, int, int, str]] = []
    expect: ShardState | None = None
    keys = [f"k{i:03d}" for i in range(60)]
    most_runs = 0
    for n in range(1, 161):
        size = rng.choice([1, 2, 5, 17, 60, 120])
        rows: list[Row] = []
        for _ in range(size):
            key, moment = rng.choice(keys), T0 + timedelta(seconds=rng.randrange(0, 600))
            rows.append(row(key, f"/{n}-{len(applied) + len(rows)}", moment))
        assert db.apply(FEED, Batch("s", state(n, T0), rows), expect) is None
        expect = state(n, T0)
        applied += [(k, ts, len(applied) + i, data) for i, (k, ts, data) in enumerate(rows)]  # type: ignore[misc]
        indexed = index_entries(raw, "ds_ClickEvent_v1")
        assert len({rid for _, _, rid in indexed}) == len(applied)
        listed = raw.execute("SELECT run, entries FROM ds_ClickEvent_v1_runs").fetchall()
        for run, entries in listed:  # the bookkeeping matches the tables
            assert raw.execute(f"SELECT count(*) FROM ds_ClickEvent_v1_run{run}").fetchone()[0] == entries
        runs = len(listed)
        most_runs = max(most_runs, runs)
        classes = len(f"{len(applied):b}")  # a generous bound on the number of size classes
        assert runs <= (2 * fanout + 1) * classes
        if n % 20 == 0:
            for _ in range(40):
                key, at = rng.choice(keys), us(T0 + timedelta(seconds=rng.randrange(-10, 610)))
                assert db.lookup(SCHEMA, key, at) == _reference(applied, key, at)
    assert most_runs < 160  # merging really happened
    assert len(index_entries(raw, "ds_ClickEvent_v1")) < 2 * len(applied)
    tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE name LIKE '%_run%'")}
    live = {f"ds_ClickEvent_v1_run{run}" for (run,) in raw.execute("SELECT run FROM ds_ClickEvent_v1_runs")}
    assert tables == live | {"ds_ClickEvent_v1_runs"}  # every merged run was dropped
    db.close()


def test_a_file_with_the_two_tier_index_is_upgraded_on_open(tmp_path: Path) -> None:
    """Files written before the index had runs hold it in ``…_main`` and ``…_recent``."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE thyme_datasets (name TEXT NOT NULL, version INTEGER NOT NULL, schema_json TEXT NOT NULL,
            created_at_us INTEGER NOT NULL, recent_rows INTEGER NOT NULL DEFAULT 0,
            merge_key, merge_ts INTEGER, merge_rid INTEGER, PRIMARY KEY (name, version));
        CREATE TABLE ds_ClickEvent_v1 (rid INTEGER PRIMARY KEY, row TEXT NOT NULL);
        CREATE TABLE ds_ClickEvent_v1_recent (key NOT NULL, ts INTEGER NOT NULL, rid INTEGER NOT NULL,
            PRIMARY KEY (key, ts, rid)) WITHOUT ROWID;
        CREATE TABLE ds_ClickEvent_v1_main (key NOT NULL, ts INTEGER NOT NULL, rid INTEGER NOT NULL,
            PRIMARY KEY (key, ts, rid)) WITHOUT ROWID;
        """
    )
    old.execute("INSERT INTO thyme_datasets VALUES ('ClickEvent', 1, ?, 0, 1, NULL, NULL, NULL)", (SCHEMA.to_json(),))
    for rid, (tier, (key, ts, data)) in enumerate(
        [
            ("main", row("u1", "/a", T0)),
            ("main", row("u2", "/x", T0)),
            ("recent", row("u1", "/b", T0 + timedelta(minutes=1))),
        ],
        start=1,
    ):
        old.execute("INSERT INTO ds_ClickEvent_v1 VALUES (?, ?)", (rid, data))
        old.execute(f"INSERT INTO ds_ClickEvent_v1_{tier} VALUES (?, ?, ?)", (key, ts, rid))
    old.commit()
    old.close()

    db = open_store(f"sqlite:///{path}")
    assert db.lookup(SCHEMA, "u1", us(T0 + timedelta(hours=1))) == row("u1", "/b", T0 + timedelta(minutes=1))[2]
    assert db.lookup(SCHEMA, "u1", us(T0)) == row("u1", "/a", T0)[2]
    assert db.apply(FEED, Batch("s", state(1, T0), [row("u2", "/y", T0 + timedelta(minutes=2))]), None) is None
    assert db.lookup(SCHEMA, "u2", us(T0 + timedelta(hours=1))) == row("u2", "/y", T0 + timedelta(minutes=2))[2]
    assert db.count_rows(SCHEMA) == 4
    db.close()
    raw = sqlite3.connect(path)
    tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"ds_ClickEvent_v1_main", "ds_ClickEvent_v1_recent"}.isdisjoint(tables)
    assert raw.execute("SELECT run, entries FROM ds_ClickEvent_v1_runs ORDER BY run").fetchall() == [
        (1, 2),
        (2, 1),
        (3, 1),
    ]


def test_rows_and_keys_are_stored_exactly_as_given(store: Store) -> None:
    """Rows reach SQLite as one JSON array per batch: every character must come back as it was."""
    tricky = '{"user_id":"q\\"uote","page":"\\\\ \\u0000 \\n tab\t \x01 é 中 😀 \\u2028","timestamp":"x"}'
    odd_keys = ['q"uote', "back\\slash", "é中😀", " lead", "1", "-0", "null"]
    rows: list[Row] = [(key, us(T0) + i, tricky.replace("x", str(i))) for i, key in enumerate(odd_keys)]
    assert store.apply(FEED, Batch("s", state(1, T0), rows), None) is None
    for key, ts, data in rows:
        assert store.lookup(SCHEMA, key, ts) == data
    if store.url.startswith("sqlite"):  # an int key reaches SQLite as an int, as bound before
        assert store.lookup(SCHEMA, 1, us(T0) + 100) is None  # the int 1 is not the string "1"


def test_a_bug_is_not_mistaken_for_an_outage(store: Store) -> None:
    bad = Batch("s", state(1), [(["not", "a", "key"], 0, "{}")])  # type: ignore[list-item]
    # the SQLite store checks the types of what it passes on as JSON; psycopg's binary COPY refuses to dump it
    with pytest.raises(TypeError):
        store.apply(FEED, bad, None)
    assert store.shard_state(FEED, "s") is None
    assert store.apply(FEED, Batch("s", state(1), [row("u", "/", T0)]), None) is None  # still usable
    assert store.count_rows(SCHEMA) == 1


# -- operating: lag, dead letters by shard, filters, re-drive ---------------------------------


def test_shards_keep_the_last_reported_lag(store: Store) -> None:
    assert store.apply(FEED, Batch("s", state(1, T0), [row("u", "/a", T0)], millis_behind_latest=5000), None) is None
    assert store.shards(FEED)[0].millis_behind_latest == 5000
    # a batch that does not report it (None) keeps the last value
    assert store.apply(FEED, Batch("s", state(2, T0), [row("u", "/b", T0)]), state(1, T0)) is None
    assert store.shards(FEED)[0].millis_behind_latest == 5000
    assert (
        store.apply(FEED, Batch("s", state(3, T0), [row("u", "/c", T0)], millis_behind_latest=0), state(2, T0)) is None
    )
    assert store.shards(FEED)[0].millis_behind_latest == 0


def _letter(shard: str, seq: int, reason: str, raw: bytes = b"{}") -> DeadLetter:
    return DeadLetter(shard, str(seq), 0, "pk", raw, reason, None)


def test_dead_letters_filter_by_shard_time_and_page(store: Store) -> None:
    first = [_letter("a", 1, "late"), _letter("a", 2, "invalid_json")]
    assert store.apply(FEED, Batch("a", state(2), [], first), None) is None
    (recorded,) = {d.recorded_at_us for d in store.dead_letters(SCHEMA)}
    assert store.apply(FEED, Batch("b", state(7), [], [_letter("b", 7, "late")]), None) is None
    everything = store.dead_letters(SCHEMA)
    assert [(d.shard, d.sequence) for d in everything] == [("a", "1"), ("a", "2"), ("b", "7")]
    assert everything[0].id < everything[1].id < everything[2].id
    assert [d.sequence for d in store.dead_letters(SCHEMA, query=DeadLetterQuery(shard="b"))] == ["7"]
    assert [d.sequence for d in store.dead_letters(SCHEMA, "late", query=DeadLetterQuery(shard="a"))] == ["1"]
    assert [d.sequence for d in store.dead_letters(SCHEMA, query=DeadLetterQuery(until_us=recorded + 1))] == ["1", "2"]
    later = store.dead_letters(SCHEMA, query=DeadLetterQuery(since_us=recorded + 1))
    assert [d.sequence for d in later] == ([] if everything[2].recorded_at_us == recorded else ["7"])
    page = store.dead_letters(SCHEMA, limit=2)
    rest = store.dead_letters(SCHEMA, query=DeadLetterQuery(after_id=page[-1].id))
    assert [d.sequence for d in page + rest] == ["1", "2", "7"]
    assert store.dead_letter_counts_by_shard(FEED) == {"a": {"invalid_json": 1, "late": 1}, "b": {"late": 1}}
    assert store.dead_letter_counts(SCHEMA) == {"invalid_json": 1, "late": 2}


def test_redrive_applies_once_and_keeps_the_letters_marked(store: Store) -> None:
    letters = [_letter("a", 1, "schema: page: missing"), _letter("a", 2, "schema: page: missing")]
    assert store.apply(FEED, Batch("a", state(2), [], letters), None) is None
    first, second = store.dead_letters(SCHEMA)
    fixed = row("u9", "/fixed", T0)
    assert store.redrive(SCHEMA, [(first.id, fixed)]) == 1
    assert store.redrive(SCHEMA, [(first.id, fixed)]) == 0  # again: nothing applied twice
    assert store.count_rows(SCHEMA) == 1
    assert lookup(ClickEvent, "u9", store=store).page == "/fixed"  # type: ignore[union-attr]
    # the re-driven letter is kept, marked; listings and counts show the ones still held
    assert [d.id for d in store.dead_letters(SCHEMA)] == [second.id]
    (marked, held) = store.dead_letters(SCHEMA, query=DeadLetterQuery(include_redriven=True))
    assert marked.redriven_at_us is not None and held.redriven_at_us is None
    assert store.dead_letter_counts(SCHEMA) == {"schema: page: missing": 1}
    assert store.redrive(SCHEMA, []) == 0
    # the shard's stream position and counters are not the re-drive's business
    assert store.shard_state(FEED, "a") == state(2)


def test_sqlite_file_from_before_the_operating_columns_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the tables as the first release created them
        db.executescript(
            """CREATE TABLE thyme_shards (dataset TEXT NOT NULL, shard TEXT NOT NULL, sequence TEXT,
                   sub_sequence INTEGER, watermark_us INTEGER, ended INTEGER NOT NULL DEFAULT 0,
                   applied INTEGER NOT NULL DEFAULT 0, dead_lettered INTEGER NOT NULL DEFAULT 0,
                   updated_at_us INTEGER NOT NULL, PRIMARY KEY (dataset, shard));
               CREATE TABLE thyme_dead_letters (id INTEGER PRIMARY KEY, dataset TEXT NOT NULL, shard TEXT NOT NULL,
                   sequence TEXT NOT NULL, sub_sequence INTEGER NOT NULL, partition_key TEXT NOT NULL,
                   arrival_ms INTEGER, reason TEXT NOT NULL, raw BLOB NOT NULL, recorded_at_us INTEGER NOT NULL);
               INSERT INTO thyme_dead_letters VALUES (1, 'ClickEvent', 's', '1', 0, 'pk', NULL, 'late', x'7b7d', 5);
               INSERT INTO thyme_shards VALUES ('ClickEvent', 's', '1', 0, NULL, 0, 3, 1, 5);"""
        )
    store = open_store(f"sqlite:///{path}")
    try:
        # state written before it was kept per stream and version: the dataset's first feed adopts it
        assert store.dead_letters(SCHEMA) == []
        assert store.shard_state(FEED, "s") is None
        store.ensure_feed(FEED)
        (old,) = store.dead_letters(SCHEMA)
        assert (old.id, old.reason, old.redriven_at_us, old.stream, old.detail) == (1, "late", None, FEED.stream, None)
        assert store.shard_state(FEED, "s") == state(1)
        assert store.apply(FEED, Batch("s", state(2), [], millis_behind_latest=7), state(1)) is None
        ((summary),) = store.shards(FEED)
        assert (summary.millis_behind_latest, summary.applied, summary.dead_lettered) == (7, 3, 1)
        store.ensure_feed(OTHER)  # once: another stream starts from nothing
        assert store.shards(OTHER) == []
    finally:
        store.close()


def test_a_password_with_unencoded_url_characters_is_not_quoted_in_the_error() -> None:
    for url in ("postgresql://thyme:s3cr3tPW/x@db:5432/app", "postgresql://thyme:s3cr3tPW#x@db/app"):
        with pytest.raises(StoreConfigError) as info:
            open_store(url)
        assert "s3cr3tPW" not in str(info.value)
        assert str(info.value).startswith("store URL: not a valid URL (an unclosed [ or a port that is not a number")


def test_an_sqlite_library_too_old_for_the_store_is_refused_with_the_fix() -> None:
    from thyme.store.sqlite import check_sqlite_library

    check_sqlite_library()  # the one this Python has
    with pytest.raises(
        StoreConfigError, match=r"\(3\.31\.1\) is too old; the store needs 3\.35\.0 or newer.*PostgreSQL"
    ):
        check_sqlite_library((3, 31, 1))
    with pytest.raises(StoreConfigError, match="built without the JSON functions"):
        check_sqlite_library((3, 37, 2), json=False)


def test_a_batch_of_large_rows_is_stored_exactly(store: Store) -> None:
    """Past JSON_ROWS_MAX_CHARS the SQLite store writes rows one by one: same result."""
    from thyme.store.sqlite import JSON_ROWS_MAX_CHARS

    pages = [f"/{i}/" + chr(0x4E2D) * (JSON_ROWS_MAX_CHARS // 4) for i in range(6)]
    rows = [row(f"u{i}", page, T0 + timedelta(seconds=i)) for i, page in enumerate(pages)]
    assert sum(len(data) for _, _, data in rows) > JSON_ROWS_MAX_CHARS
    assert store.apply(FEED, Batch("s", state(1, T0), rows), None) is None
    for key, ts, data in rows:
        assert store.lookup(SCHEMA, key, ts) == data


def test_the_sqlite_store_refuses_a_batch_mixing_str_and_int_keys(tmp_path: Path) -> None:
    db = open_store(f"sqlite:///{tmp_path / 't.db'}")
    with pytest.raises(TypeError, match="all str or all int"):
        db.apply(FEED, Batch("s", state(1), [row("u", "/", T0), (7, us(T0), "{}")]), None)
    assert db.shard_state(FEED, "s") is None
    db.close()
