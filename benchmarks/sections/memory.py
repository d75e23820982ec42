"""Section 4, memory: the child's peak RSS for the largest batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from context import FIVE_M, REPO, Context, Series
from processor import (
    DATASET,
    log,
)


def idle_child(url: str, shard: str) -> tuple[float, float]:
    """A child that has answered ``initialize`` and waits for records (a quiet shard): its RSS in
    MiB, and seconds from its start to the answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THYME_")}
    env["PYTHONPATH"] = str(REPO)
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "record_processor", "--dataset", DATASET, "--store", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env=env,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        message = {"action": "initialize", "shardId": shard, "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0}
        child.stdin.write(json.dumps(message).encode() + b"\n")
        child.stdin.flush()
        while not (line := child.stdout.readline()).strip():
            if not line:
                raise RuntimeError("the child closed stdout before answering initialize")
        answered = time.perf_counter() - started
        with open(f"/proc/{child.pid}/status", encoding="ascii") as status:
            rss_kib = next(int(row.split()[1]) for row in status if row.startswith("VmRSS:"))
        return rss_kib / 1024, answered
    finally:
        child.stdin.close()
        child.wait(timeout=60)


def memory(ctx: Context) -> None:
    log("\n== 4. memory per child")
    url = ctx.store("sqlite", FIVE_M)
    # A GetRecords call returns at most 10 MiB: 100 records of 100 KiB is the largest batch a
    # daemon can hand a child (10,000 of them would be a 1.3 GB line, which Kinesis never sends).
    big = ctx.workload(batch_size=100, event_bytes=100 * 1024, batches=20)
    small = ctx.workload()
    out: dict[str, Any] = {}
    idle, ready = Series("idle child RSS", "MiB"), Series("child start to initialize answered", "s")
    for _i in range(ctx.args.repeat):
        rss, seconds = idle_child(url, ctx.shard("idle"))
        idle.values.append(rss)
        ready.values.append(seconds)
    out["idle"] = idle.as_json() | {"ready_s": ready.as_json()}
    log(f"  idle child: RSS {idle.values} MiB, initialize answered after {ready.values} s")
    ctx.row(
        "4",
        "RSS of a child waiting for records (after initialize; a quiet shard)",
        f"{idle.median:.1f} MiB (ready in {ready.median:.2f} s)",
        "≤ 25 MiB",
        idle.median <= 25,
    )
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
