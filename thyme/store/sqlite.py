"""The embedded store: one SQLite file shared by every shard's child process.

Layout, chosen for write speed into a dataset that already holds millions of rows
(``../shared/reference/performance.md``; measured: one random-key index over 5M rows takes
~32k rows/s, this layout ~110k):

* ``ds_<name>_v<version>``: the rows, append-only, ``rid`` = apply order (which within a
  shard is stream order, and breaks ties between equal event times).
* ``…_recent`` and ``…_main``: the ``(key, ts, rid)`` index in two tiers, both clustered
  ``WITHOUT ROWID`` tables. Batches insert into the small ``recent`` tier, whose pages stay
  in cache; once it holds ``merge_rows`` entries, the writer moves them into ``main`` in key
  order inside its transaction, so the large tier is written sequentially, a page once per
  merge instead of once per row. A lookup probes both tiers (two index seeks).
* ``thyme_shards``: per (dataset, shard) the last applied position, the watermark, counters.
* ``thyme_dead_letters``: rejected records with their raw bytes and reason.
* ``thyme_datasets``: the schema each dataset version was created with.

Concurrency: WAL mode, and every write transaction starts with ``BEGIN IMMEDIATE`` so that
a writer waits (``busy_timeout``) for the lock instead of failing on upgrade. ``synchronous=FULL``:
a committed batch survives a power cut, because the KCL checkpoint is taken after it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from thyme.dataset import DatasetSchema
from thyme.errors import SchemaChangedError, StoreUnavailableError
from thyme.store.base import (
    DEAD_LETTER_COLUMNS,
    Batch,
    Conflict,
    DeadLetter,
    DeadLetterQuery,
    Key,
    Position,
    Row,
    ShardState,
    ShardSummary,
    dead_letter_filter,
    dead_letter_values,
    total_by_reason,
)

DEFAULT_BUSY_TIMEOUT_MS: Final = 30_000
DEFAULT_MERGE_ROWS: Final = 200_000
CACHE_KIB: Final = 32 * 1024
"""SQLite page cache per connection: holds the recent index tier; bounds the child's memory."""
MERGE_CHUNKS: Final = 8
"""Past ``merge_rows``, each write moves 1/8 of the recent tier (the next key range) into main."""
WAL_AUTOCHECKPOINT_PAGES: Final = 10_000
"""Checkpoint the WAL every ~40 MB instead of SQLite's 4 MB: index pages touched by several
batches are copied into the database once (measured 32k → 70k rows/s at 5M rows alone)."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS thyme_datasets (
    name TEXT NOT NULL, version INTEGER NOT NULL, schema_json TEXT NOT NULL,
    created_at_us INTEGER NOT NULL, recent_rows INTEGER NOT NULL DEFAULT 0,
    merge_key, merge_ts INTEGER, merge_rid INTEGER, PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS thyme_shards (
    dataset TEXT NOT NULL, shard TEXT NOT NULL,
    sequence TEXT, sub_sequence INTEGER, watermark_us INTEGER, ended INTEGER NOT NULL DEFAULT 0,
    applied INTEGER NOT NULL DEFAULT 0, dead_lettered INTEGER NOT NULL DEFAULT 0,
    updated_at_us INTEGER NOT NULL, millis_behind_latest INTEGER, PRIMARY KEY (dataset, shard)
);
CREATE TABLE IF NOT EXISTS thyme_dead_letters (
    id INTEGER PRIMARY KEY, dataset TEXT NOT NULL, shard TEXT NOT NULL,
    sequence TEXT NOT NULL, sub_sequence INTEGER NOT NULL, partition_key TEXT NOT NULL,
    arrival_ms INTEGER, reason TEXT NOT NULL, raw BLOB NOT NULL, recorded_at_us INTEGER NOT NULL,
    redriven_at_us INTEGER
);
CREATE INDEX IF NOT EXISTS thyme_dead_letters_by_reason ON thyme_dead_letters (dataset, reason);
"""

_ADDED_COLUMNS: Final = (
    ("thyme_shards", "millis_behind_latest", "INTEGER"),
    ("thyme_dead_letters", "redriven_at_us", "INTEGER"),
)
"""Columns added after the first release: a file created before them gets them on open."""


def _now_us() -> int:
    return time.time_ns() // 1000


def table_name(dataset: DatasetSchema) -> str:
    """The events table of a dataset version (the name is validated by ``@dataset``)."""
    return f"ds_{dataset.name}_v{dataset.version}"


class SQLiteStore:
    """The embedded SQLite store. Safe for many processes; one instance per process."""

    def __init__(
        self, path: str | Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, merge_rows: int = DEFAULT_MERGE_ROWS
    ) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._busy_timeout_ms = busy_timeout_ms
        self._merge_rows = merge_rows
        self._known: set[tuple[str, int]] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, timeout=busy_timeout_ms / 1000, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            with self._write():
                pass  # wait for the lock before switching the journal mode
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._db.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            self._db.execute("PRAGMA temp_store = MEMORY")
            with self._write():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                for table, column, declared in _ADDED_COLUMNS:
                    columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                    if column not in columns:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declared}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(f"cannot open the SQLite store {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with ``BEGIN IMMEDIATE``; rolled back on any error."""
        db = self._db
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
        if ident in self._known:
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
                for tier in ("recent", "main"):
                    db.execute(
                        f'CREATE TABLE IF NOT EXISTS "{table}_{tier}" (key NOT NULL, ts INTEGER NOT NULL, '
                        "rid INTEGER NOT NULL, PRIMARY KEY (key, ts, rid)) WITHOUT ROWID"
                    )
            elif DatasetSchema.model_validate_json(found[0]) != schema:
                raise SchemaChangedError(
                    f"dataset {schema.name} version {schema.version}: its fields differ from the ones "
                    f"the store {self.url} holds for that version. Increase the version "
                    f"(@dataset(version={schema.version + 1})) to store the new fields separately."
                )
        self._known.add(ident)

    # -- shards -----------------------------------------------------------------------------

    def shard_state(self, dataset: DatasetSchema, shard: str) -> ShardState | None:
        try:
            found = self._db.execute(
                "SELECT sequence, sub_sequence, watermark_us, ended FROM thyme_shards WHERE dataset = ? AND shard = ?",
                (dataset.name, shard),
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        return None if found is None else _state(*found)

    def apply(self, dataset: DatasetSchema, batch: Batch, expect: ShardState | None) -> Conflict | None:
        self.ensure_dataset(dataset)
        now = _now_us()
        with self._write() as db:
            found = db.execute(
                "SELECT sequence, sub_sequence, watermark_us, ended FROM thyme_shards WHERE dataset = ? AND shard = ?",
                (dataset.name, batch.shard),
            ).fetchone()
            current = None if found is None else _state(*found)
            if current != expect:
                return Conflict(current)
            if batch.rows:
                self._insert_rows(db, dataset, batch.rows)
            if batch.dead_letters:
                db.executemany(
                    "INSERT INTO thyme_dead_letters (dataset, shard, sequence, sub_sequence, "
                    "partition_key, arrival_ms, reason, raw, recorded_at_us) VALUES (?,?,?,?,?,?,?,?,?)",
                    [dead_letter_values(dataset.name, d, now) for d in batch.dead_letters],
                )
            state = batch.state
            position = state.position
            db.execute(
                "INSERT INTO thyme_shards (dataset, shard, sequence, sub_sequence, watermark_us, ended, "
                "applied, dead_lettered, updated_at_us, millis_behind_latest) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (dataset, shard) DO UPDATE SET sequence = excluded.sequence, "
                "sub_sequence = excluded.sub_sequence, watermark_us = excluded.watermark_us, "
                "ended = excluded.ended, applied = applied + excluded.applied, "
                "dead_lettered = dead_lettered + excluded.dead_lettered, updated_at_us = excluded.updated_at_us, "
                "millis_behind_latest = coalesce(excluded.millis_behind_latest, millis_behind_latest)",
                (
                    dataset.name,
                    batch.shard,
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
                        "UPDATE thyme_dead_letters SET redriven_at_us = ? WHERE dataset = ? AND redriven_at_us IS NULL "
                        f"AND id IN ({','.join('?' * len(ids))}) RETURNING id",
                        (now, dataset.name, *ids),
                    )
                ]
            marked.sort()  # apply in the order the records were recorded
            if marked:
                self._insert_rows(db, dataset, [wanted[i] for i in marked])
        return len(marked)

    def _insert_rows(self, db: sqlite3.Connection, dataset: DatasetSchema, rows: Sequence[Row]) -> None:
        """Append the rows, index them in the recent tier, and merge the tier when it is full."""
        table = table_name(dataset)
        base = db.execute(f'SELECT coalesce(max(rid), 0) FROM "{table}"').fetchone()[0] + 1
        db.executemany(
            f'INSERT INTO "{table}" (rid, row) VALUES (?, ?)', [(base + i, data) for i, (_, _, data) in enumerate(rows)]
        )
        db.executemany(
            f'INSERT INTO "{table}_recent" (key, ts, rid) VALUES (?, ?, ?)',
            [(key, ts, base + i) for i, (key, ts, _) in enumerate(rows)],
        )
        (recent,) = db.execute(
            "UPDATE thyme_datasets SET recent_rows = recent_rows + ? WHERE name = ? AND version = ? "
            "RETURNING recent_rows",
            (len(rows), dataset.name, dataset.version),
        ).fetchone()
        if recent > self._merge_rows:
            self._merge_chunk(db, dataset, max(self._merge_rows // MERGE_CHUNKS, len(rows)))

    def _merge_chunk(self, db: sqlite3.Connection, dataset: DatasetSchema, chunk: int) -> None:
        """Move the next ``chunk`` recent entries after the merge cursor into main.

        The cursor sweeps the key space round and round, so every key range is merged once per
        sweep with a sweep's worth of entries (like merging the whole tier at once), while one
        transaction only dirties the pages of one contiguous key range of main: a child's
        memory stays bounded however large main grows. Read in (key, ts, rid) order, the
        entries land in main sequentially.
        """
        table = table_name(dataset)
        ident = (dataset.name, dataset.version)
        cursor = db.execute(
            "SELECT merge_key, merge_ts, merge_rid FROM thyme_datasets WHERE name = ? AND version = ?", ident
        ).fetchone()
        after, args = ("", ()) if cursor[0] is None else ("WHERE (key, ts, rid) > (?, ?, ?)", tuple(cursor))
        bound = db.execute(
            f'SELECT key, ts, rid FROM "{table}_recent" {after} ORDER BY key, ts, rid LIMIT 1 OFFSET ?',
            (*args, chunk - 1),
        ).fetchone()
        span = after.replace("WHERE", "AND") if bound is not None else after
        where = f"WHERE (key, ts, rid) <= (?, ?, ?) {span}" if bound is not None else span
        bounds = (*bound, *args) if bound is not None else args
        db.execute(
            f'INSERT INTO "{table}_main" (key, ts, rid) SELECT key, ts, rid FROM "{table}_recent" {where}', bounds
        )
        moved = db.execute(f'DELETE FROM "{table}_recent" {where}', bounds).rowcount
        next_cursor = tuple(bound) if bound is not None else (None, None, None)  # past the end: start over
        db.execute(
            "UPDATE thyme_datasets SET recent_rows = recent_rows - ?, merge_key = ?, merge_ts = ?, merge_rid = ? "
            "WHERE name = ? AND version = ?",
            (moved, *next_cursor, *ident),
        )

    def shards(self, dataset: DatasetSchema) -> list[ShardSummary]:
        rows = self._db.execute(
            "SELECT shard, sequence, sub_sequence, watermark_us, ended, applied, dead_lettered, "
            "updated_at_us, millis_behind_latest FROM thyme_shards WHERE dataset = ? ORDER BY shard",
            (dataset.name,),
        ).fetchall()
        return [
            ShardSummary(dataset.name, shard, _state(seq, sub, wm, ended), applied, dead, updated, lag)
            for shard, seq, sub, wm, ended, applied, dead, updated, lag in rows
        ]

    # -- reads ------------------------------------------------------------------------------

    def lookup(self, dataset: DatasetSchema, key: Key, at_us: int) -> str | None:
        self.ensure_dataset(dataset)
        table = table_name(dataset)
        found = self._db.execute(
            f"""SELECT r.row FROM (
                    SELECT ts, rid FROM (SELECT ts, rid FROM "{table}_recent" WHERE key = ?1 AND ts <= ?2
                                         ORDER BY ts DESC, rid DESC LIMIT 1)
                    UNION ALL
                    SELECT ts, rid FROM (SELECT ts, rid FROM "{table}_main" WHERE key = ?1 AND ts <= ?2
                                         ORDER BY ts DESC, rid DESC LIMIT 1)
                    ORDER BY ts DESC, rid DESC LIMIT 1
                ) AS best JOIN "{table}" AS r ON r.rid = best.rid""",
            (key, at_us),
        ).fetchone()
        return None if found is None else str(found[0])

    def count_rows(self, dataset: DatasetSchema) -> int:
        self.ensure_dataset(dataset)
        return int(self._db.execute(f'SELECT count(*) FROM "{table_name(dataset)}"').fetchone()[0])

    def dead_letters(
        self,
        dataset: DatasetSchema,
        reason: str | None = None,
        limit: int = 1000,
        *,
        query: DeadLetterQuery | None = None,
    ) -> list[DeadLetter]:
        where, args = dead_letter_filter(dataset, reason, query or DeadLetterQuery(), "?")
        rows = self._db.execute(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM thyme_dead_letters WHERE {where} ORDER BY id LIMIT ?", (*args, limit)
        ).fetchall()
        return [DeadLetter(s, q, ss, pk, bytes(raw), r, a, t, i, rd) for s, q, ss, pk, raw, r, a, t, i, rd in rows]

    def dead_letter_counts(self, dataset: DatasetSchema) -> dict[str, int]:
        return total_by_reason(self.dead_letter_counts_by_shard(dataset))

    def dead_letter_counts_by_shard(self, dataset: DatasetSchema) -> dict[str, dict[str, int]]:
        rows = self._db.execute(
            "SELECT shard, reason, count(*) FROM thyme_dead_letters WHERE dataset = ? AND redriven_at_us IS NULL "
            "GROUP BY shard, reason ORDER BY shard, reason",
            (dataset.name,),
        ).fetchall()
        found: dict[str, dict[str, int]] = {}
        for shard, reason, n in rows:
            found.setdefault(shard, {})[reason] = int(n)
        return found

    def close(self) -> None:
        self._db.close()


def _state(sequence: str | None, sub: int | None, watermark: int | None, ended: int) -> ShardState:
    position = None if sequence is None else Position(int(sequence), sub or 0)
    return ShardState(position=position, watermark_us=watermark, ended=bool(ended))
