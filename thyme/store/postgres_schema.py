"""The PostgreSQL store's tables: their layout, its version, the upgrades from earlier
versions, and the script an admin reviews and runs (``thyme store migrate --print``).

Thyme's own tables are in :mod:`thyme.store.common`; each dataset version has a rows table
``ds_<name>_v<version>`` ``(rid, key, ts, row)``: ``rid`` an identity column (apply order: within
a shard, stream order; it breaks ties between equal event times) and a btree on
``(key, ts, rid)`` that serves lookups with one backward index probe. Text keys use the ``"C"``
collation (byte order: fast, and equality is what lookups need).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from thyme.errors import StoreConfigError
from thyme.schema import DatasetSchema
from thyme.store import common
from thyme.store.common import POSTGRES

SCHEMA_VERSION: Final = 4
"""Version of Thyme's own tables in a PostgreSQL store."""
SCHEMA_LOCK: Final = 0x7468796D65
"""``pg_advisory_xact_lock`` key ("thyme") taken while creating or upgrading tables."""
TABLES: Final = [
    "CREATE TABLE IF NOT EXISTS thyme_schema_version (version INTEGER NOT NULL)",
    *common.tables(POSTGRES).values(),
]
INDEXES: Final = [
    "CREATE INDEX IF NOT EXISTS thyme_dead_letters_by_version ON thyme_dead_letters (dataset, version, reason, id)"
]
"""Created after the upgrades (their columns may be added by one)."""
_LEGACY_COLUMNS: Final = (
    f"version INTEGER NOT NULL DEFAULT {common.LEGACY_VERSION}, ADD COLUMN IF NOT EXISTS stream TEXT NOT NULL "
    "DEFAULT ''"
)
UPGRADES: Final = {
    2: (
        "ALTER TABLE thyme_shards ADD COLUMN IF NOT EXISTS millis_behind_latest BIGINT",
        "ALTER TABLE thyme_dead_letters ADD COLUMN IF NOT EXISTS redriven_at_us BIGINT",
    ),
    # Shard state and dead letters per dataset version and stream; what was there before becomes
    # legacy state, adopted by the dataset's first feed (common.adopt_legacy).
    3: (
        f"ALTER TABLE thyme_shards ADD COLUMN IF NOT EXISTS {_LEGACY_COLUMNS}",
        "ALTER TABLE thyme_shards DROP CONSTRAINT IF EXISTS thyme_shards_pkey",
        "ALTER TABLE thyme_shards ADD CONSTRAINT thyme_shards_pkey PRIMARY KEY (dataset, version, stream, shard)",
        f"ALTER TABLE thyme_dead_letters ADD COLUMN IF NOT EXISTS {_LEGACY_COLUMNS}",
        "DROP INDEX IF EXISTS thyme_dead_letters_by_reason",
    ),
    # The numbers behind a late or future_timestamp reason.
    4: ("ALTER TABLE thyme_dead_letters ADD COLUMN IF NOT EXISTS detail TEXT",),
}
"""Statements that bring the tables from the version before to the key's version (idempotent)."""

Conn = psycopg.Connection[tuple[Any, ...]]


def check_current(conn: Conn, url: str) -> None:
    """Refuse a database without Thyme's tables, or with older ones, where nothing may be created
    (a read-only command)."""
    (exists,) = conn.execute("SELECT to_regclass('thyme_schema_version') IS NOT NULL").fetchone() or (False,)
    found = conn.execute("SELECT max(version) FROM thyme_schema_version").fetchone() if exists else None
    version = None if found is None else found[0]
    if version is None:
        raise StoreConfigError(
            "store URL",
            "no Thyme store in this database (Thyme's tables are missing)",
            "Check the URL; a store is created by the consumer (thyme kinesis run) or by thyme store migrate.",
            value=url,
        )
    if version < SCHEMA_VERSION:
        raise StoreConfigError(
            "store URL",
            f"the store's tables are at version {version}, older than this Thyme's ({SCHEMA_VERSION})",
            "Upgrade them: start the consumer, or run thyme store migrate (--print for the script).",
            value=url,
        )


def bring_up_to_date(conn: Conn, url: str) -> None:
    """Create Thyme's tables, or upgrade them from an earlier version, in the caller's transaction
    (which holds :data:`SCHEMA_LOCK`). Nothing is done when they are current: a consumer whose user
    may only read and write (tables made by the printed script) starts as well."""
    (exists,) = conn.execute("SELECT to_regclass('thyme_schema_version') IS NOT NULL").fetchone() or (False,)
    version = None
    if exists:
        found = conn.execute("SELECT max(version) FROM thyme_schema_version").fetchone()
        version = None if found is None else found[0]
    if version is not None and version > SCHEMA_VERSION:
        raise StoreConfigError(
            "store URL",
            f"the store's tables are at version {version}, newer than this Thyme's ({SCHEMA_VERSION})",
            "Upgrade thyme-kinesis on this host.",
            value=url,
        )
    if version == SCHEMA_VERSION:
        return
    if version is None:
        statements = TABLES
    else:
        statements = [s for step in range(version + 1, SCHEMA_VERSION + 1) for s in UPGRADES[step]]
    for statement in [*statements, *INDEXES]:
        conn.execute(statement)
    conn.execute("INSERT INTO thyme_schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))


def migration_script(datasets: Sequence[DatasetSchema]) -> str:
    """The SQL that creates Thyme's tables (at :data:`SCHEMA_VERSION`, upgrading older ones) and the
    given datasets' tables. Idempotent: it can be run on a store that has them. Needs no server."""
    statements = [*TABLES, *(s for step in sorted(UPGRADES) for s in UPGRADES[step]), *INDEXES]
    statements.append(
        f"INSERT INTO thyme_schema_version (version) SELECT {SCHEMA_VERSION} "
        f"WHERE NOT EXISTS (SELECT FROM thyme_schema_version WHERE version >= {SCHEMA_VERSION})"
    )
    for dataset in datasets:
        parts = DatasetSQL.of(dataset)
        statements.append(
            sql.SQL(
                "INSERT INTO thyme_datasets (name, version, schema_json, created_at_us) "
                "VALUES ({}, {}, {}, {}) ON CONFLICT (name, version) DO NOTHING"
            )
            .format(
                sql.Literal(dataset.name),
                sql.Literal(dataset.version),
                sql.Literal(dataset.to_json()),
                sql.Literal(common.now_us()),
            )
            .as_string(None)
        )
        statements += [parts.create.as_string(None), parts.index.as_string(None)]
    return "BEGIN;\n" + ";\n".join(statements) + ";\nCOMMIT;\n"


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
class DatasetSQL:
    """The statements on one dataset version's rows table."""

    key_type: str
    """``text`` or ``int8``: the binary COPY type of the key column."""
    create: sql.Composed
    index: sql.Composed
    copy: sql.Composed
    lookup: sql.Composed
    count: sql.Composed

    @classmethod
    def of(cls, dataset: DatasetSchema) -> DatasetSQL:
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
