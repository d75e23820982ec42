"""Section 3, end to end: through the real daemon on the local stack (``benchmarks/e2e.py``)."""

from __future__ import annotations

from context import Context, median
from processor import (
    log,
)


def e2e(ctx: Context) -> None:
    import e2e

    log("\n== 3. end-to-end latency through the real daemon (local stack)")
    out = e2e.run(ctx.work, rounds=ctx.args.e2e_rounds, records=ctx.args.e2e_records, quick=ctx.args.quick)
    ctx.results["e2e"] = out
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
        ctx.row(
            "3",
            f"PutRecord → {label}: p50 / p95 ({latency['count']} records)",
            f"{latency['p50']:.0f} / {latency['p95']:.0f} ms",
            target,
            ok,
        )
    for variant, label in out["startup_labels"].items():
        start = out[variant]["startup_s"]
        target = "≤ 20 s" if variant == "ours" else ""
        ctx.row(
            "3",
            f"start → first record {label} (median of {len(start)}; min-max)",
            f"{median(start):.1f} s ({min(start):.1f}-{max(start):.1f})",
            target,
            median(start) <= 20 if target else None,
        )
