"""The shared store: a PostgreSQL database, for consumers that run on more than one host.

Same semantics as the SQLite store (``thyme/store/base.py``); the layout is simpler because
PostgreSQL's btree and WAL take random-key inserts into a large index well:

* ``ds_<name>_v<version>``: the rows, ``(rid, key, ts, row)``; ``rid`` is an identity column
  (apply order: within a shard, stream order; it breaks ties between equal event times) and a
  btree on ``(key, ts, rid)`` serves lookups with one backward index probe. Text keys use the
  ``"C"`` collation (byte order: fast, and equality is what lookups need). Rows arrive by
  binary ``COPY`` (``../shared/reference/performance.md``: ~2.5 times ``executemany``).
* ``thyme_shards``: per (dataset, version, stream, shard) the last applied position, the
  watermark, counters.
* ``thyme_dead_letters``: rejected records with their raw bytes (``bytea``) and reason, per
  dataset version and stream.
* ``thyme_datasets``: the shape each dataset version holds (widened in place, see
  :func:`~thyme.dataset.compare_shapes`).
* ``thyme_schema_version``: the version of these tables, created (later: upgraded) in one
  transaction under an advisory lock, so many children starting at once do not race.

:meth:`PostgresStore.apply` is one transaction: it locks the shard's row (``SELECT … FOR
UPDATE``; the first batch of a shard inserts the row with ``ON CONFLICT DO NOTHING`` first, so
two processes racing on a new shard serialise on it too), compares the state, and writes the
rows, dead letters and new state, or nothing. Read committed isolation is enough: the row lock
orders every writer of a shard, and a statement after the lock sees the latest committed state.

Connections: from a pool (:mod:`thyme.store.pool`), one per call in progress (a connection's
transaction is its own, so threads never share one; a forked process opens its own), autocommit
(reads do not hold a snapshot open), with keepalives and a connect timeout unless the URL sets
them. A lost connection is replaced on the next call; a call whose
first statement finds the connection already dead (the server restarted in between) is retried
once on a new connection, since nothing was sent. A connection lost during ``COMMIT`` leaves
the outcome unknown to the caller, who retries from the same expected state: if the batch did
commit, that retry gets a :class:`Conflict` holding the batch's own state, and the caller skips
the records as replays, so nothing is applied twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict

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

SCHEMA_VERSION: Final = 3
"""Version of Thyme's own tables in a PostgreSQL store."""
SCHEMA_LOCK: Final = 0x7468796D65
"""``pg_advisory_xact_lock`` key ("thyme") taken while creating or upgrading tables."""
CONNECT_DEFAULTS: Final = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "application_name": "thyme",
}
"""libpq parameters used unless the store URL sets them."""
INT8_MIN: Final = -(2**63)
INT8_MAX: Final = 2**63 - 1

_CONFIG_PHRASES: Final = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",  # role or database
    "no pg_hba.conf entry",
    "permission denied",
    "server does not support ssl",
    "certificate",
)
"""Connection failures that retrying will not fix: the URL (or the server's setup) is wrong."""

_TABLES: Final = """
CREATE TABLE IF NOT EXISTS thyme_datasets (
    name TEXT NOT NULL, version INTEGER NOT NULL, schema_json TEXT NOT NULL,
    created_at_us BIGINT NOT NULL, PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS thyme_shards (
    dataset TEXT NOT NULL, version INTEGER NOT NULL, stream TEXT NOT NULL, shard TEXT NOT NULL,
    sequence TEXT, sub_sequence INTEGER, watermark_us BIGINT, ended BOOLEAN NOT NULL DEFAULT false,
    applied BIGINT NOT NULL DEFAULT 0, dead_lettered BIGINT NOT NULL DEFAULT 0,
    updated_at_us BIGINT NOT NULL, millis_behind_latest BIGINT,
    CONSTRAINT thyme_shards_pkey PRIMARY KEY (dataset, version, stream, shard)
);
CREATE TABLE IF NOT EXISTS thyme_dead_letters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, dataset TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0,
    stream TEXT NOT NULL DEFAULT '', shard TEXT NOT NULL,
    sequence TEXT NOT NULL, sub_sequence INTEGER NOT NULL, partition_key TEXT NOT NULL,
    arrival_ms BIGINT, reason TEXT NOT NULL, raw BYTEA NOT NULL, recorded_at_us BIGINT NOT NULL,
    redriven_at_us BIGINT
)
"""

_INDEXES: Final = """
CREATE INDEX IF NOT EXISTS thyme_dead_letters_by_version ON thyme_dead_letters (dataset, version, reason, id)
"""
"""Created after the upgrades (their columns may be added by one)."""

_UPGRADES: Final = {
    2: (
        "ALTER TABLE thyme_shards ADD COLUMN IF NOT EXISTS millis_behind_latest BIGINT",
        "ALTER TABLE thyme_dead_letters ADD COLUMN IF NOT EXISTS redriven_at_us BIGINT",
    ),
    # Shard state and dead letters per dataset version and stream; what was there before becomes
    # legacy state (version 0, stream ''), adopted by the dataset's first feed (ensure_feed).
    3: (
        "ALTER TABLE thyme_shards ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 0, "
        "ADD COLUMN IF NOT EXISTS stream TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE thyme_shards DROP CONSTRAINT IF EXISTS thyme_shards_pkey",
        "ALTER TABLE thyme_shards ADD CONSTRAINT thyme_shards_pkey PRIMARY KEY (dataset, version, stream, shard)",
        "ALTER TABLE thyme_dead_letters ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 0, "
        "ADD COLUMN IF NOT EXISTS stream TEXT NOT NULL DEFAULT ''",
        "DROP INDEX IF EXISTS thyme_dead_letters_by_reason",
    ),
}
"""Statements that bring the tables from the version before to the key's version (idempotent)."""
LEGACY_VERSION: Final = 0

_SHARD_COLUMNS: Final = "sequence, sub_sequence, watermark_us, ended"
_SHARD_KEY: Final = "dataset = %s AND version = %s AND stream = %s AND shard = %s"
_DEAD_LETTER_COPY: Final = (
    "COPY thyme_dead_letters (dataset, version, stream, shard, sequence, sub_sequence, partition_key, arrival_ms, "
    "reason, raw, recorded_at_us) FROM STDIN (FORMAT BINARY)"
)
_DEAD_LETTER_TYPES: Final = ["text", "int4", "text", "text", "text", "int4", "text", "int8", "text", "bytea", "int8"]

Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")


def _text_safe(letter: DeadLetter) -> DeadLetter:
    """PostgreSQL text cannot hold U+0000, which a Kinesis partition key may contain."""
    if "\x00" not in letter.partition_key:
        return letter
    return dataclasses.replace(letter, partition_key=letter.partition_key.replace("\x00", "\ufffd"))


def _now_us() -> int:
    return time.time_ns() // 1000


def _identifier(base: str, suffix: str = "") -> str:
    """``base + suffix``, shortened with a hash if longer than PostgreSQL's 63-byte names."""
    name = base + suffix
    if len(name) <= 63:
        return name
    digest = hashlib.sha1(base.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{base[: 63 - len(suffix) - 9]}_{digest}{suffix}"


def table_name(dataset: DatasetSchema) -> str:
    """The rows table of a dataset version (the name is validated by ``@dataset``)."""
    return _identifier(f"ds_{dataset.name}_v{dataset.version}")


@dataclass(frozen=True)
class _DatasetSQL:
    key_type: str
    """``text`` or ``int8``: the binary COPY type of the key column."""
    create: sql.Composed
    index: sql.Composed
    copy: sql.Composed
    lookup: sql.Composed
    count: sql.Composed

    @classmethod
    def of(cls, dataset: DatasetSchema) -> _DatasetSQL:
        base = table_name(dataset)
        table = sql.Identifier(base)
        is_int = dataset.key_field.type.kind == "int"
        key_type = "int8" if is_int else "text"
        column = sql.SQL("BIGINT" if is_int else 'TEXT COLLATE "C"')
        cast = sql.SQL(key_type)
        return cls(
            key_type=key_type,
            create=sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (rid BIGINT GENERATED ALWAYS AS IDENTITY, key {} NOT NULL, "
                "ts BIGINT NOT NULL, row TEXT NOT NULL)"
            ).format(table, column),
            index=sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (key, ts, rid)").format(
                sql.Identifier(_identifier(base, "_key_ts")), table
            ),
            copy=sql.SQL("COPY {} (key, ts, row) FROM STDIN (FORMAT BINARY)").format(table),
            lookup=sql.SQL(
                "SELECT (SELECT row FROM {} WHERE key = k.key AND ts <= %s::int8 ORDER BY ts DESC, rid DESC LIMIT 1) "
                "FROM unnest(%s::{}[]) WITH ORDINALITY AS k(key, n) ORDER BY k.n"
            ).format(table, cast),
            count=sql.SQL("SELECT count(*) FROM {}").format(table),
        )


class PostgresStore:
    """The PostgreSQL store. Safe for many processes and hosts; one instance per process."""

    def __init__(self, url: str, create_tables: bool = True) -> None:
        """Connect; with ``create_tables`` (the default), create Thyme's tables if they are missing.
        ``create_tables=False`` only connects (``thyme store migrate --print`` changes nothing)."""
        from thyme.store import redact_url

        self.url = redact_url(url)
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreConfigError("store URL", self._scrub(exc, url), value=self.url) from None
        self._secret = str(given.get("password") or "")
        self._params: dict[str, Any] = {**CONNECT_DEFAULTS, **given}
        self._known: set[DatasetSchema] = set()
        """Dataset shapes this process has checked against the store (and created or widened)."""
        self._feeds: set[Feed] = set()
        self._sql: dict[tuple[str, int], _DatasetSQL] = {}
        self._pool: ConnectionPool[Conn] = ConnectionPool(self._connect, _close)
        self._thread = _ThreadState()
        try:
            self._run(self._ensure_tables if create_tables else lambda conn: None, what="open")
        except BaseException as exc:
            self._pool.close()
            if not isinstance(exc, errors.InsufficientPrivilege):
                raise
            raise StoreConfigError(
                "store URL",
                f"the user cannot create or upgrade Thyme's tables ({self._scrub(exc)})",
                "Grant it CREATE on the schema (PostgreSQL 15+: GRANT CREATE ON SCHEMA public TO the user), "
                "or have an admin run the script `thyme store migrate MODULE:DATASET --print` prints.",
                value=self.url,
            ) from None

    # -- connection and errors ------------------------------------------------------------

    def _connect(self) -> Conn:
        try:
            conn: Conn = psycopg.connect(autocommit=True, **self._params)
        except psycopg.Error as exc:
            text = self._scrub(exc)
            lowered = text.lower()
            if isinstance(exc, psycopg.ProgrammingError) or any(p in lowered for p in _CONFIG_PHRASES):
                raise StoreConfigError(
                    "store URL",
                    f"PostgreSQL refused the connection: {text}",
                    "Check the user, password, host and database in the store URL.",
                    value=self.url,
                ) from None
            raise StoreUnavailableError(f"PostgreSQL store {self.url}: cannot connect ({text})") from None
        return conn

    def _scrub(self, exc: BaseException, url: str | None = None) -> str:
        """The error's message on one line, without the password (libpq never prints it; belt and braces)."""
        primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
        text = " ".join((primary or str(exc)).split())
        if text.startswith("connection failed: ") and "FATAL:" in text:
            text = text.rsplit("FATAL:", 1)[1].strip()
        for secret in (getattr(self, "_secret", ""), url or ""):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _run(self, work: Callable[[Conn], T], what: str) -> T:
        """``work`` on a live connection, with errors mapped (see :meth:`_unavailable`).

        If a reused connection turns out to be dead before ``work`` got anything done (``begun``
        still False: the server restarted since its last use), it is retried once on a new one.
        """
        mine = self._thread
        for attempt in (1, 2):
            conn, fresh = self._pool.take()
            mine.begun = False
            try:
                result = work(conn)
            except psycopg.Error as exc:
                if not (conn.broken or conn.closed):
                    self._pool.give(conn)
                    raise self._unavailable(exc, conn, what) from exc
                self._pool.discard(conn)
                if attempt == 1 and not fresh and not mine.begun:
                    continue
                raise self._unavailable(exc, conn, what) from exc
            except BaseException:
                self._pool.give(conn)  # a result carried by an exception; the transaction was rolled back
                raise
            self._pool.give(conn)
            return result
        raise AssertionError("unreachable")

    def _unavailable(self, exc: psycopg.Error, conn: Conn, what: str) -> StoreUnavailableError:
        """A transient condition (connection lost or refused, server shutting down, disk full,
        serialization failure, deadlock) as :class:`StoreUnavailableError`.

        Anything else (a constraint, a malformed statement, a bad value) is a bug, not an outage:
        it is re-raised as it is, so that the child exits instead of retrying it for minutes.
        """
        transient = isinstance(exc, psycopg.OperationalError | errors.TransactionRollback) or conn.broken or conn.closed
        if not transient:
            raise exc
        return StoreUnavailableError(f"PostgreSQL store {self.url}: {what} failed ({self._scrub(exc)})")

    # -- tables -----------------------------------------------------------------------------

    def _ensure_tables(self, conn: Conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._thread.begun = True
            # No DDL when the tables exist: a consumer whose user may only read and write (the
            # tables created by `thyme store migrate` under an admin user) starts as well.
            (exists,) = conn.execute("SELECT to_regclass('thyme_schema_version') IS NOT NULL").fetchone() or (False,)
            version = None
            if exists:
                found = conn.execute("SELECT max(version) FROM thyme_schema_version").fetchone()
                version = None if found is None else found[0]
            else:
                conn.execute("CREATE TABLE IF NOT EXISTS thyme_schema_version (version INTEGER NOT NULL)")
            if version is None or version < SCHEMA_VERSION:
                if version is None:
                    statements = _statements(_TABLES)
                else:
                    statements = [s for step in range(version + 1, SCHEMA_VERSION + 1) for s in _UPGRADES[step]]
                for statement in statements + _statements(_INDEXES):
                    conn.execute(statement)
                conn.execute("INSERT INTO thyme_schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif version > SCHEMA_VERSION:
                raise StoreConfigError(
                    "store URL",
                    f"the store's tables are at version {version}, newer than this Thyme's ({SCHEMA_VERSION})",
                    "Upgrade thyme-kinesis on this host.",
                    value=self.url,
                )

    def migration_script(self, datasets: Sequence[DatasetSchema]) -> str:
        """The SQL that creates Thyme's tables (at :data:`SCHEMA_VERSION`) and the given datasets'
        tables, for a DBA to review and run (``thyme store migrate --print``). Idempotent: it can
        be run on a store that has them. Consumers then only need to read and write."""

        def work(conn: Conn) -> str:
            statements = ["CREATE TABLE IF NOT EXISTS thyme_schema_version (version INTEGER NOT NULL)"]
            statements += _statements(_TABLES)
            statements += [s for step in sorted(_UPGRADES) for s in _UPGRADES[step]]  # tables made by older versions
            statements += _statements(_INDEXES)
            statements.append(
                f"INSERT INTO thyme_schema_version (version) SELECT {SCHEMA_VERSION} "
                f"WHERE NOT EXISTS (SELECT FROM thyme_schema_version WHERE version >= {SCHEMA_VERSION})"
            )
            for dataset in datasets:
                parts = self._dataset_sql(dataset)
                statements.append(
                    sql.SQL(
                        "INSERT INTO thyme_datasets (name, version, schema_json, created_at_us) "
                        "VALUES ({}, {}, {}, {}) ON CONFLICT (name, version) DO NOTHING"
                    )
                    .format(
                        sql.Literal(dataset.name),
                        sql.Literal(dataset.version),
                        sql.Literal(dataset.model_dump_json()),
                        sql.Literal(_now_us()),
                    )
                    .as_string(conn)
                )
                statements += [parts.create.as_string(conn), parts.index.as_string(conn)]
            return "BEGIN;\n" + ";\n".join(statements) + ";\nCOMMIT;\n"

        return self._run(work, what="rendering the migration")

    def _dataset_sql(self, dataset: DatasetSchema) -> _DatasetSQL:
        ident = (dataset.name, dataset.version)
        found = self._sql.get(ident)
        if found is None:
            found = self._sql[ident] = _DatasetSQL.of(dataset)
        return found

    def ensure_dataset(self, schema: DatasetSchema) -> None:
        ident = (schema.name, schema.version)
        if schema in self._known:
            return
        wanted = schema.model_dump_json()
        statements = self._dataset_sql(schema)

        def work(conn: Conn) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                self._thread.begun = True
                found = conn.execute(
                    "SELECT schema_json FROM thyme_datasets WHERE name = %s AND version = %s", ident
                ).fetchone()
                if found is None:
                    conn.execute(
                        "INSERT INTO thyme_datasets (name, version, schema_json, created_at_us) "
                        "VALUES (%s, %s, %s, %s)",
                        (*ident, wanted, _now_us()),
                    )
                    conn.execute(statements.create)
                    conn.execute(statements.index)
                elif shape_against_stored(found[0], schema, self.url):
                    conn.execute(
                        "UPDATE thyme_datasets SET schema_json = %s WHERE name = %s AND version = %s", (wanted, *ident)
                    )

        self._run(work, what="creating the dataset's tables")
        self._known.add(schema)

    def ensure_feed(self, feed: Feed) -> None:
        self.ensure_dataset(feed.dataset)
        if feed in self._feeds:
            return
        name, version = feed.dataset.name, feed.dataset.version

        def work(conn: Conn) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                self._thread.begun = True
                legacy = conn.execute(
                    "SELECT 1 FROM thyme_shards WHERE dataset = %s AND version = %s LIMIT 1", (name, LEGACY_VERSION)
                ).fetchone()
                mine = conn.execute(
                    "SELECT 1 FROM thyme_shards WHERE dataset = %s AND version = %s AND stream = %s LIMIT 1",
                    (name, version, feed.stream),
                ).fetchone()
                if legacy and not mine:
                    conn.execute(
                        "UPDATE thyme_shards SET version = %s, stream = %s WHERE dataset = %s AND version = %s",
                        (version, feed.stream, name, LEGACY_VERSION),
                    )
                conn.execute(
                    "UPDATE thyme_dead_letters SET version = %s, stream = %s WHERE dataset = %s AND version = %s",
                    (version, feed.stream, name, LEGACY_VERSION),
                )

        self._run(work, what="adopting the shard state of an earlier release")
        self._feeds.add(feed)

    # -- shards -----------------------------------------------------------------------------

    def shard_state(self, feed: Feed, shard: str) -> ShardState | None:
        def work(conn: Conn) -> ShardState | None:
            found = conn.execute(
                f"SELECT {_SHARD_COLUMNS} FROM thyme_shards WHERE {_SHARD_KEY}", _shard_key(feed, shard)
            ).fetchone()
            return None if found is None else _state(*found)

        return self._run(work, what="reading the shard state")

    def apply(self, feed: Feed, batch: Batch, expect: ShardState | None) -> Conflict | None:
        dataset = feed.dataset
        self.ensure_dataset(dataset)
        statements = self._dataset_sql(dataset)
        ident = _shard_key(feed, batch.shard)
        lock = f"SELECT {_SHARD_COLUMNS} FROM thyme_shards WHERE {_SHARD_KEY} FOR UPDATE"

        def work(conn: Conn) -> Conflict | None:
            now = _now_us()
            with conn.transaction():
                found = conn.execute(lock, ident).fetchone()
                self._thread.begun = True
                if found is None:
                    # A new shard: insert a placeholder row to lock; a racing first batch waits on
                    # it, then finds the winner's committed row (or inserts its own if we roll back).
                    inserted = conn.execute(
                        "INSERT INTO thyme_shards (dataset, version, stream, shard, updated_at_us) VALUES "
                        "(%s, %s, %s, %s, %s) ON CONFLICT (dataset, version, stream, shard) DO NOTHING RETURNING 1",
                        (*ident, now),
                    ).fetchone()
                    if inserted is None:
                        found = conn.execute(lock, ident).fetchone()
                current = None if found is None else _state(*found)
                if current != expect:
                    raise _RollbackWith(Conflict(current))
                cur = conn.cursor()
                if batch.rows:
                    with cur.copy(statements.copy) as copy:
                        copy.set_types([statements.key_type, "int8", "text"])
                        for row in batch.rows:
                            copy.write_row(row)
                if batch.dead_letters:
                    with cur.copy(_DEAD_LETTER_COPY) as copy:
                        copy.set_types(_DEAD_LETTER_TYPES)
                        for d in batch.dead_letters:
                            copy.write_row(dead_letter_values(feed, _text_safe(d), now))
                state = batch.state
                position = state.position
                conn.execute(
                    "UPDATE thyme_shards SET sequence = %s, sub_sequence = %s, watermark_us = %s, ended = %s, "
                    "applied = applied + %s, dead_lettered = dead_lettered + %s, updated_at_us = %s, "
                    f"millis_behind_latest = coalesce(%s, millis_behind_latest) WHERE {_SHARD_KEY}",
                    (
                        None if position is None else str(position.sequence),
                        None if position is None else position.sub_sequence,
                        state.watermark_us,
                        state.ended,
                        len(batch.rows),
                        len(batch.dead_letters),
                        now,
                        batch.millis_behind_latest,
                        *ident,
                    ),
                )
            return None

        try:
            return self._run(work, what="applying a batch")
        except _RollbackWith as conflict:
            return conflict.conflict

    def shards(self, feed: Feed) -> list[ShardSummary]:
        def work(conn: Conn) -> list[ShardSummary]:
            rows = conn.execute(
                f"SELECT shard, {_SHARD_COLUMNS}, applied, dead_lettered, updated_at_us, millis_behind_latest "
                "FROM thyme_shards WHERE dataset = %s AND version = %s AND stream = %s ORDER BY shard",
                (feed.dataset.name, feed.dataset.version, feed.stream),
            ).fetchall()
            return [
                ShardSummary(feed.dataset.name, shard, _state(seq, sub, wm, ended), applied, dead, updated, lag)
                for shard, seq, sub, wm, ended, applied, dead, updated, lag in rows
            ]

        return self._run(work, what="reading the shards")

    # -- reads ------------------------------------------------------------------------------

    def lookup(self, dataset: DatasetSchema, key: Key, at_us: int) -> str | None:
        return self.lookup_many(dataset, (key,), at_us)[0]

    def lookup_many(self, dataset: DatasetSchema, keys: Sequence[Key], at_us: int) -> list[str | None]:
        statements = self._dataset_sql(dataset)
        wanted: list[Key | None] = list(keys)
        if statements.key_type == "int8":  # a key outside int8 cannot have been stored: NULL finds nothing
            wanted = [k if isinstance(k, int) and INT8_MIN <= k <= INT8_MAX else None for k in keys]

        def work(conn: Conn) -> list[str | None]:
            if not self._readable(conn, dataset):
                return [None] * len(wanted)
            return [None if row is None else str(row) for (row,) in conn.execute(statements.lookup, (at_us, wanted))]

        return self._run(work, what="lookup")

    def _readable(self, conn: Conn, dataset: DatasetSchema) -> bool:
        """Whether the dataset version has tables to read; raises if its stored shape cannot be
        read as ``dataset`` (never writes: a lookup does not create or widen anything)."""
        ident = (dataset.name, dataset.version)
        if dataset in self._known:
            return True
        found = conn.execute("SELECT schema_json FROM thyme_datasets WHERE name = %s AND version = %s", ident)
        stored = found.fetchone()
        if stored is None:
            return False
        shape_against_stored(stored[0], dataset, self.url)
        return True

    def count_rows(self, dataset: DatasetSchema) -> int:
        statements = self._dataset_sql(dataset)

        def work(conn: Conn) -> int:
            if not self._readable(conn, dataset):
                return 0
            found = conn.execute(statements.count).fetchone()
            return 0 if found is None else int(found[0])

        return self._run(work, what="counting rows")

    def dead_letters(
        self,
        dataset: DatasetSchema,
        reason: str | None = None,
        limit: int = 1000,
        *,
        query: DeadLetterQuery | None = None,
    ) -> list[DeadLetter]:
        where, args = dead_letter_filter(dataset, reason, query or DeadLetterQuery(), "%s")
        select = f"SELECT {DEAD_LETTER_COLUMNS} FROM thyme_dead_letters WHERE {where} ORDER BY id LIMIT %s"

        def work(conn: Conn) -> list[DeadLetter]:
            return [dead_letter(row) for row in conn.execute(select, (*args, limit)).fetchall()]

        return self._run(work, what="reading dead letters")

    def dead_letter_counts(self, dataset: DatasetSchema) -> dict[str, int]:
        def work(conn: Conn) -> dict[str, int]:
            rows = conn.execute(
                "SELECT reason, count(*) FROM thyme_dead_letters WHERE dataset = %s AND version = %s "
                "AND redriven_at_us IS NULL GROUP BY reason ORDER BY reason",
                (dataset.name, dataset.version),
            ).fetchall()
            return {reason: int(n) for reason, n in rows}

        return self._run(work, what="counting dead letters")

    def dead_letter_counts_by_shard(self, feed: Feed) -> dict[str, dict[str, int]]:
        def work(conn: Conn) -> dict[str, dict[str, int]]:
            rows = conn.execute(
                "SELECT shard, reason, count(*) FROM thyme_dead_letters WHERE dataset = %s AND version = %s "
                "AND stream = %s AND redriven_at_us IS NULL GROUP BY shard, reason ORDER BY shard, reason",
                (feed.dataset.name, feed.dataset.version, feed.stream),
            ).fetchall()
            found: dict[str, dict[str, int]] = {}
            for shard, reason, n in rows:
                found.setdefault(shard, {})[reason] = int(n)
            return found

        return self._run(work, what="counting dead letters")

    def redrive(self, dataset: DatasetSchema, fixes: Sequence[tuple[int, Row]]) -> int:
        if not fixes:
            return 0
        self.ensure_dataset(dataset)
        statements = self._dataset_sql(dataset)
        wanted = dict(fixes)

        def work(conn: Conn) -> int:
            with conn.transaction():
                self._thread.begun = True
                marked = sorted(
                    r[0]
                    for r in conn.execute(
                        "UPDATE thyme_dead_letters SET redriven_at_us = %s WHERE dataset = %s AND version = %s "
                        "AND redriven_at_us IS NULL AND id = ANY(%s) RETURNING id",
                        (_now_us(), dataset.name, dataset.version, list(wanted)),
                    ).fetchall()
                )
                if marked:
                    with conn.cursor().copy(statements.copy) as copy:
                        copy.set_types([statements.key_type, "int8", "text"])
                        for i in marked:
                            copy.write_row(wanted[i])
            return len(marked)

        return self._run(work, what="re-driving dead letters")

    def close(self) -> None:
        self._pool.close()


class _ThreadState(threading.local):
    """Whether the thread's current work got past its first statement (then it is not retried)."""

    begun: bool = False


def _close(conn: Conn) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.close()


class _RollbackWith(Exception):  # noqa: N818 - control flow, never escapes this module
    """Raised inside :meth:`PostgresStore.apply`'s transaction to roll it back with a result."""

    def __init__(self, conflict: Conflict) -> None:
        super().__init__("conflict")
        self.conflict = conflict


def _statements(script: str) -> list[str]:
    return [" ".join(s.split()) for s in script.split(";") if s.strip()]


def _shard_key(feed: Feed, shard: str) -> tuple[str, int, str, str]:
    return (feed.dataset.name, feed.dataset.version, feed.stream, shard)


def _state(sequence: str | None, sub: int | None, watermark: int | None, ended: bool) -> ShardState:
    position = None if sequence is None else Position(int(sequence), sub or 0)
    return ShardState(position=position, watermark_us=watermark, ended=bool(ended))
