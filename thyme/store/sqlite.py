"""The embedded store: one SQLite file shared by every shard's child process.

* ``ds_<name>_v<version>``: the rows, append-only, ``rid`` = apply order (which within a shard is
  stream order, and breaks ties between equal event times), indexed by ``(key, ts, rid)`` as
  sorted runs (:mod:`thyme.store.sqlite_runs`).
* Thyme's own tables (:mod:`thyme.store.common`): the dataset shapes, the shard state per feed,
  the dead letters.

Concurrency: WAL mode, and every write transaction starts with ``BEGIN IMMEDIATE`` so that a
writer waits (``busy_timeout``) for the lock instead of failing on upgrade. ``synchronous=FULL``:
a committed batch survives a power cut, because the KCL checkpoint is taken after it. Each call
takes a connection of its own from a pool (:mod:`thyme.store.pool`) for its transaction, so
threads never share one, and a process made by ``fork`` opens its own.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from thyme.errors import StoreConfigError, StoreUnavailableError
from thyme.schema import DatasetSchema, SchemaSet
from thyme.store import common
from thyme.store.base import Batch, Conflict, DeadLetter, DeadLetterQuery, Feed, Key, Row, ShardState, ShardSummary
from thyme.store.common import LEGACY_VERSION, SQLITE, Statements
from thyme.store.pool import ConnectionPool
from thyme.store.sqlite_runs import DEFAULT_FANOUT, RunIndex, table_name

DEFAULT_BUSY_TIMEOUT_MS: Final = 30_000
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

SQL: Final = Statements.with_mark("?")
_TABLES: Final = common.tables(SQLITE)
_ADDED_COLUMNS: Final = (
    ("thyme_dead_letters", "redriven_at_us", "INTEGER"),
    ("thyme_dead_letters", "version", f"INTEGER NOT NULL DEFAULT {LEGACY_VERSION}"),
    ("thyme_dead_letters", "stream", "TEXT NOT NULL DEFAULT ''"),
    ("thyme_dead_letters", "detail", "TEXT"),
)
"""Columns added after the first release: a file created before them gets them on open. Dead
letters written before they had a version and a stream are legacy ones (:func:`common.adopt_legacy`)."""
_INDEXES: Final = (
    "DROP INDEX IF EXISTS thyme_dead_letters_by_reason",
    "CREATE INDEX IF NOT EXISTS thyme_dead_letters_by_version ON thyme_dead_letters (dataset, version, reason)",
)
_SHARDS_BEFORE_FEEDS: Final = (
    "ALTER TABLE thyme_shards RENAME TO thyme_shards_before_feeds",
    _TABLES["thyme_shards"],
    f"INSERT INTO thyme_shards SELECT dataset, {LEGACY_VERSION}, '', shard, sequence, sub_sequence, watermark_us, "
    "ended, applied, dead_lettered, updated_at_us, {lag} FROM thyme_shards_before_feeds",
    "DROP TABLE thyme_shards_before_feeds",
)
"""A file whose shard state was keyed by (dataset, shard) only: its rows become legacy state."""
_INSERT_DEAD_LETTERS: Final = (
    f"INSERT INTO thyme_dead_letters ({common.DEAD_LETTER_INSERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_UPSERT_STATE: Final = (
    "INSERT INTO thyme_shards (dataset, version, stream, shard, sequence, sub_sequence, watermark_us, "
    "ended, applied, dead_lettered, updated_at_us, millis_behind_latest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (dataset, version, stream, shard) DO UPDATE SET sequence = excluded.sequence, "
    "sub_sequence = excluded.sub_sequence, watermark_us = excluded.watermark_us, "
    "ended = excluded.ended, applied = applied + excluded.applied, "
    "dead_lettered = dead_lettered + excluded.dead_lettered, updated_at_us = excluded.updated_at_us, "
    "millis_behind_latest = coalesce(excluded.millis_behind_latest, millis_behind_latest)"
)
_ENCODE: Final = msgspec.json.Encoder()
_ROW_TYPES: Final = {(str, int, str), (int, int, str)}

__all__ = ["DEFAULT_BUSY_TIMEOUT_MS", "DEFAULT_FANOUT", "SQLiteStore", "check_sqlite_library", "table_name"]


class SQLiteStore:
    """The embedded SQLite store. Safe for many processes, and for many threads of each."""

    def __init__(
        self, path: str | Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, fanout: int = DEFAULT_FANOUT
    ) -> None:
        self._index = RunIndex(fanout)
        check_sqlite_library(json=_has_json())
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._busy_timeout_ms = busy_timeout_ms
        self._known = SchemaSet()
        """Dataset shapes this process has checked against the store (and created or widened)."""
        self._read_known = SchemaSet()
        """Dataset shapes this process found readable or recorded (lookups never record or widen one)."""
        self._feeds: set[Feed] = set()
        self._pool: ConnectionPool[sqlite3.Connection] = ConnectionPool(self._connect, sqlite3.Connection.close)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._write():
                pass  # wait for the lock before switching the journal mode
            with self._pool.connection() as db:
                db.execute("PRAGMA journal_mode = WAL")
            with self._write() as db:
                for statement in _TABLES.values():
                    db.execute(statement)
                self._upgrade(db)
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

    # -- datasets and feeds ------------------------------------------------------------------

    def ensure_dataset(self, schema: DatasetSchema) -> None:
        if schema in self._known:
            return
        with self._write() as db:
            if common.register_shape(db.execute, SQL, schema, self.url):
                table = table_name(schema)
                db.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (rid INTEGER PRIMARY KEY, row TEXT NOT NULL)')
                self._index.create(db, table)
        self._known.add(schema)
        self._read_known.add(schema)

    def ensure_feed(self, feed: Feed) -> None:
        self.ensure_dataset(feed.dataset)
        if feed not in self._feeds:
            with self._write() as db:
                common.adopt_legacy(db.execute, SQL, feed)
            self._feeds.add(feed)

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Bring a file written by an earlier release to the current layout (in the open transaction)."""
        for name, version in db.execute("SELECT name, version FROM thyme_datasets").fetchall():
            self._index.upgrade(db, f"ds_{name}_v{version}")
        for table, column, declared in _ADDED_COLUMNS:
            if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declared}")
        shard_columns = {row[1] for row in db.execute("PRAGMA table_info(thyme_shards)")}
        if "stream" not in shard_columns:
            lag = "millis_behind_latest" if "millis_behind_latest" in shard_columns else "NULL"
            for statement in _SHARDS_BEFORE_FEEDS:
                db.execute(statement.replace("{lag}", lag))
        for statement in _INDEXES:
            db.execute(statement)

    # -- shards -----------------------------------------------------------------------------

    def shard_state(self, feed: Feed, shard: str) -> ShardState | None:
        with self._read() as db:
            found = db.execute(SQL.select_state, common.shard_key(feed, shard)).fetchone()
        return None if found is None else common.shard_state(*found)

    def apply(self, feed: Feed, batch: Batch, expect: ShardState | None) -> Conflict | None:
        dataset = feed.dataset
        self.ensure_dataset(dataset)
        now = common.now_us()
        prepared = _prepare(batch.rows) if batch.rows else None  # before the write lock: others may write
        with self._write() as db:
            found = db.execute(SQL.select_state, common.shard_key(feed, batch.shard)).fetchone()
            current = None if found is None else common.shard_state(*found)
            if current != expect:
                return Conflict(current)
            if prepared is not None:
                self._insert_rows(db, dataset, prepared)
            if batch.dead_letters:
                db.executemany(
                    _INSERT_DEAD_LETTERS, [common.dead_letter_values(feed, d, now) for d in batch.dead_letters]
                )
            state = batch.state
            position = state.position
            db.execute(
                _UPSERT_STATE,
                (
                    *common.shard_key(feed, batch.shard),
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

    def shards(self, feed: Feed) -> list[ShardSummary]:
        with self._read() as db:
            rows = db.execute(SQL.select_shards, (feed.dataset.name, feed.dataset.version, feed.stream)).fetchall()
        return common.shard_summaries(feed, rows)

    def redrive(self, dataset: DatasetSchema, fixes: Sequence[tuple[int, Row]]) -> int:
        if not fixes:
            return 0
        self.ensure_dataset(dataset)
        now = common.now_us()
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
        """Append the rows (one JSON array, unpacked by SQLite in C instead of binding every value
        from Python), then index them as a new sorted run."""
        table = table_name(dataset)
        base = db.execute(f'SELECT coalesce(max(rid), 0) FROM "{table}"').fetchone()[0] + 1
        if isinstance(rows.rows, bytes):
            db.execute(f'INSERT INTO "{table}" (rid, row) SELECT ?1 + key, value FROM json_each(?2)', (base, rows.rows))
        else:  # large rows: one at a time, no second copy of them in memory
            db.executemany(f'INSERT INTO "{table}" (rid, row) VALUES (?, ?)', zip(itertools.count(base), rows.rows))
        self._index.add(db, table, rows.entries, rows.count, base)

    # -- reads ------------------------------------------------------------------------------

    def lookup(self, dataset: DatasetSchema, key: Key, at_us: int) -> str | None:
        return self.lookup_many(dataset, (key,), at_us)[0]

    def lookup_many(self, dataset: DatasetSchema, keys: Sequence[Key], at_us: int) -> list[str | None]:
        table = table_name(dataset)
        with self._snapshot() as db:  # the run list and the runs as they were together
            if not self._readable(db, dataset):
                return [None] * len(keys)
            probes = self._index.probes(db, table)
            found: list[str | None] = []
            if len(probes) == 1:  # the usual case: one statement per key finds the row
                one = f'SELECT row FROM "{table}" WHERE rid = (SELECT rid FROM ({probes[0]}))'
                for key in keys:
                    data = db.execute(one, (key, at_us)).fetchone()
                    found.append(None if data is None else str(data[0]))
                return found
            for key in keys:
                best: tuple[int, int] | None = None
                for probe in probes:
                    hit = db.execute(probe, (key, at_us)).fetchone()
                    if hit is not None and (best is None or hit > best):
                        best = (hit[0], hit[1])
                row = None if best is None else db.execute(f'SELECT row FROM "{table}" WHERE rid = ?', (best[1],))
                data = None if row is None else row.fetchone()
                found.append(None if data is None else str(data[0]))
            return found

    def _readable(self, db: sqlite3.Connection, dataset: DatasetSchema) -> bool:
        return common.readable(db.execute, SQL, dataset, self.url, self._read_known)

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
        where, args = SQL.dead_letter_filter(dataset, reason, query or DeadLetterQuery())
        select = f"SELECT {common.DEAD_LETTER_COLUMNS} FROM thyme_dead_letters WHERE {where} ORDER BY id LIMIT ?"
        with self._read() as db:
            rows = db.execute(select, (*args, limit)).fetchall()
        return [common.dead_letter(row) for row in rows]

    def dead_letter_counts(self, dataset: DatasetSchema) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute(SQL.dead_letter_counts, (dataset.name, dataset.version)).fetchall()
        return {reason: int(n) for reason, n in rows}

    def dead_letter_counts_by_shard(self, feed: Feed) -> dict[str, dict[str, int]]:
        with self._read() as db:
            rows = db.execute(
                SQL.dead_letter_counts_by_shard, (feed.dataset.name, feed.dataset.version, feed.stream)
            ).fetchall()
        return common.counts_by_shard(rows)

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
