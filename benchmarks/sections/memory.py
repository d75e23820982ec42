"""Section 4, memory: the child's peak RSS for the largest batches."""

from __future__ import annotations

from typing import Any

from context import FIVE_M, Context, Series
from processor import (
    log,
)


def memory(ctx: Context) -> None:
    log("\n== 4. memory per child")
    url = ctx.store("sqlite", FIVE_M)
    # A GetRecords call returns at most 10 MiB: 100 records of 100 KiB is the largest batch a
    # daemon can hand a child (10,000 of them would be a 1.3 GB line, which Kinesis never sends).
    big = ctx.workload(batch_size=100, event_bytes=100 * 1024, batches=20)
    small = ctx.workload()
    out: dict[str, Any] = {}
    for name, workload in (("200 B x 10,000", small), ("100 KiB x 100", big)):
        series = Series(name, "MiB")
        for _i in range(ctx.args.repeat):
            run = ctx.ours(url, workload, ctx.shard("mem"))
            series.values.append(run.peak_rss_mib or float("nan"))
        out[name] = series.as_json() | {"line_mib": workload.mean_line_bytes / 2**20}
        log(f"  {name}: peak RSS {series.values} MiB (line {workload.mean_line_bytes / 2**20:.1f} MiB)")
        ctx.row(
            "4",
            f"peak RSS per child, batches of {name} (line {workload.mean_line_bytes / 2**20:.1f} MiB)",
            f"{max(series.values):.0f} MiB (max of {len(series.values)})",
            "≤ 150 MiB",
            max(series.values) <= 150,
        )
    ctx.results["memory"] = out
