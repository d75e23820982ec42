"""The embedded store: one SQLite file shared by every shard's child process.

Layout, chosen for write speed into a dataset that already holds millions of rows
(``../shared/reference/performance.md`` and ``benchmarks/``: one random-key index over 5M rows
takes ~32k rows/s; a recent tier merged into one main tier fell from 85k to 40k rows/s between
1M and 20M rows, because every merge rewrote pages all over the main tier):

* ``ds_<name>_v<version>``: the rows, append-only, ``rid`` = apply order (which within a
  shard is stream order, and breaks ties between equal event times).
* ``…_run<n>``: the ``(key, ts, rid)`` index as sorted *runs*, each a clustered ``WITHOUT
  ROWID`` table. Each batch writes its entries, sorted, as a new run, so they are appended to
  a fresh table instead of landing all over a large index. ``…_runs`` lists the runs with
  their sizes. Size-tiered compaction keeps the number of runs small: when ``fanout`` runs of
  one size class exist, they are merged into one new run of the next class, in key order, a
  slice per write (each write moves up to twice its own entries per merge in progress), so no
  transaction grows with the store and each entry is rewritten ~log_fanout(rows / batch)
  times in all, always appended. A merged run is dropped whole (``DROP TABLE`` frees its
  pages; deleting its entries one by one cost as much as writing them). A merge copies
  entries before its sources go, so while it runs an entry may be found in two runs:
  harmless, both answer the same. A lookup reads the run list and probes every run (one
  index seek each) in one read transaction.
* ``thyme_shards``: per (dataset, version, stream, shard) the last applied position, the
  watermark, counters.
* ``thyme_dead_letters``: rejected records with their raw bytes and reason, per dataset
  version and stream.
* ``thyme_datasets``: the shape each dataset version holds (widened in place, see
  :func:`~thyme.dataset.compare_shapes`).

Concurrency: WAL mode, and every write transaction starts with ``BEGIN IMMEDIATE`` so that
a writer waits (``busy_timeout``) for the lock instead of failing on upgrade. ``synchronous=FULL``:
a committed batch survives a power cut, because the KCL checkpoint is taken after it. Each call
takes a connection of its own from a pool (:mod:`thyme.store.pool`) for its transaction, so
threads never share one, and a process made by ``fork`` opens its own.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from thyme.dataset import DatasetSchema
from thyme.errors import StoreConfigError, StoreUnavailableError
from thyme.store.base import (
    DEAD_LETTER_COLUMNS,
    Batch,
    Conflict,
    DeadLetter,
    DeadLetterQuery,
    Feed,
    Key,
    Position,
    Row,
    ShardState,
    ShardSummary,
    dead_letter,
    dead_letter_filter,
    dead_letter_values,
    shape_against_stored,
)
from thyme.store.pool import ConnectionPool

DEFAULT_BUSY_TIMEOUT_MS: Final = 30_000
DEFAULT_FANOUT: Final = 8
"""Runs of one size class merged at a time; a class holds runs of fanout**c to fanout**(c+1)-1 entries."""
MOVE_FACTOR: Final = 2
"""Each write advances every merge in progress by up to this many times its own entries..."""
MIN_MOVE: Final = 1_000
"""... and at least this many (so that small batches still finish merges)."""
LOOKUP_ARMS: Final = 200
"""Runs probed per lookup statement (SQLite allows 500 terms in a compound SELECT)."""
JSON_ROWS_MAX_CHARS: Final = 4 * 2**20
"""A batch's rows go to SQLite as one JSON array up to this size (a 10,000 x 200 B batch is ~2 MB);
larger ones row by row, which costs nothing per byte and keeps a 10 MiB batch from being copied twice."""
MIN_SQLITE: Final = (3, 35, 0)
"""``RETURNING`` (3.35); the JSON functions must be built in (they are by default since 3.38, and
in the usual builds before)."""
CACHE_KIB: Final = 16 * 1024
"""SQLite page cache per connection; bounds the child's memory. Merges read and write many
pages, so the cache fills: 32 MiB put the largest batch (100 x 100 KiB) at 137 MiB peak RSS
per child, 16 MiB at 110 MiB, with the same records/s (measured in benchmarks/)."""
WAL_AUTOCHECKPOINT_PAGES: Final = 10_000
"""Checkpoint the WAL every ~40 MB instead of SQLite's 4 MB: index pages touched by several
batches are copied into the database once (measured 32k → 70k rows/s at 5M rows alone)."""

_SHARDS_TABLE: Final = """CREATE TABLE IF NOT EXISTS thyme_shards (
    dataset TEXT NOT NULL, version INTEGER NOT NULL, stream TEXT NOT NULL, shard TEXT NOT NULL,
    sequence TEXT, sub_sequence INTEGER, watermark_us INTEGER, ended INTEGER NOT NULL DEFAULT 0,
    applied INTEGER NOT NULL DEFAULT 0, dead_lettered INTEGER NOT NULL DEFAULT 0,
    updated_at_us INTEGER NOT NULL, millis_behind_latest INTEGER, PRIMARY KEY (dataset, version, stream, shard)
)"""
_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS thyme_datasets (
    name TEXT NOT NULL, version INTEGER NOT NULL, schema_json TEXT NOT NULL,
    created_at_us INTEGER NOT NULL, PRIMARY KEY (name, version)
);
{_SHARDS_TABLE};
CREATE TABLE IF NOT EXISTS thyme_dead_letters (
    id INTEGER PRIMARY KEY, dataset TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0,
    stream TEXT NOT NULL DEFAULT '', shard TEXT NOT NULL,
    sequence TEXT NOT NULL, sub_sequence INTEGER NOT NULL, partition_key TEXT NOT NULL,
    arrival_ms INTEGER, reason TEXT NOT NULL, raw BLOB NOT NULL, recorded_at_us INTEGER NOT NULL,
    redriven_at_us INTEGER
)
"""

_ADDED_COLUMNS: Final = (
    ("thyme_dead_letters", "redriven_at_us", "INTEGER"),
    ("thyme_dead_letters", "version", "INTEGER NOT NULL DEFAULT 0"),
    ("thyme_dead_letters", "stream", "TEXT NOT NULL DEFAULT ''"),
)
"""Columns added after the first release: a file created before them gets them on open. Dead
letters written before they had a version and a stream get version 0 and stream '' (legacy,
adopted by :meth:`SQLiteStore.ensure_feed`)."""

_INDEXES: Final = """
DROP INDEX IF EXISTS thyme_dead_letters_by_reason;
CREATE INDEX IF NOT EXISTS thyme_dead_letters_by_version ON thyme_dead_letters (dataset, version, reason)
"""

_SHARDS_BEFORE_FEEDS: Final = """
ALTER TABLE thyme_shards RENAME TO thyme_shards_before_feeds;
{create};
INSERT INTO thyme_shards SELECT dataset, 0, '', shard, sequence, sub_sequence, watermark_us, ended, applied,
    dead_lettered, updated_at_us, {lag} FROM thyme_shards_before_feeds;
DROP TABLE thyme_shards_before_feeds
"""
"""A file whose shard state was keyed by (dataset, shard) only: its rows become legacy state
(version 0, stream ''), adopted by the dataset's first feed."""
LEGACY_VERSION: Final = 0


def _now_us() -> int:
    return time.time_ns() // 1000


_ENCODE: Final = msgspec.json.Encoder()
_ROW_TYPES: Final = {(str, int, str), (int, int, str)}


def table_name(dataset: DatasetSchema) -> str:
    """The events table of a dataset version (the name is validated by ``@dataset``)."""
    return f"ds_{dataset.name}_v{dataset.version}"


class SQLiteStore:
    """The embedded SQLite store. Safe for many processes, and for many threads of each."""

    def __init__(
        self, path: str | Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, fanout: int = DEFAULT_FANOUT
    ) -> None:
        if fanout < 2:
            raise ValueError(f"fanout must be at least 2, not {fanout}")
        check_sqlite_library(json=_has_json())
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._busy_timeout_ms = busy_timeout_ms
        self._fanout = fanout
        self._known: set[DatasetSchema] = set()
        """Dataset shapes this process has checked against the store (and created or widened)."""
        self._feeds: set[Feed] = set()
        self._pool: ConnectionPool[sqlite3.Connection] = ConnectionPool(self._connect, sqlite3.Connection.close)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._write():
                pass  # wait for the lock before switching the journal mode
            with self._pool.connection() as db:
                db.execute("PRAGMA journal_mode = WAL")
            with self._write() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                _upgrade(db, self._size_class)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(f"cannot open the SQLite store {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: the pool hands a connection to one thread at a time, not always the same
        db = sqlite3.connect(
            self.path, isolation_level=None, timeout=self._busy_timeout_ms / 1000, check_same_thread=False
        )
        db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        db.execute("PRAGMA synchronous = FULL")
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        db.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        db.execute("PRAGMA temp_store = MEMORY")
        return db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads outside a transaction; errors mapped as for writes."""
        with self._pool.connection() as db:
            try:
                yield db
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every statement in it sees the file as it was at its first read."""
        with self._read() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with ``BEGIN IMMEDIATE``; rolled back on any error."""
        with self._pool.connection() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._unavailable(exc) from exc
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._unavailable(exc) from exc
                raise

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailableError:
        """A transient condition (lock, full disk, I/O) as :class:`StoreUnavailableError`.

        Anything else (a constraint, a malformed statement) is a bug, not an outage: it is
        re-raised as it is, so that the child exits instead of retrying it for minutes.
        """
        text = str(exc)
        if "locked" in text or "busy" in text:
            hint = f"another process held the write lock for more than {self._busy_timeout_ms} ms"
        elif "full" in text:
            hint = "the disk (or the file-size limit) is full"
        elif isinstance(exc, sqlite3.OperationalError) and any(
            word in text for word in ("I/O", "unable to open", "readonly", "disk")
        ):
            hint = text
        else:
            raise exc
        return StoreUnavailableError(f"SQLite store {self.path}: {hint} ({text})")

    # -- datasets ---------------------------------------------------------------------------

    def ensure_dataset(self, schema: DatasetSchema) -> None:
        ident = (schema.name, schema.version)
        if schema in self._known:
            return
        wanted = schema.model_dump_json()
        with self._write() as db:
            found = db.execute(
                "SELECT schema_json FROM thyme_datasets WHERE name = ? AND version = ?", ident
            ).fetchone()
            if found is None:
                db.execute(
                    "INSERT INTO thyme_datasets (name, version, schema_json, created_at_us) VALUES (?, ?, ?, ?)",
                    (*ident, wanted, _now_us()),
                )
                table = table_name(schema)
                db.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (rid INTEGER PRIMARY KEY, row TEXT NOT NULL)')
                _create_index(db, table)
            elif shape_against_stored(found[0], schema, self.url):
                db.execute("UPDATE thyme_datasets SET schema_json = ? WHERE name = ? AND version = ?", (wanted, *ident))
        self._known.add(schema)

    def ensure_feed(self, feed: Feed) -> None:
        self.ensure_dataset(feed.dataset)
        if feed in self._feeds:
            return
        name, version = feed.dataset.name, feed.dataset.version
        with self._write() as db:
            if (
                db.execute(
                    "SELECT 1 FROM thyme_shards WHERE dataset = ? AND version = ? LIMIT 1", (name, LEGACY_VERSION)
                ).fetchone()
                and not db.execute(
                    "SELECT 1 FROM thyme_shards WHERE dataset = ? AND version = ? AND stream = ? LIMIT 1",
                    (name, version, feed.stream),
                ).fetchone()
            ):
                db.execute(
                    "UPDATE thyme_shards SET version = ?, stream = ? WHERE dataset = ? AND version = ?",
                    (version, feed.stream, name, LEGACY_VERSION),
                )
            db.execute(
                "UPDATE thyme_dead_letters SET version = ?, stream = ? WHERE dataset = ? AND version = ?",
                (version, feed.stream, name, LEGACY_VERSION),
            )
        self._feeds.add(feed)

    # -- shards -----------------------------------------------------------------------------

    def shard_state(self, feed: Feed, shard: str) -> ShardState | None:
        with self._read() as db:
            found = db.execute(_SELECT_STATE, _shard_key(feed, shard)).fetchone()
        return None if found is None else _state(*found)

    def apply(self, feed: Feed, batch: Batch, expect: ShardState | None) -> Conflict | None:
        dataset = feed.dataset
        self.ensure_dataset(dataset)
        now = _now_us()
        prepared = _prepare(batch.rows) if batch.rows else None  # before the write lock: others may write
        with self._write() as db:
            found = db.execute(_SELECT_STATE, _shard_key(feed, batch.shard)).fetchone()
            current = None if found is None else _state(*found)
            if current != expect:
                return Conflict(current)
            if prepared is not None:
                self._insert_rows(db, dataset, prepared)
            if batch.dead_letters:
                db.executemany(
                    "INSERT INTO thyme_dead_letters (dataset, version, stream, shard, sequence, sub_sequence, "
                    "partition_key, arrival_ms, reason, raw, recorded_at_us) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [dead_letter_values(feed, d, now) for d in batch.dead_letters],
                )
            state = batch.state
            position = state.position
            db.execute(
                "INSERT INTO thyme_shards (dataset, version, stream, shard, sequence, sub_sequence, watermark_us, "
                "ended, applied, dead_lettered, updated_at_us, millis_behind_latest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (dataset, version, stream, shard) DO UPDATE SET sequence = excluded.sequence, "
                "sub_sequence = excluded.sub_sequence, watermark_us = excluded.watermark_us, "
                "ended = excluded.ended, applied = applied + excluded.applied, "
                "dead_lettered = dead_lettered + excluded.dead_lettered, updated_at_us = excluded.updated_at_us, "
                "millis_behind_latest = coalesce(excluded.millis_behind_latest, millis_behind_latest)",
                (
                    *_shard_key(feed, batch.shard),
                    None if position is None else str(position.sequence),
                    None if position is None else position.sub_sequence,
                    state.watermark_us,
                    int(state.ended),
                    len(batch.rows),
                    len(batch.dead_letters),
                    now,
                    batch.millis_behind_latest,
                ),
            )
        return None

    def redrive(self, dataset: DatasetSchema, fixes: Sequence[tuple[int, Row]]) -> int:
        if not fixes:
            return 0
        self.ensure_dataset(dataset)
        now = _now_us()
        wanted = dict(fixes)
        with self._write() as db:
            marked: list[int] = []
            for start in range(0, len(fixes), 500):  # bounded statement size
                ids = [i for i, _ in fixes[start : start + 500]]
                marked += [
                    r[0]
                    for r in db.execute(
                        "UPDATE thyme_dead_letters SET redriven_at_us = ? WHERE dataset = ? AND version = ? "
                        f"AND redriven_at_us IS NULL AND id IN ({','.join('?' * len(ids))}) RETURNING id",
                        (now, dataset.name, dataset.version, *ids),
                    )
                ]
            marked.sort()  # apply in the order the records were recorded
            if marked:
                self._insert_rows(db, dataset, _prepare([wanted[i] for i in marked]))
        return len(marked)

    def _insert_rows(self, db: sqlite3.Connection, dataset: DatasetSchema, rows: _Prepared) -> None:
        """Append the rows, index them as a new sorted run, and advance the merges.

        Both inserts read one JSON array each (``json_each``): SQLite unpacks and writes the
        entries in C, instead of binding every value from Python; the index entries arrive
        sorted, so they are appended in order.
        """
        table = table_name(dataset)
        base = db.execute(f'SELECT coalesce(max(rid), 0) FROM "{table}"').fetchone()[0] + 1
        if isinstance(rows.rows, bytes):
            db.execute(f'INSERT INTO "{table}" (rid, row) SELECT ?1 + key, value FROM json_each(?2)', (base, rows.rows))
        else:  # large rows: one at a time, no second copy of them in memory
            db.executemany(f'INSERT INTO "{table}" (rid, row) VALUES (?, ?)', zip(itertools.count(base), rows.rows))
        run = db.execute(f'SELECT coalesce(max(run), 0) + 1 FROM "{table}_runs"').fetchone()[0]
        _create_run(db, table, run)
        db.execute(
            f'INSERT INTO "{table}_run{run}" (key, ts, rid) '
            "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?1 + json_extract(value, '$[2]') "
            "FROM json_each(?2)",
            (base, rows.entries),
        )
        db.execute(
            f'INSERT INTO "{table}_runs" (run, size_class, entries) VALUES (?, ?, ?)',
            (run, self._size_class(rows.count), rows.count),
        )
        self._compact(db, table, max(MIN_MOVE, MOVE_FACTOR * rows.count))

    def _size_class(self, entries: int) -> int:
        """``c`` such that ``fanout**c <= entries < fanout**(c+1)`` (0 for an empty run)."""
        size_class, bound = 0, self._fanout
        while entries >= bound:
            size_class, bound = size_class + 1, bound * self._fanout
        return size_class

    def _compact(self, db: sqlite3.Connection, table: str, budget: int) -> None:
        """Start the merges that are due, then move up to ``budget`` entries for each merge in progress.

        A run being merged has ``merging_into`` = its target; a target is a run that some run
        is merging into. Per size class at most one merge runs at a time, of the ``fanout``
        oldest idle runs of that class, into a new run of the next class.
        """
        runs = f'"{table}_runs"'
        due = db.execute(
            f"SELECT size_class FROM {runs} AS r WHERE merging_into IS NULL "
            f"AND NOT EXISTS (SELECT 1 FROM {runs} AS s WHERE s.merging_into = r.run) "
            f"AND NOT EXISTS (SELECT 1 FROM {runs} AS m WHERE m.size_class = r.size_class "
            "AND m.merging_into IS NOT NULL) "
            "GROUP BY size_class HAVING count(*) >= ?",
            (self._fanout,),
        ).fetchall()
        for (size_class,) in due:
            target = db.execute(f"SELECT max(run) + 1 FROM {runs}").fetchone()[0]
            db.execute(
                f"UPDATE {runs} SET merging_into = ?1 WHERE run IN (SELECT run FROM {runs} AS r "
                "WHERE size_class = ?2 AND merging_into IS NULL "
                f"AND NOT EXISTS (SELECT 1 FROM {runs} AS s WHERE s.merging_into = r.run) ORDER BY run LIMIT ?3)",
                (target, size_class, self._fanout),
            )
            db.execute(f"INSERT INTO {runs} (run, size_class, entries) VALUES (?, ?, 0)", (target, size_class + 1))
            _create_run(db, table, target)
        merging: dict[int, list[int]] = {}
        for run, target in db.execute(
            f"SELECT run, merging_into FROM {runs} WHERE merging_into IS NOT NULL ORDER BY run"
        ).fetchall():
            merging.setdefault(target, []).append(run)
        for target, sources in merging.items():
            self._merge_step(db, table, target, sources, budget)

    def _merge_step(self, db: sqlite3.Connection, table: str, target: int, sources: list[int], budget: int) -> None:
        """Copy the next ``budget`` entries of ``sources`` (after the target's last one) into the
        target, in key order (SQLite merges the sorted runs: no sort); when they run out, drop them."""
        into = f'"{table}_run{int(target)}"'
        last = db.execute(f"SELECT key, ts, rid FROM {into} ORDER BY key DESC, ts DESC, rid DESC LIMIT 1").fetchone()
        after = "" if last is None else " WHERE (key, ts, rid) > (?2, ?3, ?4)"
        arms = " UNION ALL ".join(f'SELECT key, ts, rid FROM "{table}_run{int(s)}"{after}' for s in sources)
        moved = db.execute(
            f"INSERT INTO {into} (key, ts, rid) SELECT key, ts, rid FROM ({arms} ORDER BY key, ts, rid LIMIT ?1)",
            (budget, *(last or ())),
        ).rowcount
        runs = f'"{table}_runs"'
        if moved < budget:  # the sources are used up: they go, the target is a run like any other
            for source in sources:
                db.execute(f'DROP TABLE "{table}_run{int(source)}"')
            db.execute(f"DELETE FROM {runs} WHERE run IN ({','.join('?' * len(sources))})", sources)
            (entries,) = db.execute(
                f"UPDATE {runs} SET entries = entries + ? WHERE run = ? RETURNING entries", (moved, target)
            ).fetchone()
            db.execute(f"UPDATE {runs} SET size_class = ? WHERE run = ?", (self._size_class(entries), target))
        else:
            db.execute(f"UPDATE {runs} SET entries = entries + ? WHERE run = ?", (moved, target))

    def shards(self, feed: Feed) -> list[ShardSummary]:
        with self._read() as db:
            rows = db.execute(
                "SELECT shard, sequence, sub_sequence, watermark_us, ended, applied, dead_lettered, updated_at_us, "
                "millis_behind_latest FROM thyme_shards WHERE dataset = ? AND version = ? AND stream = ? "
                "ORDER BY shard",
                (feed.dataset.name, feed.dataset.version, feed.stream),
            ).fetchall()
        return [
            ShardSummary(feed.dataset.name, shard, _state(seq, sub, wm, ended), applied, dead, updated, lag)
            for shard, seq, sub, wm, ended, applied, dead, updated, lag in rows
        ]

    # -- reads ------------------------------------------------------------------------------

    def lookup(self, dataset: DatasetSchema, key: Key, at_us: int) -> str | None:
        return self.lookup_many(dataset, (key,), at_us)[0]

    def lookup_many(self, dataset: DatasetSchema, keys: Sequence[Key], at_us: int) -> list[str | None]:
        table = table_name(dataset)
        with self._snapshot() as db:  # the run list and the runs as they were together
            if not self._readable(db, dataset):
                return [None] * len(keys)
            runs = [run for (run,) in db.execute(f'SELECT run FROM "{table}_runs"')]
            statements = []
            for start in range(0, len(runs), LOOKUP_ARMS):
                arms = " UNION ALL ".join(
                    f'SELECT * FROM (SELECT ts, rid FROM "{table}_run{int(run)}" WHERE key = ?1 AND ts <= ?2 '
                    "ORDER BY ts DESC, rid DESC LIMIT 1)"
                    for run in runs[start : start + LOOKUP_ARMS]
                )
                statements.append(f"{arms} ORDER BY ts DESC, rid DESC LIMIT 1")
            found: list[str | None] = []
            for key in keys:
                best: tuple[int, int] | None = None
                for statement in statements:
                    hit = db.execute(statement, (key, at_us)).fetchone()
                    if hit is not None and (best is None or hit > best):
                        best = (hit[0], hit[1])
                row = None if best is None else db.execute(f'SELECT row FROM "{table}" WHERE rid = ?', (best[1],))
                data = None if row is None else row.fetchone()
                found.append(None if data is None else str(data[0]))
            return found

    def _readable(self, db: sqlite3.Connection, dataset: DatasetSchema) -> bool:
        """Whether the dataset version has tables to read; raises if its stored shape cannot be
        read as ``dataset`` (never writes: a lookup does not create or widen anything)."""
        if dataset in self._known:
            return True
        found = db.execute(
            "SELECT schema_json FROM thyme_datasets WHERE name = ? AND version = ?", (dataset.name, dataset.version)
        ).fetchone()
        if found is None:
            return False
        shape_against_stored(found[0], dataset, self.url)
        return True

    def count_rows(self, dataset: DatasetSchema) -> int:
        with self._read() as db:
            if not self._readable(db, dataset):
                return 0
            return int(db.execute(f'SELECT count(*) FROM "{table_name(dataset)}"').fetchone()[0])

    def dead_letters(
        self,
        dataset: DatasetSchema,
        reason: str | None = None,
        limit: int = 1000,
        *,
        query: DeadLetterQuery | None = None,
    ) -> list[DeadLetter]:
        where, args = dead_letter_filter(dataset, reason, query or DeadLetterQuery(), "?")
        with self._read() as db:
            rows = db.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM thyme_dead_letters WHERE {where} ORDER BY id LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [dead_letter(row) for row in rows]

    def dead_letter_counts(self, dataset: DatasetSchema) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute(
                "SELECT reason, count(*) FROM thyme_dead_letters WHERE dataset = ? AND version = ? "
                "AND redriven_at_us IS NULL GROUP BY reason ORDER BY reason",
                (dataset.name, dataset.version),
            ).fetchall()
        return {reason: int(n) for reason, n in rows}

    def dead_letter_counts_by_shard(self, feed: Feed) -> dict[str, dict[str, int]]:
        with self._read() as db:
            rows = db.execute(
                "SELECT shard, reason, count(*) FROM thyme_dead_letters WHERE dataset = ? AND version = ? "
                "AND stream = ? AND redriven_at_us IS NULL GROUP BY shard, reason ORDER BY shard, reason",
                (feed.dataset.name, feed.dataset.version, feed.stream),
            ).fetchall()
        found: dict[str, dict[str, int]] = {}
        for shard, reason, n in rows:
            found.setdefault(shard, {})[reason] = int(n)
        return found

    def close(self) -> None:
        self._pool.close()


@dataclass(frozen=True)
class _Prepared:
    """A batch's rows as :meth:`SQLiteStore._insert_rows` passes them to SQLite."""

    rows: bytes | list[str]
    """JSON array of the row strings, in apply order; for large rows, the rows themselves."""
    entries: bytes
    """JSON array of ``[key, ts, position in rows]``, sorted as the index is."""
    count: int


def _prepare(rows: Sequence[Row]) -> _Prepared:
    """Check, encode and sort a batch's rows: done before the write lock is taken."""
    kinds = {(type(key), type(ts), type(data)) for key, ts, data in rows}
    if not kinds <= _ROW_TYPES:  # JSON would carry any of them, silently changed: a bug upstream
        raise TypeError(f"a row must be (str or int key, int event time, str row), not {sorted(map(str, kinds))}")
    if len({key_type for key_type, _, _ in kinds}) > 1:
        raise TypeError("the keys of one dataset are all str or all int, not both")
    entries = sorted([(key, ts, i) for i, (key, ts, _) in enumerate(rows)])  # code point order = SQLite's BINARY
    data = [data for _, _, data in rows]
    encoded = _ENCODE.encode(data) if sum(map(len, data)) <= JSON_ROWS_MAX_CHARS else data
    return _Prepared(encoded, _ENCODE.encode(entries), len(rows))


def check_sqlite_library(version: tuple[int, int, int] = sqlite3.sqlite_version_info, json: bool = True) -> None:
    """Refuse an SQLite library the store's SQL cannot run on: older than 3.35, or built without
    the JSON functions (``json`` is whether this one has them)."""
    if version < MIN_SQLITE or not json:
        missing = "is built without the JSON functions" if version >= MIN_SQLITE else "is too old"
        raise StoreConfigError(
            "store URL",
            f"the SQLite library Python uses ({'.'.join(map(str, version))}) {missing}; the store needs "
            f"{'.'.join(map(str, MIN_SQLITE))} or newer with JSON",
            "Use a Python linked with a usual SQLite build (Debian 12, Ubuntu 22.04 and 24.04, python.org "
            "builds and the project's image have one), or a PostgreSQL store.",
        )


@functools.cache
def _has_json() -> bool:
    probe = sqlite3.connect(":memory:")
    try:
        return bool(probe.execute("SELECT json_extract('[1]', '$[0]')").fetchone()[0] == 1)
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def _create_index(db: sqlite3.Connection, table: str) -> None:
    db.execute(
        f'CREATE TABLE IF NOT EXISTS "{table}_runs" (run INTEGER PRIMARY KEY, size_class INTEGER NOT NULL, '
        "entries INTEGER NOT NULL, merging_into INTEGER)"
    )


def _create_run(db: sqlite3.Connection, table: str, run: int) -> None:
    db.execute(
        f'CREATE TABLE "{table}_run{int(run)}" (key NOT NULL, ts INTEGER NOT NULL, rid INTEGER NOT NULL, '
        "PRIMARY KEY (key, ts, rid)) WITHOUT ROWID"
    )


def _upgrade_index(db: sqlite3.Connection, table: str, size_class: Callable[[int], int]) -> None:
    """A file written before the index had runs has two tiers, ``…_main`` and ``…_recent``,
    each a table like a run: each becomes one run (renamed once, on first open)."""
    tiers = [
        name
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
            (f"{table}_main", f"{table}_recent"),
        )
    ]
    if not tiers:
        return
    _create_index(db, table)
    run = db.execute(f'SELECT coalesce(max(run), 0) FROM "{table}_runs"').fetchone()[0]
    for tier in sorted(tiers):  # main, then recent
        run += 1
        db.execute(f'ALTER TABLE "{tier}" RENAME TO "{table}_run{run}"')
        (entries,) = db.execute(f'SELECT count(*) FROM "{table}_run{run}"').fetchone()
        db.execute(
            f'INSERT INTO "{table}_runs" (run, size_class, entries) VALUES (?, ?, ?)',
            (run, size_class(entries), entries),
        )


_SELECT_STATE: Final = (
    "SELECT sequence, sub_sequence, watermark_us, ended FROM thyme_shards "
    "WHERE dataset = ? AND version = ? AND stream = ? AND shard = ?"
)


def _shard_key(feed: Feed, shard: str) -> tuple[str, int, str, str]:
    return (feed.dataset.name, feed.dataset.version, feed.stream, shard)


def _upgrade(db: sqlite3.Connection, size_class: Callable[[int], int]) -> None:
    """Bring a file written by an earlier release to the current layout (in the open transaction)."""
    for name, version in db.execute("SELECT name, version FROM thyme_datasets").fetchall():
        _upgrade_index(db, f"ds_{name}_v{version}", size_class)
    for table, column, declared in _ADDED_COLUMNS:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declared}")
    shard_columns = {row[1] for row in db.execute("PRAGMA table_info(thyme_shards)")}
    if "stream" not in shard_columns:
        create = _SHARDS_TABLE
        lag = "millis_behind_latest" if "millis_behind_latest" in shard_columns else "NULL"
        for statement in _SHARDS_BEFORE_FEEDS.format(create=create, lag=lag).split(";"):
            db.execute(statement)
    for statement in _INDEXES.split(";"):
        db.execute(statement)


def _state(sequence: str | None, sub: int | None, watermark: int | None, ended: int) -> ShardState:
    position = None if sequence is None else Position(int(sequence), sub or 0)
    return ShardState(position=position, watermark_us=watermark, ended=bool(ended))
