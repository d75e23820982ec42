"""What one host pays per shard: a consumer holding 1, 8, 32 or 64 shards of one stream.

For each shard count, on a fresh local stack (kinesis-mock + moto): a stream with that many
shards and one record put on every shard (by explicit hash key) before the consumer starts;
``thyme kinesis run`` on a new application (SQLite store, ``--idle-ms 1000`` so that the
emulator's own CPU does not dominate the host's); then

* **every shard's first row**: seconds from starting ``run`` until the store holds a row of
  every shard (which needs every lease held and every child initialised);
* **memory**: RSS of the launcher, the JVM and each child once every shard has delivered, and
  the whole tree's total;
* **idle CPU**: CPU seconds the whole tree (launcher, JVM, children) spends over
  ``--idle-s`` seconds afterwards, with nothing to read, as a share of one core per shard.

    .venv/bin/python benchmarks/shards.py                     # 1, 8, 32, 64 shards
    .venv/bin/python benchmarks/shards.py --shards 8 --idle-s 30

Results: a table on stdout and ``benchmarks/results/shards.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
sys.path.insert(0, str(REPO / "scripts"))

import local_aws  # noqa: E402
import streams  # noqa: E402
from processor import proc_cpu_seconds  # noqa: E402

THYME: Final = str(Path(sys.executable).with_name("thyme"))
APP: Final = """\
from datetime import datetime

from thyme import Field, dataset, field
from thyme.connectors import KinesisSource, source


@source(KinesisSource(stream_arn={arn!r}, init_position="trim_horizon"))
@dataset(index=True)
class Ping:
    shard: Field[str] = field(key=True)
    timestamp: Field[datetime] = field(timestamp=True)
"""


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return next(int(row.split()[1]) for row in status if row.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@contextlib.contextmanager
def fresh_stack(prefix: str) -> Iterator[Path]:
    """A scratch folder with a new local stack running, its endpoints in this process's environment."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        stack = local_aws.LocalAWS(state_dir=work / "aws")
        stack.start()
        try:
            os.environ.update(stack.env())
            yield work
        finally:
            stack.stop()


def stop(consumer: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as a container stop; after 120 s, kill -9 the whole tree."""
    consumer.send_signal(signal.SIGTERM)
    try:
        consumer.wait(120)
    except subprocess.TimeoutExpired:
        for pid in [consumer.pid, *streams.descendants(consumer.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        consumer.wait(30)


def one(shards: int, work: Path, idle_s: float, timeout_s: float) -> dict[str, Any]:
    client = streams.kinesis_client()
    name = f"bench-shards-{shards}-{uuid.uuid4().hex[:6]}"
    arn = streams.create_stream(client, name, shards)
    listed = client.list_shards(StreamName=name)["Shards"]
    now = time.time()
    for shard in listed:
        start = shard["HashKeyRange"]["StartingHashKey"]
        body = json.dumps({"shard": shard["ShardId"], "timestamp": now}).encode()
        client.put_record(StreamName=name, Data=body, PartitionKey="p", ExplicitHashKey=start)
    app = work / f"app_{shards}.py"
    app.write_text(APP.format(arn=arn))
    store = work / f"shards-{shards}.db"
    log = (work / f"consumer-{shards}.log").open("wb")
    began = time.monotonic()
    consumer = subprocess.Popen(
        [THYME, "kinesis", "run", f"{app}:Ping", "--store", f"sqlite:///{store}", "--idle-ms", "1000"],
        stdout=log,
        stderr=log,
        cwd=work,
    )
    try:

        def delivered() -> int:
            if consumer.poll() is not None:
                raise RuntimeError(f"the consumer exited ({consumer.returncode}); see {log.name}")
            if not store.exists():
                return 0
            db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
            try:
                return int(
                    db.execute('SELECT count(DISTINCT json_extract(row, "$.shard")) FROM ds_Ping_v1').fetchone()[0]
                )
            except sqlite3.OperationalError:
                return 0
            finally:
                db.close()

        streams.wait_for(lambda: delivered() >= shards, timeout_s, f"a row from each of {shards} shards", interval=0.5)
        first_rows_s = time.monotonic() - began
        tree = [consumer.pid, *streams.descendants(consumer.pid)]
        jvm = [p for p in tree if b"MultiLangDaemon" in _cmdline(p)]
        children = [p for p in tree if b"record_processor" in _cmdline(p)]
        rss = {p: _rss_kib(p) for p in tree}
        cpu_before = sum(proc_cpu_seconds(p) or 0.0 for p in tree)
        time.sleep(idle_s)  # the measurement itself: CPU over a quiet period
        tree = [consumer.pid, *streams.descendants(consumer.pid)]
        idle_cpu = sum(proc_cpu_seconds(p) or 0.0 for p in tree) - cpu_before
        return {
            "shards": shards,
            "first_rows_s": round(first_rows_s, 1),
            "children": len(children),
            "child_rss_mib_mean": round(sum(rss[p] for p in children) / max(1, len(children)) / 1024, 1),
            "child_rss_mib_max": round(max((rss[p] for p in children), default=0) / 1024, 1),
            "jvm_rss_mib": round(sum(rss[p] for p in jvm) / 1024, 1),
            "launcher_rss_mib": round(rss[consumer.pid] / 1024, 1),
            "tree_rss_mib": round(sum(rss.values()) / 1024, 1),
            "idle_cpu_share_per_shard": round(idle_cpu / idle_s / shards, 4),
            "idle_s": idle_s,
        }
    finally:
        stop(consumer)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--shards", default="1,8,32,64", help="comma-separated shard counts")
    parser.add_argument("--idle-s", type=float, default=60.0, help="quiet seconds for the idle CPU figure")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="longest wait for the first rows")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "shards.json")
    args = parser.parse_args(argv)
    results = []
    for count in [int(n) for n in args.shards.split(",")]:
        with fresh_stack("thyme-shards-") as work:
            result = one(count, work, args.idle_s, args.timeout_s)
        results.append(result)
        print(json.dumps(result), flush=True)
    print("\nshards  every shard's first row  child RSS mean/max  JVM RSS  tree RSS  idle CPU per shard")
    for r in results:
        memory = f"{r['child_rss_mib_mean']:>8.1f}/{r['child_rss_mib_max']:.1f} MiB  {r['jvm_rss_mib']:>5.0f} MiB"
        print(
            f"{r['shards']:>6}  {r['first_rows_s']:>21.1f}s  {memory}  {r['tree_rss_mib']:>6.0f} MiB  "
            f"{100 * r['idle_cpu_share_per_shard']:.2f}% of a core"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
