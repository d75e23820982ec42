"""Catch-up after an outage: every shard backlogged at once, one host, and what it costs.

For each shard count, on a fresh local stack: a stream with that many shards; ``--total``
records of ``--record-bytes`` spread evenly over its shards (by explicit hash key, from
``--producers`` threads; see ``BULK_UP_TO``) *before* the consumer starts; then ``thyme kinesis run`` on a new
application from TRIM_HORIZON (SQLite store, or PostgreSQL with ``--postgres``), with
``--memory-budget`` (with ``--max-shards`` the shard count), ``--max-records`` and
``THYME_JAVA_OPTS`` as given. Sampled every 0.5 s: the memory of the launcher, the JVM and every
child (the whole tree's peak PSS is what a container's limit holds; its RSS sum, what the budget
models), and the CPU time of every part and of the emulators; every second: rows per shard in
the store. Reported: seconds until every record is a row, aggregate rows/s (from the first row
to the last: start-up excluded), the fastest and slowest shard's finishing time (no shard
starved: their ratio), the peaks, and the cores each part used while catching up.

The local emulator is slow to fill: its PutRecords slows down as a shard grows (see
``BULK_UP_TO``), its PutRecord takes ~500 records/s whatever the size. So the backlog is scaled
down from 64 shards x 20,000 records (1.28M records, ~45 minutes to produce) to the same total for
every shard count: 160,000 records of 512 B, i.e. 20,000 per shard on 8 shards and 2,500 per
shard on 64 (``--total``, ``--record-bytes``); producing it takes 3-6 minutes.

    .venv/bin/python benchmarks/catchup.py --memory-budget 2GiB             # 8 and 64 shards
    .venv/bin/python benchmarks/catchup.py --shards 64 --memory-budget 2GiB --postgres
    .venv/bin/python benchmarks/catchup.py --shards 64 --max-records 500 --java-opts "-Xmx256m"

Results: a table on stdout and ``benchmarks/results/catchup.json`` (appended per run).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
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

import local_aws  # noqa: E402
import streams  # noqa: E402
from processor import proc_cpu_seconds  # noqa: E402
from shards import THYME, _cmdline, fresh_stack, stop  # noqa: E402

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


BULK_UP_TO: Final = 4_000
"""Records per shard put with PutRecords (500 a call) before switching to one PutRecord each.
kinesis-mock 0.6.2 groups a PutRecords call's entries by (shard, every record already in that
shard): each entry costs time in proportion to the shard's length (measured: 0.6 ms a record
on an empty shard, 2.9 ms at 6,000), so filling a shard that way is quadratic. PutRecord appends
in constant time (~2.1 ms a record here, the emulator's own CPU): the cheaper one past ~4,000."""


def produce(client: Any, stream: str, records: int, size: int, producers: int) -> float:
    """Put ``records`` records on every shard; returns the seconds it took."""
    shards = client.list_shards(StreamName=stream)["Shards"]
    started = time.monotonic()
    now = time.time()

    def one_shard(shard: dict[str, Any]) -> None:
        key, sid = shard["HashKeyRange"]["StartingHashKey"], shard["ShardId"]

        def record(n: int) -> dict[str, Any]:
            body = {"id": f"{sid}-{n}", "shard": sid, "pad": "", "timestamp": now}
            body["pad"] = "x" * max(0, size - len(json.dumps(body)))
            return {"Data": json.dumps(body).encode(), "PartitionKey": "p", "ExplicitHashKey": key}

        bulk = min(records, BULK_UP_TO)
        for start in range(0, bulk, 500):
            batch = [record(n) for n in range(start, min(bulk, start + 500))]
            while batch:
                reply = client.put_records(StreamName=stream, Records=batch)
                batch = [r for r, e in zip(batch, reply["Records"], strict=True) if "SequenceNumber" not in e]
                if batch:
                    time.sleep(0.2)
        for n in range(bulk, records):
            client.put_record(StreamName=stream, **record(n))

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


def _memory_kib(pid: int) -> dict[str, int]:
    """Rss, Pss (shared pages split among their sharers: the sum over a tree is what its cgroup
    holds) and Anonymous of one process, in KiB; empty once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            rows = [row.split() for row in rollup if row.startswith(("Rss:", "Pss:", "Anonymous:"))]
    except OSError:
        return {}
    return {row[0].rstrip(":"): int(row[1]) for row in rows}


class Sampler:
    """Peaks of the consumer's process tree every 0.5 s: the tree's PSS (shared libraries and
    file pages counted once, as a container's memory limit counts them) and RSS sum (each
    process's shared pages counted again), the JVM's RSS, the largest child's RSS and anonymous
    memory (its own heap: what a batch grows), and the children's PSS together.

    And the CPU time of every process of the tree and of the servers in ``others`` (the
    emulators, PostgreSQL; each with its descendants), by part: the host has two cores, and
    whichever part uses them decides the throughput."""

    def __init__(self, pid: int, others: dict[str, int]) -> None:
        self.pid = pid
        self.others = others
        self.tree = self.tree_rss = self.jvm = self.child = self.child_anon = self.children_pss = 0
        self.children = 0
        self._cpu: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            tree = [self.pid, *streams.descendants(self.pid)]
            memory = {p: _memory_kib(p) for p in tree}
            jvm = [p for p in tree if b"MultiLangDaemon" in _cmdline(p)]
            children = [p for p in tree if b"record_processor" in _cmdline(p)]
            self.tree = max(self.tree, sum(m.get("Pss", 0) for m in memory.values()))
            self.tree_rss = max(self.tree_rss, sum(m.get("Rss", 0) for m in memory.values()))
            self.jvm = max(self.jvm, sum(memory[p].get("Rss", 0) for p in jvm))
            self.child = max(self.child, max((memory[p].get("Rss", 0) for p in children), default=0))
            self.child_anon = max(self.child_anon, max((memory[p].get("Anonymous", 0) for p in children), default=0))
            self.children_pss = max(self.children_pss, sum(memory[p].get("Pss", 0) for p in children))
            self.children = max(self.children, len(children))
            self._count_cpu(tree, jvm, children)

    def _count_cpu(self, tree: list[int], jvm: list[int], children: list[int]) -> None:
        parts = {p: "jvm" for p in jvm} | {p: "children" for p in children}
        parts |= {p: "launcher" for p in tree if p not in parts}
        for name, root in self.others.items():
            parts |= {p: name for p in [root, *streams.descendants(root)]}
        with self._lock:  # the last reading of a process that has exited still counts
            for pid, part in parts.items():
                seconds = proc_cpu_seconds(pid)
                if seconds is not None:
                    self._cpu[pid] = (part, seconds)

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far by each part (as of the last sample)."""
        used: dict[str, float] = {}
        with self._lock:
            for part, seconds in self._cpu.values():
                used[part] = used.get(part, 0.0) + seconds
        return used

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def one(args: argparse.Namespace, shards: int, work: Path, store_url: str, postmaster: int | None) -> dict[str, Any]:
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
    if args.memory_budget:
        command += ["--memory-budget", args.memory_budget, "--max-shards", str(shards)]
        command += ["--record-size", str(args.record_bytes)]
    args.logs.mkdir(parents=True, exist_ok=True)
    log_path = args.logs / f"consumer-{shards}-{name}.log"
    log = log_path.open("wb")
    began = time.monotonic()
    consumer = subprocess.Popen(command, stdout=log, stderr=log, cwd=work, env=env)
    state = local_aws.LocalAWS.attach(work / "aws").state
    servers = {"emulator": state.kinesis.pid, "moto": state.moto.pid}
    if postmaster is not None:
        servers["postgres"] = postmaster
    sampler = Sampler(consumer.pid, servers)
    cpu_at_first_row: dict[str, float] = {}
    finished: dict[str, float] = {}
    first_row: float | None = None
    try:
        deadline = began + args.timeout_s
        while True:
            if consumer.poll() is not None:
                raise RuntimeError(f"the consumer exited ({consumer.returncode}); see {log_path}")
            counts = rows_per_shard(store_url)
            if first_row is None and counts:
                first_row = time.monotonic() - began
                cpu_at_first_row = sampler.cpu_s()
            for shard, count in counts.items():
                if count >= per_shard and shard not in finished:
                    finished[shard] = time.monotonic() - began
            if len(finished) == shards:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sum(counts.values())} of {total} rows after {args.timeout_s}s; see {log_path}")
            time.sleep(1)
        took = max(finished.values())
        first = min(finished.values())
        time.sleep(0.6)  # one more sample
        spent = sampler.cpu_s()
        catching_up = max(0.1, took - (first_row or 0.0))
        cores = {
            part: round((s - cpu_at_first_row.get(part, 0.0)) / catching_up, 2) for part, s in sorted(spent.items())
        }
        return {
            "shards": shards,
            "records_per_shard": per_shard,
            "record_bytes": args.record_bytes,
            "max_records": args.max_records,
            "java_opts": args.java_opts,
            "budget": f"budget {args.memory_budget}" if args.memory_budget else "",
            "store": store_url.split(":", 1)[0],
            "produce_s": round(produced_s, 1),
            "catch_up_s": round(took, 1),
            "first_row_s": round(first_row or 0.0, 1),
            "rows_per_s": round(total / max(0.1, took - (first_row or 0.0))),
            "fastest_shard_s": round(first, 1),
            "slowest_shard_s": round(took, 1),
            "peak_tree_mib": round(sampler.tree / 1024),
            "peak_tree_rss_mib": round(sampler.tree_rss / 1024),
            "peak_jvm_mib": round(sampler.jvm / 1024),
            "peak_children_pss_mib": round(sampler.children_pss / 1024),
            "peak_child_mib": round(sampler.child / 1024, 1),
            "peak_child_anon_mib": round(sampler.child_anon / 1024, 1),
            "children": sampler.children,
            "cpu_cores": cores,
        }
    finally:
        sampler.stop()
        stop(consumer)
        log.close()


def budget_mib(size: str) -> float:
    """A ``--memory-budget`` in MiB, as ``run`` reads it."""
    from thyme.kinesis.budget import MIB, parse_size

    return parse_size(size, "--memory-budget") / MIB


def measure(args: argparse.Namespace, shards: int) -> dict[str, Any]:
    """One catch-up of ``shards`` shards on a fresh local stack (and a fresh PostgreSQL server
    with ``args.postgres``)."""
    with fresh_stack("thyme-catchup-") as work:
        if args.postgres:
            from tests.pg_server import PgServer

            with PgServer() as pg:
                postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
                return one(args, shards, work, pg.create_database(), postmaster)
        return one(args, shards, work, f"sqlite:///{work / 'catchup.db'}", None)


def options() -> argparse.ArgumentParser:
    """The options, also the defaults ``benchmarks/run --only catchup`` starts from."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--shards", default="8,64", help="comma-separated shard counts")
    parser.add_argument("--total", type=int, default=160_000, help="records in all, spread evenly over the shards")
    parser.add_argument("--record-bytes", type=int, default=512)
    parser.add_argument("--producers", type=int, default=4, help="producer threads")
    parser.add_argument("--max-records", type=int, default=10_000, help="run --max-records")
    parser.add_argument("--java-opts", default="", help="THYME_JAVA_OPTS for the daemon")
    parser.add_argument(
        "--memory-budget", default="", help="run --memory-budget (with --max-shards the shard count, --record-size)"
    )
    parser.add_argument("--postgres", action="store_true", help="a PostgreSQL store instead of SQLite")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--logs", type=Path, default=Path(tempfile.gettempdir()) / "thyme-catchup-logs", help="the consumers' logs"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "catchup.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = options().parse_args(argv)
    results = []
    for count in [int(n) for n in args.shards.split(",")]:
        result = measure(args, count)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(
        "\nshards  store  settings                 catch-up  rows/s  fastest/slowest shard  "
        "peak tree PSS (RSS sum)  JVM RSS  children PSS  largest child RSS (anon)"
    )
    for r in results:
        settings = r["budget"] or f"max-records {r['max_records']}"
        print(
            f"{r['shards']:>6}  {r['store']:<6} {settings:<24} {r['catch_up_s']:>7.1f}s  "
            f"{r['rows_per_s']:>6}  {r['fastest_shard_s']:>9.1f}/{r['slowest_shard_s']:.1f}s  "
            f"{r['peak_tree_mib']:>9} MiB ({r['peak_tree_rss_mib']})  {r['peak_jvm_mib']:>5} MiB  "
            f"{r['peak_children_pss_mib']:>8} MiB  {r['peak_child_mib']:>8} MiB ({r['peak_child_anon_mib']})"
        )
    print("\ncores used while catching up (CPU seconds / seconds from the first row to the last):")
    for r in results:
        print(f"{r['shards']:>6}  " + ", ".join(f"{part} {cores:.2f}" for part, cores in r["cpu_cores"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    args.out.write_text(json.dumps({"results": previous + results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
