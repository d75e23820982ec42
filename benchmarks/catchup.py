"""Catch-up after an outage: every shard backlogged at once, one host, and what it costs.

For each shard count, on a fresh local stack: a stream with that many shards; ``--records``
records of ``--record-bytes`` put on every shard (by explicit hash key, 500 per PutRecords, from
``--producers`` threads) *before* the consumer starts; then ``thyme kinesis run`` on a new
application from TRIM_HORIZON (SQLite store, or PostgreSQL with ``--postgres``), with
``--max-records`` and ``THYME_JAVA_OPTS`` as given. Sampled every 0.5 s: the RSS of the launcher,
the JVM and every child (the whole tree's peak is the figure a pod limit must hold); every second:
rows per shard in the store. Reported: seconds until every record is a row,
aggregate rows/s (from the first row to the last: start-up excluded), the fastest and
slowest shard's finishing time (no shard starved: their ratio), peak RSS of the
tree, the JVM and the largest child.

The local emulator is slow to fill (kinesis-mock takes ~1,000 records/s through PutRecords from
four threads here), so the backlog is scaled down from 64 shards x 20,000 records (1.28M records,
~20 minutes to produce) to the same total for every shard count: 160,000 records of 512 B, i.e.
20,000 per shard on 8 shards and 2,500 per shard on 64 (``--total``, ``--record-bytes``).

    .venv/bin/python benchmarks/catchup.py                          # 8 and 64 shards
    .venv/bin/python benchmarks/catchup.py --shards 64 --max-records 250 --java-opts "-Xmx256m"

Results: a table on stdout and ``benchmarks/results/catchup.json`` (appended per run).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(BENCH))

import streams  # noqa: E402
from shards import THYME, _cmdline, _rss_kib, fresh_stack, stop  # noqa: E402

APP: Final = """\
from datetime import datetime

from thyme import Field, dataset, field
from thyme.connectors import KinesisSource, source


@source(KinesisSource(stream_arn={arn!r}, init_position="trim_horizon"))
@dataset(index=True)
class Backlog:
    id: Field[str] = field(key=True)
    shard: Field[str] = field()
    pad: Field[str] = field()
    timestamp: Field[datetime] = field(timestamp=True)
"""


def produce(client: Any, stream: str, records: int, size: int, producers: int) -> float:
    """Put ``records`` records on every shard; returns the seconds it took."""
    shards = client.list_shards(StreamName=stream)["Shards"]
    started = time.monotonic()
    now = time.time()

    def one_shard(shard: dict[str, Any]) -> None:
        key, sid = shard["HashKeyRange"]["StartingHashKey"], shard["ShardId"]
        for start in range(0, records, 500):
            batch = []
            for n in range(start, min(records, start + 500)):
                body = {"id": f"{sid}-{n}", "shard": sid, "pad": "", "timestamp": now}
                body["pad"] = "x" * max(0, size - len(json.dumps(body)))
                batch.append({"Data": json.dumps(body).encode(), "PartitionKey": "p", "ExplicitHashKey": key})
            while batch:
                reply = client.put_records(StreamName=stream, Records=batch)
                batch = [r for r, e in zip(batch, reply["Records"], strict=True) if "SequenceNumber" not in e]
                if batch:
                    time.sleep(0.2)

    with ThreadPoolExecutor(producers) as pool:
        list(pool.map(one_shard, shards))
    return time.monotonic() - started


def rows_per_shard(url: str) -> dict[str, int]:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return {}
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            found = db.execute("SELECT json_extract(row, '$.shard'), count(*) FROM ds_Backlog_v1 GROUP BY 1").fetchall()
        except sqlite3.OperationalError:
            return {}
        finally:
            db.close()
        return {str(s): int(c) for s, c in found}
    import psycopg

    with psycopg.connect(url) as conn:
        try:
            found = conn.execute("SELECT row::json ->> 'shard', count(*) FROM \"ds_Backlog_v1\" GROUP BY 1").fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {str(s): int(c) for s, c in found}


class Sampler:
    """Peak RSS of the consumer's process tree, the JVM and the largest child, every 0.5 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tree = self.jvm = self.child = self.children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            tree = [self.pid, *streams.descendants(self.pid)]
            rss = {p: _rss_kib(p) for p in tree}
            jvm = [p for p in tree if b"MultiLangDaemon" in _cmdline(p)]
            children = [p for p in tree if b"record_processor" in _cmdline(p)]
            self.tree = max(self.tree, sum(rss.values()))
            self.jvm = max(self.jvm, sum(rss[p] for p in jvm))
            self.child = max(self.child, max((rss[p] for p in children), default=0))
            self.children = max(self.children, len(children))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def one(args: argparse.Namespace, shards: int, work: Path, store_url: str) -> dict[str, Any]:
    per_shard = args.total // shards
    client = streams.kinesis_client()
    name = f"bench-catchup-{shards}-{uuid.uuid4().hex[:6]}"
    arn = streams.create_stream(client, name, shards)
    produced_s = produce(client, name, per_shard, args.record_bytes, args.producers)
    total = shards * per_shard
    app = work / f"app_{shards}.py"
    app.write_text(APP.format(arn=arn))
    env = {**os.environ, "THYME_JAVA_OPTS": args.java_opts} if args.java_opts else dict(os.environ)
    command = [THYME, "kinesis", "run", f"{app}:Backlog", "--store", store_url, "--max-records", str(args.max_records)]
    log = (work / f"consumer-{shards}.log").open("wb")
    began = time.monotonic()
    consumer = subprocess.Popen(command, stdout=log, stderr=log, cwd=work, env=env)
    sampler = Sampler(consumer.pid)
    finished: dict[str, float] = {}
    first_row: float | None = None
    try:
        deadline = began + args.timeout_s
        while True:
            if consumer.poll() is not None:
                raise RuntimeError(f"the consumer exited ({consumer.returncode}); see {log.name}")
            counts = rows_per_shard(store_url)
            if first_row is None and counts:
                first_row = time.monotonic() - began
            for shard, count in counts.items():
                if count >= per_shard and shard not in finished:
                    finished[shard] = time.monotonic() - began
            if len(finished) == shards:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sum(counts.values())} of {total} rows after {args.timeout_s}s; see {log.name}")
            time.sleep(1)
        took = max(finished.values())
        first = min(finished.values())
        return {
            "shards": shards,
            "records_per_shard": per_shard,
            "record_bytes": args.record_bytes,
            "max_records": args.max_records,
            "java_opts": args.java_opts,
            "store": store_url.split(":", 1)[0],
            "produce_s": round(produced_s, 1),
            "catch_up_s": round(took, 1),
            "first_row_s": round(first_row or 0.0, 1),
            "rows_per_s": round(total / max(0.1, took - (first_row or 0.0))),
            "fastest_shard_s": round(first, 1),
            "slowest_shard_s": round(took, 1),
            "peak_tree_mib": round(sampler.tree / 1024),
            "peak_jvm_mib": round(sampler.jvm / 1024),
            "peak_child_mib": round(sampler.child / 1024, 1),
            "children": sampler.children,
        }
    finally:
        sampler.stop()
        stop(consumer)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--shards", default="8,64", help="comma-separated shard counts")
    parser.add_argument("--total", type=int, default=160_000, help="records in all, spread evenly over the shards")
    parser.add_argument("--record-bytes", type=int, default=512)
    parser.add_argument("--producers", type=int, default=4, help="producer threads")
    parser.add_argument("--max-records", type=int, default=10_000, help="run --max-records")
    parser.add_argument("--java-opts", default="", help="THYME_JAVA_OPTS for the daemon")
    parser.add_argument("--postgres", action="store_true", help="a PostgreSQL store instead of SQLite")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "catchup.json")
    args = parser.parse_args(argv)
    results = []
    for count in [int(n) for n in args.shards.split(",")]:
        with fresh_stack("thyme-catchup-") as work:
            if args.postgres:
                from tests.pg_server import PgServer

                with PgServer() as pg:
                    result = one(args, count, work, pg.create_database())
            else:
                result = one(args, count, work, f"sqlite:///{work / 'catchup.db'}")
        results.append(result)
        print(json.dumps(result), flush=True)
    print("\nshards  store  max-records  catch-up  rows/s  fastest/slowest shard  peak tree  JVM  largest child")
    for r in results:
        print(
            f"{r['shards']:>6}  {r['store']:<6} {r['max_records']:>11}  {r['catch_up_s']:>7.1f}s  "
            f"{r['rows_per_s']:>6}  "
            f"{r['fastest_shard_s']:>9.1f}/{r['slowest_shard_s']:.1f}s  {r['peak_tree_mib']:>7} MiB  "
            f"{r['peak_jvm_mib']:>4}  {r['peak_child_mib']:>6} MiB"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    args.out.write_text(json.dumps({"results": previous + results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
