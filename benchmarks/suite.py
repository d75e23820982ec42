"""The benchmark suite: every figure of the performance issue, in one command.

    benchmarks/run                          # everything (~30 min; prefills once, cached)
    benchmarks/run --quick                  # fewer batches, no 20M store, shorter e2e
    benchmarks/run --only throughput,lookup # a subset: throughput lookup memory scaling e2e

Sections (each figure is the median of ``--repeat`` runs, default 5; comparisons alternate
run by run inside one invocation):

1. throughput — 10,000-record ``processRecords`` lines piped into the real child
   (``python -m record_processor``) through to committed rows and the status reply, on a
   SQLite store and on a PostgreSQL store that already hold 5M rows; the floor child (read
   the line + ``json.loads`` the envelope + reply) and the peer child (Powertools' Kinesis
   batch processor + pydantic model + ``executemany``) in the same runs; two children on two
   shards of the same store at once against one.
2. lookup — p50/p99 of single-key lookups (as of now, as of a past time) in a separate
   process while a child writes, on the same stores; and a threaded server's load: 1, 4 and
   16 threads sharing one store, lookups/s and p50/p99.
3. e2e — through the real daemon on the local stack (``benchmarks/e2e.py``).
4. memory — the child's peak RSS for 10,000 x 200 B batches and for 100 KiB records.
5. scaling — throughput and lookup latency at 1M, 5M and 20M rows (SQLite).

Results: a table on stdout and ``benchmarks/results/suite.json`` (every run's figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
for entry in (str(REPO), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import stores  # noqa: E402
from processor import (  # noqa: E402
    DATASET,
    FLOOR_CHILD,
    Run,
    Workload,
    drive,
    generate,
    log,
    pct,
    processor_command,
)

SECTIONS: Final = ("throughput", "lookup", "memory", "scaling", "e2e")
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
class Bench:
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

    # -- shared pieces --------------------------------------------------------------------

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
        from thyme.dataset import dataset_schema
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

        from record_processor.decode import RecordDecoder
        from tests.factories import SourcedClick, feed_of
        from thyme.dataset import dataset_schema
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

    def sqlite_ceiling(self, workload: Workload) -> float:
        """Rows/s of the cheapest durable SQLite write there is: append each batch's accepted rows
        to an unindexed table, one transaction per batch (WAL, ``synchronous=FULL``), in this
        process, with the payloads extracted beforehand."""
        import base64
        import sqlite3

        import msgspec

        batches = [
            [base64.b64decode(r["data"]).decode("utf-8", "replace") for r in msgspec.json.decode(line)["records"]]
            for line in workload.lines
        ]
        path = self.work / "ceiling.db"
        for stale in self.work.glob("ceiling.db*"):
            stale.unlink()
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE t (rid INTEGER PRIMARY KEY, row TEXT NOT NULL)")
        started = time.perf_counter()
        for rows in batches:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO t (row) VALUES (?)", [(r,) for r in rows])
            db.execute("COMMIT")
        seconds = time.perf_counter() - started
        db.close()
        return sum(map(len, batches)) / seconds

    def floor(self, workload: Workload) -> Run:
        script = self.work / "floor_child.py"
        if not script.exists():
            script.write_text(FLOOR_CHILD)
        return drive([sys.executable, str(script)], workload, self.work / "floor.stderr.log")

    def null_child(self, workload: Workload) -> Run:
        """The real child with a store that keeps nothing (``null_child.py``)."""
        unused = f"sqlite:///{self.work / 'null-child-unused.db'}"
        command = [sys.executable, str(BENCH / "null_child.py"), "--dataset", DATASET, "--store", unused]
        return drive(command, workload, self.work / "null.stderr.log")

    def peer(self, url: str, workload: Workload, layout: str) -> Run:
        """One peer run; afterwards (untimed) its rows are removed so every run sees the same store."""
        import sqlite3

        path = url.removeprefix("sqlite:///")
        table = "peer_clicks" if layout == "plain" else "ds_SourcedClick_v1"
        db = sqlite3.connect(path, timeout=60)
        (before,) = db.execute(f'SELECT coalesce(max(rid), 0) FROM "{table}"').fetchone()
        (last_run,) = db.execute('SELECT coalesce(max(run), 0) FROM "ds_SourcedClick_v1_runs"').fetchone()
        db.close()
        command = [sys.executable, str(BENCH / "peer_child.py"), url, layout]
        run = drive(command, workload, self.work / "peer.stderr.log")
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        added = db.execute(f'SELECT count(*) FROM "{table}" WHERE rid > ?', (before,)).fetchone()[0]
        if added != workload.accepted:
            raise RuntimeError(f"the peer wrote {added} rows, expected {workload.accepted}")
        db.execute("BEGIN IMMEDIATE")
        if layout != "plain":
            for (peer_run,) in db.execute(
                'SELECT run FROM "ds_SourcedClick_v1_runs" WHERE run > ?', (last_run,)
            ).fetchall():
                db.execute(f'DROP TABLE "ds_SourcedClick_v1_run{peer_run}"')
            db.execute('DELETE FROM "ds_SourcedClick_v1_runs" WHERE run > ?', (last_run,))
        db.execute(f'DELETE FROM "{table}" WHERE rid > ?', (before,))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        return run

    def pair(self, url: str, workload: Workload, tag: str) -> float:
        """Two children on two shards of one store at once; their combined records/s."""
        barrier = threading.Barrier(2)
        runs: list[Run] = []
        errors: list[BaseException] = []

        def one(shard: str) -> None:
            try:
                runs.append(
                    drive(processor_command(url), workload, self.work / f"{shard}.log", shard=shard, barrier=barrier)
                )
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=one, args=(f"{tag}-{side}",)) for side in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        start = min(r.started for r in runs)
        end = max(r.started + r.seconds for r in runs)
        return sum(r.records for r in runs) / (end - start)

    def lookups_while_writing(self, url: str, rows: int, workload: Workload, shard: str) -> dict[str, Any]:
        """One run: a lookup client in its own process, a child writing ``workload`` meanwhile."""
        ready, stop = self.work / f"{shard}.ready", self.work / f"{shard}.stop"
        ready.unlink(missing_ok=True)
        stop.unlink(missing_ok=True)
        client = subprocess.Popen(
            [
                sys.executable,
                str(BENCH / "lookup_client.py"),
                "--store",
                url,
                "--rows",
                str(rows),
                "--ready-file",
                str(ready),
                "--stop-file",
                str(stop),
            ],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 300
            while not ready.exists():
                if client.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the lookup client did not get ready")
                time.sleep(0.05)
            run = self.ours(url, workload, shard, check=False)
            stop.write_text("stop\n")
            out, _ = client.communicate(timeout=120)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        data = json.loads(out)
        if not data["now_ms"] or not data["past_ms"]:
            raise RuntimeError("the lookup client made no lookups while the child wrote")
        return {
            "writer_records_per_s": run.rate,
            "lookups": len(data["now_ms"]) + len(data["past_ms"]),
            "hits": data["hits"],
            "now_p50_ms": pct(data["now_ms"], 0.5),
            "now_p99_ms": pct(data["now_ms"], 0.99),
            "past_p50_ms": pct(data["past_ms"], 0.5),
            "past_p99_ms": pct(data["past_ms"], 0.99),
            "now_max_ms": max(data["now_ms"]),
            "past_max_ms": max(data["past_ms"]),
        }

    def row(self, section: str, what: str, figure: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("holds" if ok else "MISSED")
        self.rows.append((section, what, figure, target, verdict))
        log(f"  => {what}: {figure} {('[' + target + ': ' + verdict + ']') if target else ''}")

    # -- sections -------------------------------------------------------------------------

    def throughput(self) -> None:
        log("\n== 1. processor throughput")
        repeat = self.args.repeat
        workload = self.workload()
        out: dict[str, Any] = {
            "records_per_run": workload.records,
            "mean_event_bytes": workload.mean_event_bytes,
            "mean_line_bytes": workload.mean_line_bytes,
            "accepted": workload.accepted,
            "dead_letters": dict(workload.dead_letters),
            "repeated_keys": workload.repeated_keys,
        }
        for kind in ("sqlite", "postgresql"):
            if kind == "postgresql" and self.args.no_postgres:
                continue
            self.store_rows = []
            floor = Series("floor", "records/s")
            ours = Series("ours", "records/s")
            peer = Series("peer", "records/s")
            peer_tiers = Series("peer on Thyme's tables", "records/s")
            pair = Series("two children", "records/s")
            ratio_floor = Series("ours/floor", "x")
            ratio_peer = Series("ours/peer", "x")
            ratio_pair = Series("pair/one", "x")
            rss = Series("peak RSS", "MiB")
            share = Series("store share of the child's batch time", "fraction")
            alone = Series("store apply alone", "rows/s")
            ceiling = Series("SQLite append-only ceiling", "rows/s")
            nothing = Series("child with a store that keeps nothing", "records/s")
            bound = Series("bound for a durable SQLite store / floor", "x")
            for i in range(repeat):
                url = self.fresh(kind, FIVE_M)
                f = self.floor(workload)
                shard = self.shard(f"tp-{kind}")
                o = self.ours(url, workload, shard)
                share.values.append(self.store_share(shard))
                floor.values.append(f.rate)
                ours.values.append(o.rate)
                ratio_floor.values.append(o.rate / f.rate)
                rss.values.append(o.peak_rss_mib or float("nan"))
                line = (
                    f"  run {i + 1}/{repeat} {kind}: floor {f.rate:,.0f}, ours {o.rate:,.0f} rec/s "
                    f"(store {share.values[-1]:.0%})"
                )
                if kind == "sqlite":
                    p = self.peer(url, workload, "plain")
                    peer.values.append(p.rate)
                    ratio_peer.values.append(o.rate / p.rate)
                    t = self.peer(url, workload, "runs")
                    peer_tiers.values.append(t.rate)
                    line += f", peer {p.rate:,.0f} (on Thyme's tables {t.rate:,.0f})"
                    ceiling.values.append(self.sqlite_ceiling(workload))
                    line += f", append-only ceiling {ceiling.values[-1]:,.0f} rows/s"
                    n = self.null_child(workload)
                    nothing.values.append(n.rate)
                    # per record: the child's own work, then the cheapest durable write of its row
                    bound.values.append(1 / (1 / n.rate + 1 / ceiling.values[-1]) / f.rate)
                    line += f", child without a store {n.rate:,.0f} (bound {bound.values[-1]:.2f}x floor)"
                alone.values += self.store_alone(url, workload, self.shard(f"alone-{kind}"))
                line += f", store alone {alone.values[-1]:,.0f} rows/s"
                two = self.pair(url, workload, self.shard(f"pair-{kind}"))
                pair.values.append(two)
                ratio_pair.values.append(two / o.rate)
                log(line + f", two children {two:,.0f} rec/s together")
            label = "SQLite" if kind == "sqlite" else "PostgreSQL"
            out[f"{kind} store rows before each run"] = list(self.store_rows)
            out[kind] = {
                s.name: s.as_json()
                for s in (
                    floor,
                    ours,
                    peer,
                    peer_tiers,
                    pair,
                    ratio_floor,
                    ratio_peer,
                    ratio_pair,
                    rss,
                    share,
                    alone,
                    ceiling,
                    nothing,
                    bound,
                )
                if s.values
            }
            self.row("1", f"child records/s, {label} 5M rows", f"{ours.median:,.0f}", "≥ 50,000", ours.median >= 50_000)
            self.row("1", f"  of the child's batch time, in the store's apply ({label})", f"{share.median:.0%}")
            self.row(
                "1",
                f"  store apply alone, rows decoded beforehand ({label}; {alone.median / floor.median:.2f}x floor)",
                f"{alone.median:,.0f} rows/s",
            )
            if ceiling.values:
                self.row(
                    "1",
                    f"  SQLite's cheapest durable write: append, no index ({ceiling.median / floor.median:.2f}x floor)",
                    f"{ceiling.median:,.0f} rows/s",
                )
            if nothing.values:
                self.row(
                    "1",
                    f"  the child with a store that keeps nothing ({nothing.median / floor.median:.2f}x floor)",
                    f"{nothing.median:,.0f}",
                )
                self.row(
                    "1",
                    "  so no durable SQLite store can exceed (that child + the append-only ceiling per record)",
                    f"{bound.median:.2f}x floor",
                )
            self.row("1", f"floor records/s (same runs, {label})", f"{floor.median:,.0f}")
            self.row("1", f"ours / floor, {label}", f"{ratio_floor.median:.2f}x", "≥ 0.4x", ratio_floor.median >= 0.4)
            if peer.values:
                self.row(
                    "1",
                    "peer records/s (Powertools + pydantic + executemany into an indexed table), SQLite 5M",
                    f"{peer.median:,.0f}",
                )
                self.row(
                    "1", "  the peer writing into Thyme's tables (a run per batch) instead", f"{peer_tiers.median:,.0f}"
                )
                self.row("1", "ours / peer, SQLite", f"{ratio_peer.median:.2f}x", "≥ 3x", ratio_peer.median >= 3)
            self.row(
                "1",
                f"two children together / one, {label}",
                f"{ratio_pair.median:.2f}x ({pair.median:,.0f} rec/s)",
                "≥ 1.6x",
                ratio_pair.median >= 1.6,
            )
            self.row(
                "4",
                f"peak RSS per child, 10,000 x 200 B batches, {label}",
                f"{max(rss.values):.0f} MiB (max)",
                "≤ 150 MiB",
                max(rss.values) <= 150,
            )
        self.results["throughput"] = out

    def lookup_series(self, kind: str, rows: int, runs: int) -> dict[str, Any]:
        workload = self.workload()
        per_run = []
        for i in range(runs):
            url = self.fresh(kind, rows)
            result = self.lookups_while_writing(url, rows, workload, self.shard(f"lk-{kind}-{rows}"))
            per_run.append(result)
            log(
                f"  run {i + 1}/{runs} {kind} {rows:,}: "
                f"now p50 {result['now_p50_ms']:.2f} p99 {result['now_p99_ms']:.2f} ms, "
                f"past p50 {result['past_p50_ms']:.2f} p99 {result['past_p99_ms']:.2f} ms "
                f"({result['lookups']} lookups; writer {result['writer_records_per_s']:,.0f} rec/s)"
            )
        summary = {
            k: median([r[k] for r in per_run]) for k in per_run[0] if k.endswith("_ms") or k == "writer_records_per_s"
        }
        return {"median": summary, "runs": per_run}

    def lookup(self) -> None:
        log("\n== 2. lookup latency while a child writes")
        out: dict[str, Any] = {}
        for kind in ("sqlite", "postgresql"):
            if kind == "postgresql" and self.args.no_postgres:
                continue
            result = self.lookup_series(kind, FIVE_M, self.args.repeat)
            out[kind] = result
            m = result["median"]
            label = "SQLite" if kind == "sqlite" else "PostgreSQL"
            target = "≤ 5 ms" if kind == "sqlite" else ""
            worst = max(m["now_p99_ms"], m["past_p99_ms"])
            self.row(
                "2",
                f"lookup p50 / p99 as of now, {label} 5M, writing",
                f"{m['now_p50_ms']:.2f} / {m['now_p99_ms']:.2f} ms",
                "p99 ≤ 5 ms" if target else "",
                worst <= 5 if target else None,
            )
            self.row(
                "2",
                f"lookup p50 / p99 as of a past time, {label} 5M, writing",
                f"{m['past_p50_ms']:.2f} / {m['past_p99_ms']:.2f} ms",
            )
            threaded = self.lookup_threads(kind)
            out[kind]["threads"] = threaded
            for threads, figures in threaded.items():
                self.row(
                    "2",
                    f"lookups from {threads} thread{'s' if threads > 1 else ''} sharing one store, {label} 5M: "
                    "lookups/s; p50 / p99",
                    f"{figures['per_s']:,.0f}; {figures['p50_ms']:.2f} / {figures['p99_ms']:.2f} ms",
                )
        self.results["lookup"] = out

    def lookup_threads(self, kind: str, seconds: float = 5.0) -> dict[int, dict[str, float]]:
        """A threaded server's load on the 5M store (no writer): the median of ``--repeat`` runs
        for 1, 4 and 16 threads, run by run alternating the thread counts."""
        url = self.store(kind, FIVE_M)
        runs: dict[int, list[dict[str, float]]] = {1: [], 4: [], 16: []}
        for _i in range(self.args.repeat):
            for threads, per_run in runs.items():
                command = [sys.executable, str(BENCH / "lookup_client.py"), "--store", url, "--rows", str(FIVE_M)]
                command += ["--threads", str(threads), "--seconds", str(seconds)]
                done = subprocess.run(command, capture_output=True, check=True, cwd=REPO, timeout=300)
                data = json.loads(done.stdout)
                per_run.append(
                    {
                        "per_s": data["lookups"] / data["seconds"],
                        "p50_ms": pct(data["latencies_ms"], 0.5),
                        "p99_ms": pct(data["latencies_ms"], 0.99),
                    }
                )
                log(
                    f"  {kind} {threads:2} threads: {per_run[-1]['per_s']:,.0f} lookups/s, "
                    f"p50 {per_run[-1]['p50_ms']:.2f} p99 {per_run[-1]['p99_ms']:.2f} ms"
                )
        return {t: {k: median([r[k] for r in per_run]) for k in per_run[0]} for t, per_run in runs.items()}

    def memory(self) -> None:
        log("\n== 4. memory per child")
        url = self.store("sqlite", FIVE_M)
        # A GetRecords call returns at most 10 MiB: 100 records of 100 KiB is the largest batch a
        # daemon can hand a child (10,000 of them would be a 1.3 GB line, which Kinesis never sends).
        big = self.workload(batch_size=100, event_bytes=100 * 1024, batches=20)
        small = self.workload()
        out: dict[str, Any] = {}
        for name, workload in (("200 B x 10,000", small), ("100 KiB x 100", big)):
            series = Series(name, "MiB")
            for _i in range(self.args.repeat):
                run = self.ours(url, workload, self.shard("mem"))
                series.values.append(run.peak_rss_mib or float("nan"))
            out[name] = series.as_json() | {"line_mib": workload.mean_line_bytes / 2**20}
            log(f"  {name}: peak RSS {series.values} MiB (line {workload.mean_line_bytes / 2**20:.1f} MiB)")
            self.row(
                "4",
                f"peak RSS per child, batches of {name} (line {workload.mean_line_bytes / 2**20:.1f} MiB)",
                f"{max(series.values):.0f} MiB (max of {len(series.values)})",
                "≤ 150 MiB",
                max(series.values) <= 150,
            )
        self.results["memory"] = out

    def scaling(self) -> None:
        log("\n== 5. scaling with the store size (SQLite)")
        sizes = [1_000_000, FIVE_M] + ([] if self.args.quick else [20_000_000])
        out: dict[str, Any] = {}
        workload = self.workload()
        for rows in sizes:
            series = Series(f"{rows:,} rows", "records/s")
            for _i in range(self.args.repeat):
                url = self.fresh("sqlite", rows)
                series.values.append(self.ours(url, workload, self.shard(f"sc-{rows}")).rate)
            log(f"  {rows:,} rows: {[round(v) for v in series.values]} rec/s")
            lookups = self.lookup_series("sqlite", rows, self.args.repeat)
            m = lookups["median"]
            out[str(rows)] = {"throughput": series.as_json(), "lookup": lookups, "file_mib": stores.file_mib(url)}
            self.row(
                "5",
                f"SQLite {rows / 1e6:g}M rows: child rec/s; lookup p50/p99 now, past (writing)",
                f"{series.median:,.0f}; {m['now_p50_ms']:.2f}/{m['now_p99_ms']:.2f}, "
                f"{m['past_p50_ms']:.2f}/{m['past_p99_ms']:.2f} ms",
            )
        self.sustained(out)
        self.results["scaling"] = out

    def sustained(self, out: dict[str, Any]) -> None:
        """The store's apply alone over a long stream from 5M rows, so that the figure includes
        every merge the stream triggers (a run of 20 batches may fall between two large ones)."""
        workload = self.workload()
        per_round = workload.accepted
        rounds = max(1, (1_000_000 if self.args.quick else 7_000_000) // per_round)
        url = self.fresh("sqlite", FIVE_M)
        log(f"  sustained: the store's apply alone, {rounds * per_round:,} rows onto the 5M store ...")
        rates = self.store_alone(url, workload, self.shard("sustained"), rounds)
        overall = len(rates) / sum(1 / r for r in rates)  # rows/s over the whole stream
        rows = self.counts(url)[0]
        out["sustained"] = {
            "rows_applied": rounds * per_round,
            "rows_after": rows,
            "per_round": rates,
            "overall": overall,
        }
        log(f"  sustained: {overall:,.0f} rows/s overall; per {per_round:,} rows {min(rates):,.0f}..{max(rates):,.0f}")
        self.row(
            "5",
            f"SQLite store apply alone, sustained from 5M to {rows / 1e6:.1f}M rows (slowest / fastest {per_round:,})",
            f"{overall:,.0f} rows/s ({min(rates):,.0f} / {max(rates):,.0f})",
        )

    def e2e(self) -> None:
        import e2e

        log("\n== 3. end-to-end latency through the real daemon (local stack)")
        out = e2e.run(self.work, rounds=self.args.e2e_rounds, records=self.args.e2e_records, quick=self.args.quick)
        self.results["e2e"] = out
        for variant, label in (
            ("ours", "thyme kinesis run → row visible to lookup"),
            ("floor", "daemon → do-nothing child"),
        ):
            latency = out[variant]["latency_ms"]
            if variant == "ours":
                ok = latency["p50"] <= 250 and latency["p95"] <= 500
                target = "p50 ≤ 250, p95 ≤ 500 ms"
            else:
                ok, target = None, ""
            self.row(
                "3",
                f"PutRecord → {label}: p50 / p95 ({latency['count']} records)",
                f"{latency['p50']:.0f} / {latency['p95']:.0f} ms",
                target,
                ok,
            )
        for variant, label in out["startup_labels"].items():
            start = out[variant]["startup_s"]
            target = "≤ 20 s" if variant == "ours" else ""
            self.row(
                "3",
                f"start → first record {label} (median of {len(start)}; min-max)",
                f"{median(start):.1f} s ({min(start):.1f}-{max(start):.1f})",
                target,
                median(start) <= 20 if target else None,
            )

    # -- output ---------------------------------------------------------------------------

    def table(self) -> str:
        headers = ("#", "measurement", "figure (median of runs)", "target", "")
        ordered = sorted(self.rows, key=lambda r: r[0])  # by section; stable within one
        widths = [max(len(r[i]) for r in [headers, *ordered]) for i in range(5)]
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in ordered]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="10 batches per run, no 20M store, shorter e2e")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--batches", type=int, default=None, help="processRecords lines per run (default 20; quick 10)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL store")
    parser.add_argument("--e2e-rounds", type=int, default=None, help="daemon starts per variant (default 5)")
    parser.add_argument("--e2e-records", type=int, default=None, help="records per round at 20/s (default 60)")
    parser.add_argument("--seed", type=int, default=20240501)
    parser.add_argument("--cache", type=Path, default=BENCH / "results" / "cache", help="prefilled stores")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "suite.json")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    if args.batches is None:
        args.batches = 10 if args.quick else 20
    if args.e2e_rounds is None:
        args.e2e_rounds = 5
    if args.e2e_records is None:
        args.e2e_records = 40 if args.quick else 60
    args.repeat = max(1, args.repeat)

    began = time.monotonic()
    args.cache.mkdir(parents=True, exist_ok=True)  # results/ is not in a fresh clone
    with tempfile.TemporaryDirectory(prefix="thyme-suite-", dir=args.cache.parent) as tmp:
        bench = Bench(args, Path(tmp))
        steps: dict[str, Callable[[], None]] = {
            "throughput": bench.throughput,
            "lookup": bench.lookup,
            "memory": bench.memory,
            "scaling": bench.scaling,
            "e2e": bench.e2e,
        }
        errors: dict[str, str] = {}
        try:
            for name in SECTIONS:
                if name in only:
                    try:
                        bench.results.setdefault("load_average", {})[f"{name} start"] = os.getloadavg()
                        steps[name]()
                        bench.results["load_average"][f"{name} end"] = os.getloadavg()
                    except Exception as exc:  # one broken section must not lose the others
                        import traceback

                        traceback.print_exc()
                        errors[name] = f"{type(exc).__name__}: {exc}"
                        bench.row(name, "SECTION FAILED (see the log)", errors[name][:80], "", False)
                    write(args, bench, began, errors)
        finally:
            if bench.pg is not None:
                bench.pg.stop()
    log("\n" + bench.table())
    write(args, bench, began, errors)
    log(f"\nwrote {args.out} ({round(time.monotonic() - began)} s)")
    return 1 if errors else 0


def write(args: argparse.Namespace, bench: Bench, began: float, errors: dict[str, str]) -> None:
    """The JSON result so far (written after every section)."""
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - began),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "table": [
            dict(zip(("section", "measurement", "figure", "target", "verdict"), r, strict=True)) for r in bench.rows
        ],
        "results": bench.results,
        "errors": errors,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=asdict) + "\n")


if __name__ == "__main__":
    sys.exit(main())
