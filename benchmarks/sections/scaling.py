"""Section 5, scaling: throughput and lookups as the SQLite store grows, and the store's apply
alone sustained over millions of rows."""

from __future__ import annotations

from typing import Any

import stores
from context import FIVE_M, Context, Series
from processor import (
    log,
)

from sections import lookup


def scaling(ctx: Context) -> None:
    log("\n== 5. scaling with the store size (SQLite)")
    sizes = [1_000_000, FIVE_M] + ([] if ctx.args.quick else [20_000_000])
    out: dict[str, Any] = {}
    workload = ctx.workload()
    for rows in sizes:
        series = Series(f"{rows:,} rows", "records/s")
        for _i in range(ctx.args.repeat):
            url = ctx.fresh("sqlite", rows)
            series.values.append(ctx.ours(url, workload, ctx.shard(f"sc-{rows}")).rate)
        log(f"  {rows:,} rows: {[round(v) for v in series.values]} rec/s")
        lookups = lookup.lookup_series(ctx, "sqlite", rows, ctx.args.repeat)
        m = lookups["median"]
        out[str(rows)] = {"throughput": series.as_json(), "lookup": lookups, "file_mib": stores.file_mib(url)}
        ctx.row(
            "5",
            f"SQLite {rows / 1e6:g}M rows: child rec/s; lookup p50/p99 now, past (writing)",
            f"{series.median:,.0f}; {m['now_p50_ms']:.2f}/{m['now_p99_ms']:.2f}, "
            f"{m['past_p50_ms']:.2f}/{m['past_p99_ms']:.2f} ms",
        )
    sustained(ctx, out)
    ctx.results["scaling"] = out


def sustained(ctx: Context, out: dict[str, Any]) -> None:
    """The store's apply alone over a long stream from 5M rows, so that the figure includes
    every merge the stream triggers (a run of 20 batches may fall between two large ones)."""
    workload = ctx.workload()
    per_round = workload.accepted
    rounds = max(1, (1_000_000 if ctx.args.quick else 7_000_000) // per_round)
    url = ctx.fresh("sqlite", FIVE_M)
    log(f"  sustained: the store's apply alone, {rounds * per_round:,} rows onto the 5M store ...")
    rates = ctx.store_alone(url, workload, ctx.shard("sustained"), rounds)
    overall = len(rates) / sum(1 / r for r in rates)  # rows/s over the whole stream
    rows = ctx.counts(url)[0]
    out["sustained"] = {
        "rows_applied": rounds * per_round,
        "rows_after": rows,
        "per_round": rates,
        "overall": overall,
    }
    log(f"  sustained: {overall:,.0f} rows/s overall; per {per_round:,} rows {min(rates):,.0f}..{max(rates):,.0f}")
    ctx.row(
        "5",
        f"SQLite store apply alone, sustained from 5M to {rows / 1e6:.1f}M rows (slowest / fastest {per_round:,})",
        f"{overall:,.0f} rows/s ({min(rates):,.0f} / {max(rates):,.0f})",
    )
