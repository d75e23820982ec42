"""The shared store: a PostgreSQL database, for consumers that run on more than one host.

Same semantics as the SQLite store (``thyme/store/base.py``); the layout is simpler because
PostgreSQL's btree and WAL take random-key inserts into a large index well:

* ``ds_<name>_v<version>``: the rows, with a btree on ``(key, ts, rid)`` (the layout, the
  schema version and its upgrades are in :mod:`thyme.store.postgres_schema`). Rows arrive by
  binary ``COPY`` (~2.5 times ``executemany``).
* ``thyme_shards``: per (dataset, version, stream, shard) the last applied position, the
  watermark, counters.
* ``thyme_dead_letters``: rejected records with their raw bytes (``bytea``) and reason, per
  dataset version and stream.
* ``thyme_datasets``: the shape each dataset version holds (widened in place, see
  :func:`~thyme.schema.compare_shapes`).
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
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from thyme.errors import StoreConfigError, StoreUnavailableError
from thyme.schema import DatasetSchema, SchemaSet
from thyme.store import common, postgres_schema
from thyme.store.base import Batch, Conflict, DeadLetter, DeadLetterQuery, Feed, Key, Row, ShardState, ShardSummary
from thyme.store.common import Statements
from thyme.store.pool import ConnectionPool
from thyme.store.postgres_schema import SCHEMA_LOCK, SCHEMA_VERSION, Conn, DatasetSQL, table_name
from thyme.store.url import redact_url

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

SQL: Final = Statements.with_mark("%s")
_DEAD_LETTER_COPY: Final = f"COPY thyme_dead_letters ({common.DEAD_LETTER_INSERT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_DEAD_LETTER_TYPES: Final = [
    "text",
    "int4",
    "text",
    "text",
    "text",
    "int4",
    "text",
    "int8",
    "text",
    "bytea",
    "int8",
    "text",
]
_LOCK_STATE: Final = f"{SQL.select_state} FOR UPDATE"
_SHARD_KEY: Final = common.SHARD_KEY.replace("?", "%s")
T = TypeVar("T")

__all__ = ["SCHEMA_VERSION", "PostgresStore", "table_name"]


def _text_safe(letter: DeadLetter) -> DeadLetter:
    """PostgreSQL text cannot hold U+0000, which a Kinesis partition key may contain."""
    if "\x00" not in letter.partition_key:
        return letter
    return dataclasses.replace(letter, partition_key=letter.partition_key.replace("\x00", "\ufffd"))


class PostgresStore:
    """The PostgreSQL store. Safe for many processes and hosts; one instance per process."""

    def __init__(self, url: str, create_tables: bool = True) -> None:
        """Connect; with ``create_tables`` (the default), create Thyme's tables if they are missing
        or upgrade older ones; without, require them as they are (a read-only command)."""
        self.url = redact_url(url)
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreConfigError("store URL", self._scrub(exc, url), value=self.url) from None
        self._secret = str(given.get("password") or "")
        self._params: dict[str, Any] = {**CONNECT_DEFAULTS, **given}
        self._known = SchemaSet()
        """Dataset shapes this process has checked against the store (and created or widened)."""
        self._read_known = SchemaSet()
        """Dataset shapes this process found readable or recorded (lookups never record or widen one)."""
        self._feeds: set[Feed] = set()
        self._sql: dict[tuple[str, int], DatasetSQL] = {}
        self._pool: ConnectionPool[Conn] = ConnectionPool(self._connect, _close)
        self._thread = _ThreadState()
        try:
            self._run(
                self._ensure_tables if create_tables else lambda conn: postgres_schema.check_current(conn, self.url),
                what="open",
            )
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

    # -- tables, datasets and feeds -------------------------------------------------------------

    def _locked(self, conn: Conn) -> None:
        """In a transaction: wait for the schema lock (creating or upgrading tables, recording
        shapes: one process at a time, so many children starting at once do not race)."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        self._thread.begun = True

    def _ensure_tables(self, conn: Conn) -> None:
        with conn.transaction():
            self._locked(conn)
            postgres_schema.bring_up_to_date(conn, self.url)

    def _dataset_sql(self, dataset: DatasetSchema) -> DatasetSQL:
        ident = (dataset.name, dataset.version)
        found = self._sql.get(ident)
        if found is None:
            found = self._sql[ident] = DatasetSQL.of(dataset)
        return found

    def ensure_dataset(self, schema: DatasetSchema) -> None:
        if schema in self._known:
            return
        statements = self._dataset_sql(schema)

        def work(conn: Conn) -> None:
            with conn.transaction():
                self._locked(conn)
                if common.register_shape(conn.execute, SQL, schema, self.url):
                    conn.execute(statements.create)
                    conn.execute(statements.index)

        self._run(work, what="creating the dataset's tables")
        self._known.add(schema)
        self._read_known.add(schema)

    def ensure_feed(self, feed: Feed) -> None:
        self.ensure_dataset(feed.dataset)
        if feed in self._feeds:
            return

        def work(conn: Conn) -> None:
            with conn.transaction():
                self._locked(conn)
                common.adopt_legacy(conn.execute, SQL, feed)

        self._run(work, what="adopting the shard state of an earlier release")
        self._feeds.add(feed)

    # -- shards -----------------------------------------------------------------------------

    def shard_state(self, feed: Feed, shard: str) -> ShardState | None:
        def work(conn: Conn) -> ShardState | None:
            found = conn.execute(SQL.select_state, common.shard_key(feed, shard)).fetchone()
            return None if found is None else common.shard_state(*found)

        return self._run(work, what="reading the shard state")

    def apply(self, feed: Feed, batch: Batch, expect: ShardState | None) -> Conflict | None:
        dataset = feed.dataset
        self.ensure_dataset(dataset)
        statements = self._dataset_sql(dataset)
        ident = common.shard_key(feed, batch.shard)

        def work(conn: Conn) -> Conflict | None:
            now = common.now_us()
            with conn.transaction():
                found = conn.execute(_LOCK_STATE, ident).fetchone()
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
                        found = conn.execute(_LOCK_STATE, ident).fetchone()
                current = None if found is None else common.shard_state(*found)
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
                            copy.write_row(common.dead_letter_values(feed, _text_safe(d), now))
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
            key = (feed.dataset.name, feed.dataset.version, feed.stream)
            return common.shard_summaries(feed, conn.execute(SQL.select_shards, key).fetchall())

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
        return common.readable(conn.execute, SQL, dataset, self.url, self._read_known)

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
        where, args = SQL.dead_letter_filter(dataset, reason, query or DeadLetterQuery())
        select = f"SELECT {common.DEAD_LETTER_COLUMNS} FROM thyme_dead_letters WHERE {where} ORDER BY id LIMIT %s"

        def work(conn: Conn) -> list[DeadLetter]:
            return [common.dead_letter(row) for row in conn.execute(select, (*args, limit)).fetchall()]

        return self._run(work, what="reading dead letters")

    def dead_letter_counts(self, dataset: DatasetSchema) -> dict[str, int]:
        def work(conn: Conn) -> dict[str, int]:
            rows = conn.execute(SQL.dead_letter_counts, (dataset.name, dataset.version)).fetchall()
            return {reason: int(n) for reason, n in rows}

        return self._run(work, what="counting dead letters")

    def dead_letter_counts_by_shard(self, feed: Feed) -> dict[str, dict[str, int]]:
        def work(conn: Conn) -> dict[str, dict[str, int]]:
            key = (feed.dataset.name, feed.dataset.version, feed.stream)
            return common.counts_by_shard(conn.execute(SQL.dead_letter_counts_by_shard, key).fetchall())

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
                        (common.now_us(), dataset.name, dataset.version, list(wanted)),
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
