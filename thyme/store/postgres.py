"""The shared store: a PostgreSQL database, for consumers that run on more than one host.

Same semantics as the SQLite store (``thyme/store/base.py``); the layout is simpler because
PostgreSQL's btree and WAL take random-key inserts into a large index well:

* ``ds_<name>_v<version>``: the rows, ``(rid, key, ts, row)``; ``rid`` is an identity column
  (apply order: within a shard, stream order; it breaks ties between equal event times) and a
  btree on ``(key, ts, rid)`` serves lookups with one backward index probe. Text keys use the
  ``"C"`` collation (byte order: fast, and equality is what lookups need). Rows arrive by
  binary ``COPY`` (``../shared/reference/performance.md``: ~2.5 times ``executemany``).
* ``thyme_shards``: per (dataset, shard) the last applied position, the watermark, counters.
* ``thyme_dead_letters``: rejected records with their raw bytes (``bytea``) and reason.
* ``thyme_datasets``: the schema each dataset version was created with.
* ``thyme_schema_version``: the version of these tables, created (later: upgraded) in one
  transaction under an advisory lock, so many children starting at once do not race.

:meth:`PostgresStore.apply` is one transaction: it locks the shard's row (``SELECT … FOR
UPDATE``; the first batch of a shard inserts the row with ``ON CONFLICT DO NOTHING`` first, so
two processes racing on a new shard serialise on it too), compares the state, and writes the
rows, dead letters and new state, or nothing. Read committed isolation is enough: the row lock
orders every writer of a shard, and a statement after the lock sees the latest committed state.

Connection: autocommit (reads do not hold a snapshot open), with keepalives and a connect
timeout unless the URL sets them. A lost connection is replaced on the next call; a call whose
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict

from thyme.dataset import DatasetSchema
from thyme.errors import SchemaChangedError, StoreConfigError, StoreUnavailableError
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

SCHEMA_VERSION: Final = 2
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
    dataset TEXT NOT NULL, shard TEXT NOT NULL,
    sequence TEXT, sub_sequence INTEGER, watermark_us BIGINT, ended BOOLEAN NOT NULL DEFAULT false,
    applied BIGINT NOT NULL DEFAULT 0, dead_lettered BIGINT NOT NULL DEFAULT 0,
    updated_at_us BIGINT NOT NULL, millis_behind_latest BIGINT, PRIMARY KEY (dataset, shard)
);
CREATE TABLE IF NOT EXISTS thyme_dead_letters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, dataset TEXT NOT NULL, shard TEXT NOT NULL,
    sequence TEXT NOT NULL, sub_sequence INTEGER NOT NULL, partition_key TEXT NOT NULL,
    arrival_ms BIGINT, reason TEXT NOT NULL, raw BYTEA NOT NULL, recorded_at_us BIGINT NOT NULL,
    redriven_at_us BIGINT
);
CREATE INDEX IF NOT EXISTS thyme_dead_letters_by_reason ON thyme_dead_letters (dataset, reason, id)
"""

_UPGRADES: Final = {
    2: (
        "ALTER TABLE thyme_shards ADD COLUMN IF NOT EXISTS millis_behind_latest BIGINT",
        "ALTER TABLE thyme_dead_letters ADD COLUMN IF NOT EXISTS redriven_at_us BIGINT",
    ),
}
"""Statements that bring the tables from the version before to the key's version (idempotent)."""

_SHARD_COLUMNS: Final = "sequence, sub_sequence, watermark_us, ended"
_DEAD_LETTER_COPY: Final = (
    "COPY thyme_dead_letters (dataset, shard, sequence, sub_sequence, partition_key, arrival_ms, reason, raw, "
    "recorded_at_us) FROM STDIN (FORMAT BINARY)"
)
_DEAD_LETTER_TYPES: Final = ["text", "text", "text", "int4", "text", "int8", "text", "bytea", "int8"]

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
                "SELECT row FROM {} WHERE key = %s::{} AND ts <= %s::int8 ORDER BY ts DESC, rid DESC LIMIT 1"
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
        self._conn: Conn | None = None
        self._known: set[tuple[str, int]] = set()
        self._sql: dict[tuple[str, int], _DatasetSQL] = {}
        self._begun = False
        try:
            self._run(self._ensure_tables if create_tables else lambda conn: None, what="open")
        except BaseException as exc:
            self._drop()
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

        If the connection turns out to be dead before ``work`` got anything done (``self._begun``
        still False: the server restarted since the last call), it is retried once on a new one.
        """
        for attempt in (1, 2):
            fresh = self._conn is None
            conn = self._conn = self._conn if self._conn is not None else self._connect()
            self._begun = False
            try:
                return work(conn)
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    self._drop()
                    if attempt == 1 and not fresh and not self._begun:
                        continue
                raise self._unavailable(exc, conn, what) from exc
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

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # -- tables -----------------------------------------------------------------------------

    def _ensure_tables(self, conn: Conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._begun = True
            # No DDL when the tables exist: a consumer whose user may only read and write (the
            # tables created by `thyme store migrate` under an admin user) starts as well.
            (exists,) = conn.execute("SELECT to_regclass('thyme_schema_version') IS NOT NULL").fetchone() or (False,)
            version = None
            if exists:
                found = conn.execute("SELECT max(version) FROM thyme_schema_version").fetchone()
                version = None if found is None else found[0]
            else:
                conn.execute("CREATE TABLE IF NOT EXISTS thyme_schema_version (version INTEGER NOT NULL)")
            if version is None:
                for statement in _TABLES.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO thyme_schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _UPGRADES[step]:
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
            statements += [" ".join(s.split()) for s in _TABLES.split(";") if s.strip()]
            statements += [s for step in sorted(_UPGRADES) for s in _UPGRADES[step]]  # tables made by older versions
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
        if ident in self._known:
            return
        wanted = schema.model_dump_json()
        statements = self._dataset_sql(schema)

        def work(conn: Conn) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                self._begun = True
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
                elif DatasetSchema.model_validate_json(found[0]) != schema:
                    raise SchemaChangedError(
                        f"dataset {schema.name} version {schema.version}: its fields differ from the ones "
                        f"the store {self.url} holds for that version. Increase the version "
                        f"(@dataset(version={schema.version + 1})) to store the new fields separately."
                    )

        self._run(work, what="creating the dataset's tables")
        self._known.add(ident)

    # -- shards -----------------------------------------------------------------------------

    def shard_state(self, dataset: DatasetSchema, shard: str) -> ShardState | None:
        def work(conn: Conn) -> ShardState | None:
            found = conn.execute(
                f"SELECT {_SHARD_COLUMNS} FROM thyme_shards WHERE dataset = %s AND shard = %s", (dataset.name, shard)
            ).fetchone()
            return None if found is None else _state(*found)

        return self._run(work, what="reading the shard state")

    def apply(self, dataset: DatasetSchema, batch: Batch, expect: ShardState | None) -> Conflict | None:
        self.ensure_dataset(dataset)
        statements = self._dataset_sql(dataset)
        ident = (dataset.name, batch.shard)
        lock = f"SELECT {_SHARD_COLUMNS} FROM thyme_shards WHERE dataset = %s AND shard = %s FOR UPDATE"

        def work(conn: Conn) -> Conflict | None:
            now = _now_us()
            with conn.transaction():
                found = conn.execute(lock, ident).fetchone()
                self._begun = True
                if found is None:
                    # A new shard: insert a placeholder row to lock; a racing first batch waits on
                    # it, then finds the winner's committed row (or inserts its own if we roll back).
                    inserted = conn.execute(
                        "INSERT INTO thyme_shards (dataset, shard, updated_at_us) VALUES (%s, %s, %s) "
                        "ON CONFLICT (dataset, shard) DO NOTHING RETURNING 1",
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
                            copy.write_row(dead_letter_values(dataset.name, _text_safe(d), now))
                state = batch.state
                position = state.position
                conn.execute(
                    "UPDATE thyme_shards SET sequence = %s, sub_sequence = %s, watermark_us = %s, ended = %s, "
                    "applied = applied + %s, dead_lettered = dead_lettered + %s, updated_at_us = %s, "
                    "millis_behind_latest = coalesce(%s, millis_behind_latest) WHERE dataset = %s AND shard = %s",
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

    def shards(self, dataset: DatasetSchema) -> list[ShardSummary]:
        def work(conn: Conn) -> list[ShardSummary]:
            rows = conn.execute(
                f"SELECT shard, {_SHARD_COLUMNS}, applied, dead_lettered, updated_at_us, millis_behind_latest "
                "FROM thyme_shards WHERE dataset = %s ORDER BY shard",
                (dataset.name,),
            ).fetchall()
            return [
                ShardSummary(dataset.name, shard, _state(seq, sub, wm, ended), applied, dead, updated, lag)
                for shard, seq, sub, wm, ended, applied, dead, updated, lag in rows
            ]

        return self._run(work, what="reading the shards")

    # -- reads ------------------------------------------------------------------------------

    def lookup(self, dataset: DatasetSchema, key: Key, at_us: int) -> str | None:
        self.ensure_dataset(dataset)
        statements = self._dataset_sql(dataset)
        if statements.key_type == "int8" and isinstance(key, int) and not INT8_MIN <= key <= INT8_MAX:
            return None  # cannot have been stored

        def work(conn: Conn) -> str | None:
            found = conn.execute(statements.lookup, (key, at_us)).fetchone()
            return None if found is None else str(found[0])

        return self._run(work, what="lookup")

    def count_rows(self, dataset: DatasetSchema) -> int:
        self.ensure_dataset(dataset)
        statements = self._dataset_sql(dataset)

        def work(conn: Conn) -> int:
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
            rows = conn.execute(select, (*args, limit)).fetchall()
            return [DeadLetter(s, q, ss, pk, bytes(raw), r, a, t, i, rd) for s, q, ss, pk, raw, r, a, t, i, rd in rows]

        return self._run(work, what="reading dead letters")

    def dead_letter_counts(self, dataset: DatasetSchema) -> dict[str, int]:
        return total_by_reason(self.dead_letter_counts_by_shard(dataset))

    def dead_letter_counts_by_shard(self, dataset: DatasetSchema) -> dict[str, dict[str, int]]:
        def work(conn: Conn) -> dict[str, dict[str, int]]:
            rows = conn.execute(
                "SELECT shard, reason, count(*) FROM thyme_dead_letters WHERE dataset = %s "
                "AND redriven_at_us IS NULL GROUP BY shard, reason ORDER BY shard, reason",
                (dataset.name,),
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
                self._begun = True
                marked = sorted(
                    r[0]
                    for r in conn.execute(
                        "UPDATE thyme_dead_letters SET redriven_at_us = %s WHERE dataset = %s "
                        "AND redriven_at_us IS NULL AND id = ANY(%s) RETURNING id",
                        (_now_us(), dataset.name, list(wanted)),
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
        self._drop()


class _RollbackWith(Exception):  # noqa: N818 - control flow, never escapes this module
    """Raised inside :meth:`PostgresStore.apply`'s transaction to roll it back with a result."""

    def __init__(self, conflict: Conflict) -> None:
        super().__init__("conflict")
        self.conflict = conflict


def _state(sequence: str | None, sub: int | None, watermark: int | None, ended: bool) -> ShardState:
    position = None if sequence is None else Position(int(sequence), sub or 0)
    return ShardState(position=position, watermark_us=watermark, ended=bool(ended))
