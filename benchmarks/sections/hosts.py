"""Sections 7 and 8, many shards on one host: what a shard costs (``benchmarks/shards.py``) and
catching up on every shard at once within a memory budget (``benchmarks/catchup.py``), each
case on a fresh local stack. Not in the default run (about 6 and 25 minutes): name them,
``benchmarks/run --only shards,catchup``. One run per case (a median would take hours here);
the scripts on their own take more options."""

from __future__ import annotations

from typing import Any

from context import Context
from processor import log

SHARD_COUNTS = (1, 8, 32, 64)
CATCHUP_RUNS: tuple[tuple[bool, int, str, int], ...] = (
    # (PostgreSQL, shards, --memory-budget, --max-records): the 8-shard runs are capped at 500
    # records, as KCL's and the budget's larger batches jam kinesis-mock (README); at 64 shards the
    # budget alone decides (470 and 226 records)
    (False, 8, "2GiB", 500),
    (False, 64, "1664MiB", 10_000),
    (True, 8, "2GiB", 500),
    (True, 64, "2GiB", 10_000),
)


def shards(ctx: Context) -> None:
    import shards as bench

    counts = (1, 8) if ctx.args.quick else SHARD_COUNTS
    log(f"\n== 7. cost per shard: one host holding {', '.join(map(str, counts))} shards (--idle-ms 1000)")
    results: list[dict[str, Any]] = []
    for count in counts:
        with bench.fresh_stack("thyme-shards-") as work:
            results.append(bench.one(count, work, idle_s=20.0, timeout_s=300.0))
        log(f"  {results[-1]}")
    ctx.results["shards"] = results
    most = results[-1]
    ctx.row(
        "7",
        f"every lease and first row, {most['shards']} shards on one host",
        f"{most['first_rows_s']:.1f} s",
        "≤ 60 s",
        most["first_rows_s"] <= 60,
    )
    child = max(r["child_rss_mib_max"] for r in results)
    ctx.row("7", "RSS of a waiting child (the largest, every count)", f"{child:.1f} MiB", "≤ 25 MiB", child <= 25)
    ctx.row(
        "7",
        "whole host RSS sum, by shard count",
        " / ".join(f"{r['tree_rss_mib']:.0f}" for r in results) + " MiB",
    )
    idle = most["idle_cpu_share_per_shard"] * 100
    ctx.row("7", f"idle CPU per shard at {most['shards']} shards", f"{idle:.2f}% of a core", "≤ 0.2%", idle <= 0.2)


def catchup(ctx: Context) -> None:
    import catchup as bench

    runs = [r for r in CATCHUP_RUNS if not (r[0] and ctx.args.no_postgres)]
    log("\n== 8. catch-up: every shard backlogged before the start, one host within --memory-budget")
    found: dict[tuple[bool, int], dict[str, Any]] = {}
    for postgres, count, size, max_records in runs:
        argv = ["--memory-budget", size, "--max-records", str(max_records)] + (["--postgres"] if postgres else [])
        if ctx.args.quick:
            argv += ["--total", "32000"]
        args = bench.options().parse_args(argv)
        found[(postgres, count)] = result = bench.measure(args, count)
        log(f"  {result}")
        store = "PostgreSQL" if postgres else "SQLite"
        budget_mib = bench.budget_mib(size)
        ctx.row(
            "8",
            f"{store}, {count} shards, --memory-budget {size}: peak PSS of the host (RSS sum)",
            f"{result['peak_tree_mib']} MiB ({result['peak_tree_rss_mib']})",
            f"≤ {budget_mib:.0f} MiB",
            result["peak_tree_mib"] <= budget_mib,
        )
        ctx.row(
            "8",
            f"{store}, {count} shards: rows/s; first / last shard caught up",
            f"{result['rows_per_s']}; {result['fastest_shard_s']} / {result['slowest_shard_s']} s",
        )
    ctx.results["catchup"] = [found[(p, c)] for p, c, _, _ in runs]
    for postgres in (False, True):
        if (postgres, 8) in found and (postgres, 64) in found:
            ratio = found[(postgres, 64)]["rows_per_s"] / found[(postgres, 8)]["rows_per_s"]
            ctx.row(
                "8",
                f"{'PostgreSQL' if postgres else 'SQLite'}: 64 shards' rows/s against 8 shards'",
                f"{ratio:.2f}x",
                "≥ 0.8x",
                ratio >= 0.8,
            )
