"""Section 1, throughput: our child against the floor, the peer, a child with no store, SQLite's
cheapest durable write, and two children at once."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from context import BENCH, FIVE_M, Context, Series
from processor import (
    DATASET,
    FLOOR_CHILD,
    Run,
    Workload,
    drive,
    log,
    processor_command,
)


def sqlite_ceiling(ctx: Context, workload: Workload) -> float:
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
    path = ctx.work / "ceiling.db"
    for stale in ctx.work.glob("ceiling.db*"):
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


def run_floor(ctx: Context, workload: Workload) -> Run:
    script = ctx.work / "floor_child.py"
    if not script.exists():
        script.write_text(FLOOR_CHILD)
    return drive([sys.executable, str(script)], workload, ctx.work / "floor.stderr.log")


def run_null_child(ctx: Context, workload: Workload) -> Run:
    """The real child with a store that keeps nothing (``null_child.py``)."""
    unused = f"sqlite:///{ctx.work / 'null-child-unused.db'}"
    command = [sys.executable, str(BENCH / "null_child.py"), "--dataset", DATASET, "--store", unused]
    return drive(command, workload, ctx.work / "null.stderr.log")


def run_peer(ctx: Context, url: str, workload: Workload, layout: str) -> Run:
    """One peer run; afterwards (untimed) its rows are removed so every run sees the same store."""
    import sqlite3

    path = url.removeprefix("sqlite:///")
    table = "peer_clicks" if layout == "plain" else "ds_SourcedClick_v1"
    db = sqlite3.connect(path, timeout=60)
    (before,) = db.execute(f'SELECT coalesce(max(rid), 0) FROM "{table}"').fetchone()
    (last_run,) = db.execute('SELECT coalesce(max(run), 0) FROM "ds_SourcedClick_v1_runs"').fetchone()
    db.close()
    command = [sys.executable, str(BENCH / "peer_child.py"), url, layout]
    run = drive(command, workload, ctx.work / "peer.stderr.log")
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


def run_pair(ctx: Context, url: str, workload: Workload, tag: str) -> float:
    """Two children on two shards of one store at once; their combined records/s."""
    barrier = threading.Barrier(2)
    runs: list[Run] = []
    errors: list[BaseException] = []

    def one(shard: str) -> None:
        try:
            runs.append(
                drive(processor_command(url), workload, ctx.work / f"{shard}.log", shard=shard, barrier=barrier)
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


def throughput(ctx: Context) -> None:
    log("\n== 1. processor throughput")
    repeat = ctx.args.repeat
    workload = ctx.workload()
    out: dict[str, Any] = {
        "records_per_run": workload.records,
        "mean_event_bytes": workload.mean_event_bytes,
        "mean_line_bytes": workload.mean_line_bytes,
        "accepted": workload.accepted,
        "dead_letters": dict(workload.dead_letters),
        "repeated_keys": workload.repeated_keys,
    }
    for kind in ("sqlite", "postgresql"):
        if kind == "postgresql" and ctx.args.no_postgres:
            continue
        ctx.store_rows = []
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
            url = ctx.fresh(kind, FIVE_M)
            f = run_floor(ctx, workload)
            shard = ctx.shard(f"tp-{kind}")
            o = ctx.ours(url, workload, shard)
            share.values.append(ctx.store_share(shard))
            floor.values.append(f.rate)
            ours.values.append(o.rate)
            ratio_floor.values.append(o.rate / f.rate)
            rss.values.append(o.peak_rss_mib or float("nan"))
            line = (
                f"  run {i + 1}/{repeat} {kind}: floor {f.rate:,.0f}, ours {o.rate:,.0f} rec/s "
                f"(store {share.values[-1]:.0%})"
            )
            if kind == "sqlite":
                p = run_peer(ctx, url, workload, "plain")
                peer.values.append(p.rate)
                ratio_peer.values.append(o.rate / p.rate)
                t = run_peer(ctx, url, workload, "runs")
                peer_tiers.values.append(t.rate)
                line += f", peer {p.rate:,.0f} (on Thyme's tables {t.rate:,.0f})"
                ceiling.values.append(sqlite_ceiling(ctx, workload))
                line += f", append-only ceiling {ceiling.values[-1]:,.0f} rows/s"
                n = run_null_child(ctx, workload)
                nothing.values.append(n.rate)
                # per record: the child's own work, then the cheapest durable write of its row
                bound.values.append(1 / (1 / n.rate + 1 / ceiling.values[-1]) / f.rate)
                line += f", child without a store {n.rate:,.0f} (bound {bound.values[-1]:.2f}x floor)"
            alone.values += ctx.store_alone(url, workload, ctx.shard(f"alone-{kind}"))
            line += f", store alone {alone.values[-1]:,.0f} rows/s"
            two = run_pair(ctx, url, workload, ctx.shard(f"pair-{kind}"))
            pair.values.append(two)
            ratio_pair.values.append(two / o.rate)
            log(line + f", two children {two:,.0f} rec/s together")
        label = "SQLite" if kind == "sqlite" else "PostgreSQL"
        out[f"{kind} store rows before each run"] = list(ctx.store_rows)
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
        ctx.row("1", f"child records/s, {label} 5M rows", f"{ours.median:,.0f}", "≥ 50,000", ours.median >= 50_000)
        ctx.row("1", f"  of the child's batch time, in the store's apply ({label})", f"{share.median:.0%}")
        ctx.row(
            "1",
            f"  store apply alone, rows decoded beforehand ({label}; {alone.median / floor.median:.2f}x floor)",
            f"{alone.median:,.0f} rows/s",
        )
        if ceiling.values:
            ctx.row(
                "1",
                f"  SQLite's cheapest durable write: append, no index ({ceiling.median / floor.median:.2f}x floor)",
                f"{ceiling.median:,.0f} rows/s",
            )
        if nothing.values:
            ctx.row(
                "1",
                f"  the child with a store that keeps nothing ({nothing.median / floor.median:.2f}x floor)",
                f"{nothing.median:,.0f}",
            )
            ctx.row(
                "1",
                "  so no durable SQLite store can exceed (that child + the append-only ceiling per record)",
                f"{bound.median:.2f}x floor",
            )
        ctx.row("1", f"floor records/s (same runs, {label})", f"{floor.median:,.0f}")
        ctx.row("1", f"ours / floor, {label}", f"{ratio_floor.median:.2f}x", "≥ 0.4x", ratio_floor.median >= 0.4)
        if peer.values:
            ctx.row(
                "1",
                "peer records/s (Powertools + pydantic + executemany into an indexed table), SQLite 5M",
                f"{peer.median:,.0f}",
            )
            ctx.row(
                "1", "  the peer writing into Thyme's tables (a run per batch) instead", f"{peer_tiers.median:,.0f}"
            )
            ctx.row("1", "ours / peer, SQLite", f"{ratio_peer.median:.2f}x", "≥ 3x", ratio_peer.median >= 3)
        ctx.row(
            "1",
            f"two children together / one, {label}",
            f"{ratio_pair.median:.2f}x ({pair.median:,.0f} rec/s)",
            "≥ 1.6x",
            ratio_pair.median >= 1.6,
        )
        ctx.row(
            "4",
            f"peak RSS per child, 10,000 x 200 B batches, {label}",
            f"{max(rss.values):.0f} MiB (max)",
            "≤ 150 MiB",
            max(rss.values) <= 150,
        )
    ctx.results["throughput"] = out
