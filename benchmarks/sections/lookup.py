"""Section 2, lookups: latency in a separate process while a child writes, and a threaded
server's load (1, 4, 16 threads sharing one store)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from context import BENCH, FIVE_M, REPO, Context, median
from processor import (
    Workload,
    log,
    pct,
)


def lookups_while_writing(ctx: Context, url: str, rows: int, workload: Workload, shard: str) -> dict[str, Any]:
    """One run: a lookup client in its own process, a child writing ``workload`` meanwhile."""
    ready, stop = ctx.work / f"{shard}.ready", ctx.work / f"{shard}.stop"
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
        run = ctx.ours(url, workload, shard, check=False)
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


def lookup_series(ctx: Context, kind: str, rows: int, runs: int) -> dict[str, Any]:
    workload = ctx.workload()
    per_run = []
    for i in range(runs):
        url = ctx.fresh(kind, rows)
        result = lookups_while_writing(ctx, url, rows, workload, ctx.shard(f"lk-{kind}-{rows}"))
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


def lookup(ctx: Context) -> None:
    log("\n== 2. lookup latency while a child writes")
    out: dict[str, Any] = {}
    for kind in ("sqlite", "postgresql"):
        if kind == "postgresql" and ctx.args.no_postgres:
            continue
        result = lookup_series(ctx, kind, FIVE_M, ctx.args.repeat)
        out[kind] = result
        m = result["median"]
        label = "SQLite" if kind == "sqlite" else "PostgreSQL"
        target = "≤ 5 ms" if kind == "sqlite" else ""
        worst = max(m["now_p99_ms"], m["past_p99_ms"])
        ctx.row(
            "2",
            f"lookup p50 / p99 as of now, {label} 5M, writing",
            f"{m['now_p50_ms']:.2f} / {m['now_p99_ms']:.2f} ms",
            "p99 ≤ 5 ms" if target else "",
            worst <= 5 if target else None,
        )
        ctx.row(
            "2",
            f"lookup p50 / p99 as of a past time, {label} 5M, writing",
            f"{m['past_p50_ms']:.2f} / {m['past_p99_ms']:.2f} ms",
        )
        threaded = lookup_threads(ctx, kind)
        out[kind]["threads"] = threaded
        for threads, figures in threaded.items():
            ctx.row(
                "2",
                f"lookups from {threads} thread{'s' if threads > 1 else ''} sharing one store, {label} 5M: "
                "lookups/s; p50 / p99",
                f"{figures['per_s']:,.0f}; {figures['p50_ms']:.2f} / {figures['p99_ms']:.2f} ms",
            )
    ctx.results["lookup"] = out


def lookup_threads(ctx: Context, kind: str, seconds: float = 5.0) -> dict[int, dict[str, float]]:
    """A threaded server's load on the 5M store (no writer): the median of ``--repeat`` runs
    for 1, 4 and 16 threads, run by run alternating the thread counts."""
    url = ctx.store(kind, FIVE_M)
    runs: dict[int, list[dict[str, float]]] = {1: [], 4: [], 16: []}
    for _i in range(ctx.args.repeat):
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
