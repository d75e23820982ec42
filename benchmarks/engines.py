"""The local stack's two engines side by side: kinesis-mock + moto, and LocalStack + moto.

Per round, for each engine in turn (alternating, so both see the same machine):

* **start-up**: ``LocalAWS.start()`` on a fresh state directory, until every server answers
  (with LocalStack: its gateway, STS, and Kinesis for the account, whose first call starts
  its kinesis-mock); installs are done before any timing. Then **stop**, at the end.
* **put throughput**: a fresh 2-shard stream, ``--put-batches`` batches of 2,000 ~150-byte
  records, each batch as four ``PutRecords`` calls of 500 (``streams.put_payloads``); records/s
  of the first batch, and of the last (kinesis-mock slows down as a stream grows).
* **consumer**: ``benchmarks/e2e.py``'s round, as in the suite: a fresh 1-shard stream with 5
  records, ``thyme kinesis run`` on a new application; *first record* is the time from
  starting it to the first row a lookup finds; then ``--records`` records put one by one at
  20/s, each timed from ``PutRecord`` returning to the row being visible to a lookup.
* **memory**: the resident memory of the stack's processes after the consumer round.

    .venv/bin/python benchmarks/engines.py                 # 3 rounds
    .venv/bin/python benchmarks/engines.py --rounds 1 --put-batches 1 --records 20

Results: a table on stdout (medians over the rounds) and ``benchmarks/results/engines.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import boto3

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
for entry in (str(REPO), str(REPO / "scripts"), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import local_aws  # noqa: E402
import streams  # noqa: E402
from e2e import Round, summary  # noqa: E402
from processor import log  # noqa: E402

BATCH: Final = 2000


def _payloads(batch: int) -> list[tuple[str, bytes]]:
    at = "2026-01-01T00:00:00+00:00"
    return [
        (f"u{n % 97}", json.dumps({"user_id": f"u{n % 97}", "n": n, "page": f"/p{n}", "timestamp": at}).encode())
        for n in range(batch * BATCH, (batch + 1) * BATCH)
    ]


def _rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def one_round(engine: str, work: Path, index: int, put_batches: int, records: int) -> dict[str, Any]:
    saved = dict(os.environ)
    stack = local_aws.LocalAWS(state_dir=work / f"{engine}-{index}" / "stack", engine=engine)
    began = time.monotonic()
    stack.start()
    startup_s = time.monotonic() - began
    result: dict[str, Any] = {"startup_s": startup_s}
    try:
        os.environ.update(stack.env())
        boto3.DEFAULT_SESSION = None  # it keeps the credentials it first found (the engines' differ)
        client = streams.kinesis_client()
        stream = f"bench-put-{uuid.uuid4().hex[:6]}"
        streams.create_stream(client, stream, 2)
        rates = []
        for batch in range(put_batches):
            payloads = _payloads(batch)
            put_began = time.monotonic()
            streams.put_payloads(client, stream, payloads)
            rates.append(len(payloads) / (time.monotonic() - put_began))
        result["put_rates"] = rates
        outcome = Round(work / f"{engine}-{index}", stack.env(), "ours", index, records).run()
        result["first_record_s"] = outcome["startup_s"]
        result["latency_ms"] = outcome["latency_ms"]
        state = stack.state
        pids = [state.kinesis.pid, state.moto.pid, *[p.pid for p in local_aws._spawned_by(state.kinesis)]]
        result["stack_rss_mb"] = _rss_mb(pids)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stopped = time.monotonic()
        stack.stop()
        result["stop_s"] = time.monotonic() - stopped
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--put-batches", type=int, default=5, help="batches of 2,000 records on one stream")
    parser.add_argument("--records", type=int, default=40, help="records for the put-to-visible latency")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "engines.json")
    args = parser.parse_args(argv)
    for engine in local_aws.ENGINES:
        local_aws.install(engine)  # never timed
    work = Path(tempfile.mkdtemp(prefix="thyme-engines-"))
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in local_aws.ENGINES}
    for index in range(args.rounds):
        for engine in local_aws.ENGINES:
            found = one_round(engine, work, index, args.put_batches, args.records)
            runs[engine].append(found)
            log(
                f"round {index + 1}/{args.rounds} {engine}: start-up {found['startup_s']:.1f} s, put "
                f"{found['put_rates'][0]:.0f} -> {found['put_rates'][-1]:.0f} rec/s, first record "
                f"{found['first_record_s']:.1f} s, latency p50 {summary(found['latency_ms'])['p50']:.0f} ms, "
                f"stack {found['stack_rss_mb']:.0f} MB, stop {found['stop_s']:.1f} s"
            )
    table: dict[str, dict[str, float]] = {}
    for engine, rounds in runs.items():
        latencies = [v for run in rounds for v in run["latency_ms"]]
        table[engine] = {
            "startup_s": statistics.median(r["startup_s"] for r in rounds),
            "put_first_2000_rec_s": statistics.median(r["put_rates"][0] for r in rounds),
            f"put_after_{(args.put_batches - 1) * BATCH}_rec_s": statistics.median(r["put_rates"][-1] for r in rounds),
            "first_record_s": statistics.median(r["first_record_s"] for r in rounds),
            "latency_p50_ms": summary(latencies)["p50"],
            "latency_p95_ms": summary(latencies)["p95"],
            "stack_rss_mb": statistics.median(r["stack_rss_mb"] for r in rounds),
            "stop_s": statistics.median(r["stop_s"] for r in rounds),
        }
    names = list(next(iter(table.values())))
    log(f"\nmedians of {args.rounds} rounds ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    log(f"{'':28}" + "".join(f"{engine:>16}" for engine in table))
    for name in names:
        log(f"{name:28}" + "".join(f"{table[engine][name]:16.1f}" for engine in table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "medians": table, "runs": runs}, indent=2) + "\n"
    )
    log(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
