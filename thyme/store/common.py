"""What the SQLite and PostgreSQL stores share: Thyme's own tables, the statements on them, and
how rows map to the contract's values. A backend file holds only what is its own (its index, its
transactions, its errors, its schema upgrades).

Statements are written with ``?`` placeholders; :class:`Statements` gives them to a backend in
its own style (``%s`` for psycopg).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from thyme.errors import SchemaChangedError
from thyme.schema import DatasetSchema, SchemaSet, compare_shapes
from thyme.store.base import DeadLetter, DeadLetterQuery, Feed, Position, ShardState, ShardSummary

LEGACY_VERSION: Final = 0
"""Shard state and dead letters written before they were kept per dataset version and stream
carry version 0 and stream '': the dataset's first feed adopts them (:func:`adopt_legacy`)."""


@dataclass(frozen=True)
class Dialect:
    """The column types that differ between the backends."""

    int64: str
    blob: str
    boolean: str
    false: str
    identity: str
    """The dead letters' id column, generated in recording order."""


SQLITE: Final = Dialect("INTEGER", "BLOB", "INTEGER", "0", "id INTEGER PRIMARY KEY")
POSTGRES: Final = Dialect("BIGINT", "BYTEA", "BOOLEAN", "false", "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")


def tables(d: Dialect) -> dict[str, str]:
    """``CREATE TABLE IF NOT EXISTS`` of Thyme's own tables, by name, in the current layout."""
    return {
        "thyme_datasets": "CREATE TABLE IF NOT EXISTS thyme_datasets (name TEXT NOT NULL, version INTEGER NOT NULL, "
        f"schema_json TEXT NOT NULL, created_at_us {d.int64} NOT NULL, PRIMARY KEY (name, version))",
        "thyme_shards": "CREATE TABLE IF NOT EXISTS thyme_shards (dataset TEXT NOT NULL, version INTEGER NOT NULL, "
        f"stream TEXT NOT NULL, shard TEXT NOT NULL, sequence TEXT, sub_sequence INTEGER, watermark_us {d.int64}, "
        f"ended {d.boolean} NOT NULL DEFAULT {d.false}, applied {d.int64} NOT NULL DEFAULT 0, "
        f"dead_lettered {d.int64} NOT NULL DEFAULT 0, updated_at_us {d.int64} NOT NULL, "
        f"millis_behind_latest {d.int64}, CONSTRAINT thyme_shards_pkey PRIMARY KEY (dataset, version, stream, shard))",
        "thyme_dead_letters": f"CREATE TABLE IF NOT EXISTS thyme_dead_letters ({d.identity}, dataset TEXT NOT NULL, "
        f"version INTEGER NOT NULL DEFAULT {LEGACY_VERSION}, stream TEXT NOT NULL DEFAULT '', shard TEXT NOT NULL, "
        "sequence TEXT NOT NULL, sub_sequence INTEGER NOT NULL, partition_key TEXT NOT NULL, "
        f"arrival_ms {d.int64}, reason TEXT NOT NULL, raw {d.blob} NOT NULL, recorded_at_us {d.int64} NOT NULL, "
        f"redriven_at_us {d.int64}, detail TEXT)",
    }


# -- statements ------------------------------------------------------------------------------

SELECT_SHAPE: Final = "SELECT schema_json FROM thyme_datasets WHERE name = ? AND version = ?"
INSERT_SHAPE: Final = "INSERT INTO thyme_datasets (name, version, schema_json, created_at_us) VALUES (?, ?, ?, ?)"
UPDATE_SHAPE: Final = "UPDATE thyme_datasets SET schema_json = ? WHERE name = ? AND version = ?"
SHARD_KEY: Final = "dataset = ? AND version = ? AND stream = ? AND shard = ?"
SHARD_STATE_COLUMNS: Final = "sequence, sub_sequence, watermark_us, ended"
SELECT_STATE: Final = f"SELECT {SHARD_STATE_COLUMNS} FROM thyme_shards WHERE {SHARD_KEY}"
SELECT_SHARDS: Final = (
    f"SELECT shard, {SHARD_STATE_COLUMNS}, applied, dead_lettered, updated_at_us, millis_behind_latest "
    "FROM thyme_shards WHERE dataset = ? AND version = ? AND stream = ? ORDER BY shard"
)
DEAD_LETTER_COUNTS: Final = (
    "SELECT reason, count(*) FROM thyme_dead_letters WHERE dataset = ? AND version = ? "
    "AND redriven_at_us IS NULL GROUP BY reason ORDER BY reason"
)
DEAD_LETTER_COUNTS_BY_SHARD: Final = (
    "SELECT shard, reason, count(*) FROM thyme_dead_letters WHERE dataset = ? AND version = ? AND stream = ? "
    "AND redriven_at_us IS NULL GROUP BY shard, reason ORDER BY shard, reason"
)
DEAD_LETTER_INSERT_COLUMNS: Final = (
    "dataset, version, stream, shard, sequence, sub_sequence, partition_key, arrival_ms, reason, raw, recorded_at_us, "
    "detail"
)
"""The columns :func:`dead_letter_values` fills, in its order."""
DEAD_LETTER_COLUMNS: Final = (
    "shard, sequence, sub_sequence, partition_key, raw, reason, arrival_ms, recorded_at_us, id, redriven_at_us, "
    "stream, detail"
)
"""The columns read back into a :class:`DeadLetter` (:func:`dead_letter`), in its field order."""


# -- values ----------------------------------------------------------------------------------


def now_us() -> int:
    return time.time_ns() // 1000


def shard_state(sequence: str | None, sub_sequence: int | None, watermark_us: int | None, ended: object) -> ShardState:
    """A :class:`ShardState` from the :data:`SHARD_STATE_COLUMNS` of a row."""
    position = None if sequence is None else Position.parse(sequence, sub_sequence)
    return ShardState(position=position, watermark_us=watermark_us, ended=bool(ended))


def shard_summaries(feed: Feed, rows: Iterable[Sequence[Any]]) -> list[ShardSummary]:
    """:class:`ShardSummary` values from the rows of :data:`SELECT_SHARDS`."""
    return [
        ShardSummary(feed.dataset.name, shard, shard_state(seq, sub, wm, ended), applied, dead, updated, lag)
        for shard, seq, sub, wm, ended, applied, dead, updated, lag in rows
    ]


def counts_by_shard(rows: Iterable[Sequence[Any]]) -> dict[str, dict[str, int]]:
    """``{shard: {reason: count}}`` from the rows of :data:`DEAD_LETTER_COUNTS_BY_SHARD`."""
    found: dict[str, dict[str, int]] = {}
    for shard, reason, n in rows:
        found.setdefault(shard, {})[reason] = int(n)
    return found


def total_by_reason(by_shard: dict[str, dict[str, int]]) -> dict[str, int]:
    """Per-shard dead-letter counts added up per reason (sorted by reason)."""
    totals: dict[str, int] = {}
    for reasons in by_shard.values():
        for reason, n in reasons.items():
            totals[reason] = totals.get(reason, 0) + n
    return dict(sorted(totals.items()))


def dead_letter_values(feed: Feed, letter: DeadLetter, recorded_at_us: int) -> tuple[object, ...]:
    """A dead letter as the :data:`DEAD_LETTER_INSERT_COLUMNS`."""
    return (
        feed.dataset.name,
        feed.dataset.version,
        feed.stream,
        letter.shard,
        letter.sequence,
        letter.sub_sequence,
        letter.partition_key,
        letter.arrival_ms,
        letter.reason,
        letter.raw,
        recorded_at_us,
        letter.detail,
    )


def dead_letter(row: Sequence[Any]) -> DeadLetter:
    """A :class:`DeadLetter` from a row of :data:`DEAD_LETTER_COLUMNS` (``raw`` as bytes, whatever
    buffer type the driver returns)."""
    shard, sequence, sub_sequence, partition_key, raw, *rest = row
    return DeadLetter(shard, sequence, sub_sequence, partition_key, bytes(raw), *rest)


def reason_forms(reason: str) -> list[str]:
    """What a ``--reason`` filter matches: the reason as typed and with each ``:`` written as the
    stored reasons write it (``schema:temperature_c`` → ``schema: temperature_c``). Each form
    matches a reason equal to it or starting with it and ``": "``, so ``schema`` finds every
    schema reason and ``schema: temperature_c`` every reason about that field (no LIKE: field
    names hold ``_``, a LIKE wildcard)."""
    typed = reason.strip()
    spaced = ": ".join(part.strip() for part in typed.split(":"))
    return [typed] if spaced == typed else [typed, spaced]


def reason_matches(reason: str, wanted: str) -> bool:
    """:func:`dead_letter_filter`'s reason rule, in Python."""
    return any(reason == form or reason.startswith(form + ": ") for form in reason_forms(wanted))


def dead_letter_filter(
    dataset: DatasetSchema, reason: str | None, query: DeadLetterQuery, mark: str = "?"
) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause (with ``mark`` as the parameter placeholder) and its arguments."""
    where = ["dataset = {}", "version = {}"]
    args: list[object] = [dataset.name, dataset.version]
    if reason is not None:
        either = []
        for wanted in reason_forms(reason):
            either.append("reason = {} OR substr(reason, 1, CAST({} AS INTEGER)) = {}")
            args += [wanted, len(wanted) + 2, wanted + ": "]
        where.append("(" + " OR ".join(either) + ")")
    for column, value in (
        ("shard = {}", query.shard),
        ("stream = {}", query.stream),
        ("recorded_at_us >= {}", query.since_us),
        ("recorded_at_us < {}", query.until_us),
        ("id > {}", query.after_id or None),
    ):
        if value is not None:
            where.append(column)
            args.append(value)
    if not query.include_redriven:
        where.append("redriven_at_us IS NULL")
    return " AND ".join(where).format(*[mark] * len(args)), tuple(args)


# -- shapes and legacy state, inside a backend's transaction ------------------------------------


class Cursor(Protocol):
    def fetchone(self) -> Any: ...


class Execute(Protocol):
    """A connection's ``execute`` (sqlite3 or psycopg), with this module's statements already in
    the backend's placeholder style."""

    def __call__(self, statement: str, args: Sequence[object] = ..., /) -> Cursor: ...


def shape_against_stored(stored_json: str, schema: DatasetSchema, url: str) -> bool:
    """Whether ``schema`` widens the shape the store holds for its name and version (the store then
    records ``schema`` in its place). Raises :class:`~thyme.errors.SchemaChangedError`, naming the
    difference, when stored rows could not be read back under ``schema``."""
    change = compare_shapes(DatasetSchema.from_json(stored_json), schema)
    if change in ("same", "narrows"):
        return False
    if change == "widens":
        return True
    raise SchemaChangedError(
        f"dataset {schema.name} version {schema.version}: its fields differ from the ones the store {url} "
        f"holds for that version ({change}). Increase the version (@dataset(version={schema.version + 1})): "
        "a new version is a dataset of its own, fed from the source's init_position"
    )


def register_shape(execute: Execute, statements: Statements, schema: DatasetSchema, url: str) -> bool:
    """Record ``schema``'s shape (or widen the stored one), in the caller's write transaction.
    True if the dataset version is new: the caller then creates its tables."""
    ident = (schema.name, schema.version)
    found = execute(statements.select_shape, ident).fetchone()
    if found is None:
        execute(statements.insert_shape, (*ident, schema.to_json(), now_us()))
        return True
    if shape_against_stored(found[0], schema, url):
        execute(statements.update_shape, (schema.to_json(), *ident))
    return False


def readable(execute: Execute, statements: Statements, schema: DatasetSchema, url: str, seen: SchemaSet) -> bool:
    """Whether the dataset version has tables to read (it was ever written); raises if its stored
    shape cannot be read as ``schema``. Reads only; a shape found readable (or recorded) is
    remembered in ``seen``, a dataset not written yet is asked about again next time."""
    if schema in seen:
        return True
    found = execute(statements.select_shape, (schema.name, schema.version)).fetchone()
    if found is None:
        return False
    shape_against_stored(found[0], schema, url)
    seen.add(schema)
    return True


def adopt_legacy(execute: Execute, statements: Statements, feed: Feed) -> None:
    """In the caller's write transaction: give ``feed`` the dataset's legacy shard state (if it has
    none of its own yet) and its legacy dead letters."""
    name, version = feed.dataset.name, feed.dataset.version
    legacy = execute(statements.any_state_of_version, (name, LEGACY_VERSION)).fetchone()
    if legacy and not execute(statements.any_state_of_feed, (name, version, feed.stream)).fetchone():
        execute(statements.adopt_states, (version, feed.stream, name, LEGACY_VERSION))
    execute(statements.adopt_dead_letters, (version, feed.stream, name, LEGACY_VERSION))


@dataclass(frozen=True)
class Statements:
    """This module's statements in one backend's placeholder style."""

    select_shape: str
    insert_shape: str
    update_shape: str
    select_state: str
    select_shards: str
    dead_letter_counts: str
    dead_letter_counts_by_shard: str
    any_state_of_version: str
    any_state_of_feed: str
    adopt_states: str
    adopt_dead_letters: str
    mark: str

    @classmethod
    def with_mark(cls, mark: str) -> Statements:
        def fix(statement: str) -> str:
            return statement.replace("?", mark)

        return cls(
            select_shape=fix(SELECT_SHAPE),
            insert_shape=fix(INSERT_SHAPE),
            update_shape=fix(UPDATE_SHAPE),
            select_state=fix(SELECT_STATE),
            select_shards=fix(SELECT_SHARDS),
            dead_letter_counts=fix(DEAD_LETTER_COUNTS),
            dead_letter_counts_by_shard=fix(DEAD_LETTER_COUNTS_BY_SHARD),
            any_state_of_version=fix("SELECT 1 FROM thyme_shards WHERE dataset = ? AND version = ? LIMIT 1"),
            any_state_of_feed=fix(
                "SELECT 1 FROM thyme_shards WHERE dataset = ? AND version = ? AND stream = ? LIMIT 1"
            ),
            adopt_states=fix("UPDATE thyme_shards SET version = ?, stream = ? WHERE dataset = ? AND version = ?"),
            adopt_dead_letters=fix(
                "UPDATE thyme_dead_letters SET version = ?, stream = ? WHERE dataset = ? AND version = ?"
            ),
            mark=mark,
        )

    def dead_letter_filter(
        self, dataset: DatasetSchema, reason: str | None, query: DeadLetterQuery
    ) -> tuple[str, tuple[object, ...]]:
        return dead_letter_filter(dataset, reason, query, self.mark)


def shard_key(feed: Feed, shard: str) -> tuple[str, int, str, str]:
    """The :data:`SHARD_KEY` arguments of a feed's shard."""
    return (feed.dataset.name, feed.dataset.version, feed.stream, shard)
