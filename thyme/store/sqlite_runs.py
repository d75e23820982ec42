"""The SQLite store's key index: sorted runs with size-tiered merges.

A dataset version's rows table ``ds_<name>_v<version>`` is append-only (``rid`` = apply order).
Its ``(key, ts, rid)`` index is kept as *runs*, each a clustered ``WITHOUT ROWID`` table
``…_run<n>``, listed with their sizes in ``…_runs``. Chosen for write speed into a dataset that
already holds millions of rows (``benchmarks/``: one random-key index over 5M rows took ~32k
rows/s; a recent tier merged into one main tier fell from 85k to 40k rows/s between 1M and 20M
rows, because every merge rewrote pages all over the main tier):

* Each batch writes its entries, sorted, as a new run, so they are appended to a fresh table
  instead of landing all over a large index.
* When ``fanout`` runs of one size class exist, they are merged into one new run of the next
  class, in key order, a slice per write (each write moves up to :data:`MOVE_FACTOR` times its own
  entries per merge in progress), so no transaction grows with the store and each entry is
  rewritten ~log_fanout(rows / batch) times in all, always appended. A merged run is dropped
  whole (``DROP TABLE`` frees its pages; deleting its entries one by one cost as much as writing
  them). A merge copies entries before its sources go, so while it runs an entry may be found in
  two runs: harmless, both answer the same.
* A lookup reads the run list and probes every run (one index seek each), in one read transaction.

Every function here runs inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from thyme.schema import DatasetSchema

DEFAULT_FANOUT: Final = 8
"""Runs of one size class merged at a time; a class holds runs of fanout**c to fanout**(c+1)-1 entries."""
MOVE_FACTOR: Final = 2
"""Each write advances every merge in progress by up to this many times its own entries..."""
MIN_MOVE: Final = 1_000
"""... and at least this many (so that small batches still finish merges)."""
LOOKUP_ARMS: Final = 200
"""Runs probed per lookup statement (SQLite allows 500 terms in a compound SELECT)."""


def table_name(dataset: DatasetSchema) -> str:
    """The rows table of a dataset version (the name is validated by ``@dataset``)."""
    return f"ds_{dataset.name}_v{dataset.version}"


class RunIndex:
    """The run index of every dataset in one store file, with one ``fanout``."""

    def __init__(self, fanout: int = DEFAULT_FANOUT) -> None:
        if fanout < 2:
            raise ValueError(f"fanout must be at least 2, not {fanout}")
        self.fanout = fanout

    def create(self, db: sqlite3.Connection, table: str) -> None:
        """The run list of a new rows table."""
        db.execute(
            f'CREATE TABLE IF NOT EXISTS "{table}_runs" (run INTEGER PRIMARY KEY, size_class INTEGER NOT NULL, '
            "entries INTEGER NOT NULL, merging_into INTEGER)"
        )

    def add(self, db: sqlite3.Connection, table: str, entries: bytes, count: int, base: int) -> None:
        """Index ``count`` new rows as one new run, then advance the merges.

        ``entries`` is a JSON array of ``[key, ts, i]``, sorted as the index is, ``i`` being the
        row's place in the batch, whose first row got ``rid`` ``base``: SQLite unpacks it in C and
        the entries arrive in order, so they are appended."""
        run = db.execute(f'SELECT coalesce(max(run), 0) + 1 FROM "{table}_runs"').fetchone()[0]
        _create_run(db, table, run)
        db.execute(
            f'INSERT INTO "{table}_run{run}" (key, ts, rid) '
            "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?1 + json_extract(value, '$[2]') "
            "FROM json_each(?2)",
            (base, entries),
        )
        db.execute(
            f'INSERT INTO "{table}_runs" (run, size_class, entries) VALUES (?, ?, ?)',
            (run, self.size_class(count), count),
        )
        self._compact(db, table, max(MIN_MOVE, MOVE_FACTOR * count))

    def size_class(self, entries: int) -> int:
        """``c`` such that ``fanout**c <= entries < fanout**(c+1)`` (0 for an empty run)."""
        size_class, bound = 0, self.fanout
        while entries >= bound:
            size_class, bound = size_class + 1, bound * self.fanout
        return size_class

    def probes(self, db: sqlite3.Connection, table: str) -> list[str]:
        """Statements that, together, find a key's newest entry at or before a time (parameters
        ``?1`` key, ``?2`` time; each gives ``(ts, rid)`` or nothing): one per
        :data:`LOOKUP_ARMS` runs. Valid for the caller's read transaction."""
        runs = [run for (run,) in db.execute(f'SELECT run FROM "{table}_runs"')]
        statements = []
        for start in range(0, len(runs), LOOKUP_ARMS):
            arms = " UNION ALL ".join(
                f'SELECT * FROM (SELECT ts, rid FROM "{table}_run{int(run)}" WHERE key = ?1 AND ts <= ?2 '
                "ORDER BY ts DESC, rid DESC LIMIT 1)"
                for run in runs[start : start + LOOKUP_ARMS]
            )
            statements.append(f"{arms} ORDER BY ts DESC, rid DESC LIMIT 1")
        return statements

    def upgrade(self, db: sqlite3.Connection, table: str) -> None:
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
        self.create(db, table)
        run = db.execute(f'SELECT coalesce(max(run), 0) FROM "{table}_runs"').fetchone()[0]
        for tier in sorted(tiers):  # main, then recent
            run += 1
            db.execute(f'ALTER TABLE "{tier}" RENAME TO "{table}_run{run}"')
            (entries,) = db.execute(f'SELECT count(*) FROM "{table}_run{run}"').fetchone()
            db.execute(
                f'INSERT INTO "{table}_runs" (run, size_class, entries) VALUES (?, ?, ?)',
                (run, self.size_class(entries), entries),
            )

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
            (self.fanout,),
        ).fetchall()
        for (size_class,) in due:
            target = db.execute(f"SELECT max(run) + 1 FROM {runs}").fetchone()[0]
            db.execute(
                f"UPDATE {runs} SET merging_into = ?1 WHERE run IN (SELECT run FROM {runs} AS r "
                "WHERE size_class = ?2 AND merging_into IS NULL "
                f"AND NOT EXISTS (SELECT 1 FROM {runs} AS s WHERE s.merging_into = r.run) ORDER BY run LIMIT ?3)",
                (target, size_class, self.fanout),
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

    def _merge_step(self, db: sqlite3.Connection, table: str, target: int, sources: Sequence[int], budget: int) -> None:
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
            db.execute(f"DELETE FROM {runs} WHERE run IN ({','.join('?' * len(sources))})", list(sources))
            (entries,) = db.execute(
                f"UPDATE {runs} SET entries = entries + ? WHERE run = ? RETURNING entries", (moved, target)
            ).fetchone()
            db.execute(f"UPDATE {runs} SET size_class = ? WHERE run = ?", (self.size_class(entries), target))
        else:
            db.execute(f"UPDATE {runs} SET entries = entries + ? WHERE run = ?", (moved, target))


def _create_run(db: sqlite3.Connection, table: str, run: int) -> None:
    db.execute(
        f'CREATE TABLE "{table}_run{int(run)}" (key NOT NULL, ts INTEGER NOT NULL, rid INTEGER NOT NULL, '
        "PRIMARY KEY (key, ts, rid)) WITHOUT ROWID"
    )
