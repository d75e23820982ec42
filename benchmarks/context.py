"""What every benchmark section shares: the run's settings and results, the workloads, working
copies of the prefilled stores, our child run against a store, and the table being printed."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
for entry in (str(REPO), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import stores  # noqa: E402
from processor import (  # noqa: E402
    Run,
    Workload,
    drive,
    generate,
    log,
    processor_command,
)

FIVE_M: Final = 5_000_000


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Series:
    """One measured quantity: every run's value and their median."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.values)

    def as_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "median": self.median, "runs": len(self.values), "values": self.values}


@dataclass
class Context:
    args: argparse.Namespace
    work: Path
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    """The printed table: section, measurement, figure, target, verdict."""
    pg: stores.CachedPostgres | None = None
    workloads: dict[tuple[int, int], Workload] = field(default_factory=dict)
    copies: dict[tuple[str, int], str] = field(default_factory=dict)
    shards: int = 0
    store_rows: list[int] = field(default_factory=list)
    """Rows in the store before each checked run of our child (the stores grow as runs write)."""

    def shard(self, tag: str) -> str:
        """A shard id never used before in this invocation (the stores are shared between sections)."""
        self.shards += 1
        return f"shardId-{tag}-{self.shards:04d}"

    def workload(self, batch_size: int = 10_000, event_bytes: int = 200, batches: int | None = None) -> Workload:
        count = batches if batches is not None else self.args.batches
        key = (batch_size * 1_000_000 + count, event_bytes)
        if key not in self.workloads:
            log(f"generating {count} x {batch_size:,} records of ~{event_bytes:,} B ...")
            self.workloads[key] = generate(count, batch_size, event_bytes, self.args.seed)
        return self.workloads[key]

    def store(self, kind: str, rows: int) -> str:
        """This invocation's working copy of the prefilled store (one per kind and size)."""
        ident = (kind, rows)
        if ident not in self.copies:
            if kind == "sqlite":
                pristine = stores.prefilled_sqlite(self.args.cache, rows)
                if rows == FIVE_M:
                    stores.with_peer_table(pristine)
                log(f"  copying {pristine.name} ({pristine.stat().st_size / 2**20:,.0f} MiB) ...")
                self.copies[ident] = stores.working_sqlite(pristine, self.work)
            else:
                if self.pg is None:
                    self.pg = stores.CachedPostgres(self.args.cache)
                    self.pg.start()
                self.copies[ident] = self.pg.working_copy(rows)
        return self.copies[ident]

    def fresh(self, kind: str, rows: int) -> str:
        """A new copy of the prefilled store for one run, so that every run starts at the same size
        (the copy of the previous run of this kind and size is removed)."""
        ident = (f"fresh-{kind}", rows)
        previous = self.copies.get(ident)
        if kind == "sqlite":
            pristine = stores.prefilled_sqlite(self.args.cache, rows)
            if rows == FIVE_M:
                stores.with_peer_table(pristine)
            url = stores.working_sqlite(pristine, self.work, f"fresh-{pristine.name}")
        else:
            if self.pg is None:
                self.pg = stores.CachedPostgres(self.args.cache)
                self.pg.start()
            url = self.pg.working_copy(rows, replaces=previous)
        self.copies[ident] = url
        return url

    def counts(self, url: str) -> tuple[int, int]:
        from tests.factories import SourcedClick
        from thyme.schema import dataset_schema
        from thyme.store import open_store

        schema = dataset_schema(SourcedClick)
        assert schema is not None
        store = open_store(url)
        try:
            return store.count_rows(schema), sum(store.dead_letter_counts(schema).values())
        finally:
            store.close()

    def ours(self, url: str, workload: Workload, shard: str, check: bool = True) -> Run:
        before = self.counts(url) if check else (0, 0)
        if check:
            self.store_rows.append(before[0])
        run = drive(processor_command(url), workload, self.work / f"{shard}.stderr.log", shard=shard)
        if check:
            rows, dead = self.counts(url)
            expected = (workload.accepted, sum(workload.dead_letters.values()))
            if (rows - before[0], dead - before[1]) != expected:
                raise RuntimeError(f"the store holds {(rows - before[0], dead - before[1])} new, expected {expected}")
        return run

    def store_share(self, shard: str) -> float:
        """The share of the child's batch time spent in the store's ``apply`` (from its logs)."""
        total = store = 0.0
        for line in (self.work / f"{shard}.stderr.log").read_text(errors="replace").splitlines():
            if '"batch applied"' in line:
                entry = json.loads(line)
                total += float(entry.get("seconds", 0.0))
                store += float(entry.get("store_seconds", 0.0))
        return store / total if total else float("nan")

    def store_alone(self, url: str, workload: Workload, shard: str, rounds: int = 1) -> list[float]:
        """Rows/s of the store's ``apply`` alone (in this process, rows decoded beforehand): what
        the child could reach at best if decoding and the pipe cost nothing. With ``rounds`` > 1
        the workload's batches are applied again and again (new versions of the same keys); one
        figure per round."""
        import base64

        import msgspec

        from tests.factories import SourcedClick, feed_of
        from thyme.records.decode import RecordDecoder
        from thyme.schema import dataset_schema
        from thyme.store import Batch, Position, ShardState, open_store

        schema = dataset_schema(SourcedClick)
        assert schema is not None
        decoder = RecordDecoder(schema)
        batches: list[list[Any]] = []
        for line in workload.lines:
            records = msgspec.json.decode(line)["records"]
            rows = []
            for record in records:
                result = decoder.decode(base64.b64decode(record["data"]))
                if not isinstance(result, str):
                    rows.append(result)
            batches.append(rows)
        store = open_store(url)
        rates: list[float] = []
        try:
            feed = feed_of(schema)
            store.ensure_feed(feed)
            expect: ShardState | None = None
            position = 0
            for _round in range(rounds):
                started = time.perf_counter()
                for rows in batches:
                    position += 1
                    state = ShardState(Position(position), None)
                    if store.apply(feed, Batch(shard, state, rows), expect) is not None:
                        raise RuntimeError("the shard state changed under the store-alone run")
                    expect = state
                rates.append(sum(map(len, batches)) / (time.perf_counter() - started))
        finally:
            store.close()
        return rates

    def row(self, section: str, what: str, figure: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("holds" if ok else "MISSED")
        self.rows.append((section, what, figure, target, verdict))
        log(f"  => {what}: {figure} {('[' + target + ': ' + verdict + ']') if target else ''}")

    def table(self) -> str:
        headers = ("#", "measurement", "figure (median of runs)", "target", "")
        ordered = sorted(self.rows, key=lambda r: r[0])  # by section; stable within one
        widths = [max(len(r[i]) for r in [headers, *ordered]) for i in range(5)]
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in ordered]
        return "\n".join(lines)
