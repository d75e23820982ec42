"""Throughput of the record processor child, driven over pipes exactly as the MultiLangDaemon does.

For every batch the benchmark writes one ``processRecords`` line (10,000 ~200-byte click events
for ``tests.factories:SourcedClick``), answers the child's checkpoint request and reads its
status line. The clock runs from the first write to the last status. In the same run, a
minimal child (read the line, ``json.loads`` the envelope, checkpoint the last record, reply)
gives the *floor*: what the pipe protocol alone costs in Python. Runs of both alternate and
each figure is the median of ``--repeat`` runs.

    .venv/bin/python benchmarks/processor.py                      # 20 batches x 10,000, 3 runs
    .venv/bin/python benchmarks/processor.py --prefill 2000000 --repeat 1
    .venv/bin/python benchmarks/processor.py --repeat 1 --profile /tmp/child.prof

Results: a table on stdout and ``benchmarks/results/processor.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATASET: Final = "tests.factories:SourcedClick"
SHARD: Final = "shardId-000000000000"
SEQ_BASE: Final = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898
"""A real-looking 56-digit Kinesis sequence number; the stream's sequence numbers grow from it."""
T0_MS: Final = int(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)
LATENESS_MS: Final = 5 * 60 * 1000
"""``max_lateness`` of SourcedClick."""

REPEATED_KEYS: Final = 0.20
LATE: Final = 0.10
INVALID_JSON: Final = 0.001
WRONG_TYPE: Final = 0.001
RECENT_KEYS: Final = 50_000
"""Repeated keys are drawn from this many most recent keys."""


def log(text: str) -> None:
    """A progress line of the benchmarks (stdout, flushed)."""
    print(text, flush=True)


def pct(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``, nearest-rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


FLOOR_CHILD: Final = '''\
"""The floor: the multilang pipe protocol with nothing behind it (no decoding, no store)."""
import json
import sys


def main():
    inp, out = sys.stdin, sys.stdout

    def write(message):
        out.write("\\n" + json.dumps(message) + "\\n")  # as amazon-kclpy writes its lines
        out.flush()

    while True:
        line = inp.readline()
        if not line:
            return
        message = json.loads(line)
        action = message["action"]
        if action == "processRecords" and message["records"]:
            last = message["records"][-1]
            write({"action": "checkpoint", "sequenceNumber": last["sequenceNumber"],
                   "subSequenceNumber": last["subSequenceNumber"]})
            json.loads(inp.readline())
        write({"action": "status", "responseFor": action})


main()
'''


class BenchmarkError(Exception):
    """The child misbehaved (died, or broke the protocol)."""


# -- the workload ---------------------------------------------------------------------------


@dataclass
class Workload:
    """Every ``processRecords`` line of one run, generated before any timing."""

    lines: list[bytes]
    checkpoints: list[tuple[str, int]]
    """The (sequence, sub-sequence) each batch must checkpoint: its last record."""
    records: int
    accepted: int
    dead_letters: Counter[str]
    repeated_keys: int
    mean_event_bytes: float
    mean_line_bytes: float
    seconds: float


def _iso_ms(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms // 1000, tz=UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ts_ms % 1000:03d}Z"


def _page(rng: random.Random, room: int) -> str:
    """A URL path with a query string, padded to about ``room`` characters."""
    base = f"/shop/{rng.choice(('shoes', 'books', 'garden', 'kitchen', 'toys'))}/item-{rng.randint(1, 999_999)}"
    query = (
        "?utm_source=newsletter&utm_medium=email&utm_campaign=spring-sale-2024&ref=homepage-carousel-slot-3&lang=en-GB"
    )
    if room > len(base) + len(query):  # large events: repeat the query string to fill them
        query = query * (room // len(query) + 1)
    return base + query[: max(0, room - len(base))]


def generate(batches: int, batch_size: int, event_bytes: int, seed: int) -> Workload:
    """The stream: increasing sequence numbers and arrival times, 20% repeated keys, ~10% late
    records (more than 5 minutes behind the greatest accepted event time), a few invalid."""
    started = time.perf_counter()
    rng = random.Random(seed)
    recent: list[str] = []
    sequence = SEQ_BASE
    arrival_ms = T0_MS
    watermark_ms: int | None = None
    accepted = repeated = 0
    dead: Counter[str] = Counter()
    event_total = 0
    lines: list[bytes] = []
    checkpoints: list[tuple[str, int]] = []
    for _ in range(batches):
        records: list[dict[str, Any]] = []
        for _ in range(batch_size):
            sequence += rng.randint(1, 10**12)
            arrival_ms += rng.randint(0, 2)
            if recent and rng.random() < REPEATED_KEYS:
                key = rng.choice(recent)
                repeated += 1
            else:
                key = f"user-{rng.getrandbits(64):016x}"
                if len(recent) < RECENT_KEYS:
                    recent.append(key)
                else:
                    recent[rng.randrange(RECENT_KEYS)] = key
            draw = rng.random()
            if watermark_ms is not None and draw < LATE:
                ts_ms = watermark_ms - LATENESS_MS - rng.randint(1_000, 1_800_000)
                kind = "late"
            else:
                ts_ms = arrival_ms - rng.randint(0, 3_000)  # a few seconds in flight, slightly out of order
                kind = "row"
            event: dict[str, Any] = {"user_id": key, "page": "", "timestamp": _iso_ms(ts_ms)}
            room = event_bytes + rng.randint(-20, 20) - len(json.dumps(event, separators=(",", ":")))
            event["page"] = _page(rng, room)
            draw = rng.random()
            if draw < WRONG_TYPE:
                event["user_id"] = rng.randint(1, 10**9)
                kind = "schema"
            payload = json.dumps(event, separators=(",", ":")).encode()
            if WRONG_TYPE <= draw < WRONG_TYPE + INVALID_JSON:
                payload = payload[: len(payload) // 2]
                kind = "invalid_json"
            if kind == "row":
                accepted += 1
                watermark_ms = ts_ms if watermark_ms is None else max(watermark_ms, ts_ms)
            else:
                dead[kind] += 1
            event_total += len(payload)
            records.append(
                {
                    "action": "record",
                    "data": base64.b64encode(payload).decode(),
                    "partitionKey": key,
                    "sequenceNumber": str(sequence),
                    "subSequenceNumber": 0,
                    "approximateArrivalTimestamp": arrival_ms,
                }
            )
        message = {"action": "processRecords", "records": records, "millisBehindLatest": 0}
        lines.append(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        checkpoints.append((records[-1]["sequenceNumber"], 0))
    n = batches * batch_size
    return Workload(
        lines,
        checkpoints,
        n,
        accepted,
        dead,
        repeated,
        event_total / n,
        sum(map(len, lines)) / len(lines),
        time.perf_counter() - started,
    )


# -- the store ------------------------------------------------------------------------------


def _schema() -> Any:
    from tests.factories import SourcedClick
    from thyme.schema import dataset_schema

    schema = dataset_schema(SourcedClick)
    assert schema is not None
    return schema


def _table() -> str:
    from thyme.store.sqlite import table_name

    return table_name(_schema())


@dataclass
class Prefill:
    rows: int
    seconds: float


def prefill(url: str, rows: int, seed: int) -> Prefill:
    """Fill the store at ``url`` with ``rows`` rows of past clicks through the store's own
    ``apply``, so its tables and indexes are as months of ingestion would have left them."""
    from tests.factories import feed_of
    from thyme.store import Batch, Position, ShardState, open_store

    started = time.perf_counter()
    store = open_store(url)
    schema = _schema()
    feed = feed_of(schema)
    store.ensure_feed(feed)
    rng = random.Random(seed)
    users = [f"user-{rng.getrandbits(64):016x}" for _ in range(max(1, rows // 4))]
    first_ms = T0_MS - rows * 10

    def generated(start: int, stop: int) -> Iterator[tuple[str, int, str]]:
        for i in range(start, stop):
            key = users[rng.randrange(len(users))]
            ts_ms = first_ms + i * 10
            moment = datetime.fromtimestamp(ts_ms // 1000, tz=UTC)
            stamp = f"{moment:%Y-%m-%dT%H:%M:%S}.{ts_ms % 1000:03d}000Z"
            yield (
                key,
                ts_ms * 1000,
                f'{{"user_id":"{key}","page":"/shop/books/item-{i % 999_983}","timestamp":"{stamp}"}}',
            )

    chunk = 100_000
    expect: ShardState | None = None
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        state = ShardState(Position(stop), first_ms * 1000)
        batch = Batch("prefill", state, list(generated(start, stop)))
        if store.apply(feed, batch, expect) is not None:
            raise BenchmarkError("the prefill shard's state changed under the prefill")
        expect = state
        print(f"  prefill: {stop:,} rows, {time.perf_counter() - started:.0f} s", flush=True)
    store.close()
    return Prefill(rows, time.perf_counter() - started)


def verify(url: str, workload: Workload, prefilled_rows: int) -> dict[str, Any]:
    """What the run left in the store, against what the workload should have left."""
    from thyme.store import open_store

    store = open_store(url)
    try:
        rows = store.count_rows(_schema()) - prefilled_rows
        dead = store.dead_letter_counts(_schema())
    finally:
        store.close()
    expected_dead = sum(workload.dead_letters.values())
    ok = rows == workload.accepted and sum(dead.values()) == expected_dead
    return {
        "ok": ok,
        "rows": rows,
        "expected_rows": workload.accepted,
        "dead_letters": dead,
        "expected_dead_letters": dict(workload.dead_letters),
    }


class Stores:
    """Where each run's store lives: a SQLite file (copied from the prefilled one), or a PostgreSQL
    database (created from the prefilled one as a template) on a throwaway local server."""

    def __init__(self, work: Path, postgres: bool) -> None:
        self.work = work
        self.server: Any = None
        if postgres:
            sys.path.insert(0, str(REPO))
            from tests.pg_server import PgServer

            self.server = PgServer()
            self.server.start()
            print(f"  started PostgreSQL on 127.0.0.1:{self.server.port}", flush=True)

    @property
    def kind(self) -> str:
        return "postgresql" if self.server is not None else "sqlite"

    def template(self) -> str:
        if self.server is None:
            return f"sqlite:///{self.work / 'prefilled.db'}"
        return str(self.server.create_database())

    def fresh(self, index: int, template: str | None) -> str:
        if self.server is None:
            path = self.work / f"run{index}.db"
            if template is not None:
                shutil.copyfile(template.removeprefix("sqlite:///"), path)
            return f"sqlite:///{path}"
        if template is None:
            return str(self.server.create_database())
        import psycopg

        name = f"run{index}"
        source = template.rsplit("/", 1)[1]
        with psycopg.connect(self.server.admin_conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}" STRATEGY file_copy')
        return str(self.server.url(name))

    def close(self) -> None:
        if self.server is not None:
            self.server.remove()


# -- driving a child ------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    records: int
    peak_rss_mib: float | None
    cpu_seconds: float | None
    """CPU time (user + system) the child spent during the timed part."""
    started: float = 0.0
    """``time.perf_counter()`` when the timed part began (to combine concurrent children)."""

    @property
    def rate(self) -> float:
        return self.records / self.seconds


def _proc_status_kib(pid: int, name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_message(child: subprocess.Popen[bytes], stderr_path: Path) -> dict[str, Any]:
    """The next protocol message the child writes (amazon-kclpy surrounds each with blank lines)."""
    assert child.stdout is not None
    while True:
        line = child.stdout.readline()
        if not line:
            child.wait(timeout=30)
            tail = stderr_path.read_text(errors="replace")[-3000:]
            raise BenchmarkError(f"the child closed stdout (exit status {child.returncode}); stderr ends with:\n{tail}")
        if line.strip():
            message: dict[str, Any] = json.loads(line)
            return message


def _send(stream: IO[bytes], line: bytes) -> None:
    stream.write(line)
    stream.flush()


def drive(
    command: list[str],
    workload: Workload,
    stderr_path: Path,
    shard: str = SHARD,
    barrier: threading.Barrier | None = None,
) -> Run:
    """Run one child through ``initialize`` (untimed) and every batch (timed); close its stdin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THYME_")}
    env["PYTHONPATH"] = str(REPO)
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, env=env
        )
    try:
        assert child.stdin is not None
        initialize = {
            "action": "initialize",
            "shardId": shard,
            "sequenceNumber": "TRIM_HORIZON",
            "subSequenceNumber": 0,
        }
        _send(child.stdin, json.dumps(initialize).encode() + b"\n")
        if _read_message(child, stderr_path) != {"action": "status", "responseFor": "initialize"}:
            raise BenchmarkError("no status for initialize")
        if barrier is not None:  # concurrent children start their timed parts together
            barrier.wait(timeout=120)
        cpu_before = proc_cpu_seconds(child.pid)
        started = time.perf_counter()
        for line, expected in zip(workload.lines, workload.checkpoints, strict=True):
            _send(child.stdin, line)
            message = _read_message(child, stderr_path)
            while message.get("action") == "checkpoint":
                asked = (message["sequenceNumber"], message["subSequenceNumber"])
                if asked != expected:
                    raise BenchmarkError(f"checkpoint at {asked}, expected {expected}")
                reply = {
                    "action": "checkpoint",
                    "sequenceNumber": asked[0],
                    "subSequenceNumber": asked[1],
                    "error": None,
                }
                _send(child.stdin, json.dumps(reply).encode() + b"\n")
                message = _read_message(child, stderr_path)
            if message != {"action": "status", "responseFor": "processRecords"}:
                raise BenchmarkError(f"expected the processRecords status, got {message}")
        seconds = time.perf_counter() - started
        cpu_after = proc_cpu_seconds(child.pid)
        peak_kib = _proc_status_kib(child.pid, "VmHWM")
        child.stdin.close()
        if child.wait(timeout=120) != 0:
            raise BenchmarkError(f"the child exited with status {child.returncode}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Run(seconds, workload.records, None if peak_kib is None else peak_kib / 1024, cpu, started)


def processor_command(store_url: str, profile: Path | None = None) -> list[str]:
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return [sys.executable, *prefix, "-m", "record_processor", "--dataset", DATASET, "--store", store_url]


# -- reporting ------------------------------------------------------------------------------


@dataclass
class Method:
    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    def peak_rss_mib(self) -> float | None:
        values = [r.peak_rss_mib for r in self.runs if r.peak_rss_mib is not None]
        return max(values) if values else None

    def cpu_share(self) -> float | None:
        values = [r.cpu_seconds / r.seconds for r in self.runs if r.cpu_seconds is not None]
        return statistics.median(values) if values else None


def report(methods: list[Method], floor: Method) -> list[dict[str, Any]]:
    base = floor.median()
    rows: list[dict[str, Any]] = []
    width = max(len(m.name) for m in methods)
    print(f"\n{'method':<{width}} {'records/s':>11} {'vs floor':>9} {'peak RSS':>10} {'child CPU/wall':>15}")
    for method in methods:
        rate = method.median()
        rss = method.peak_rss_mib()
        share = method.cpu_share()
        print(
            f"{method.name:<{width}} {rate:>11,.0f} {rate / base:>9.2f} "
            f"{'-' if rss is None else f'{rss:.0f} MiB':>10} {'-' if share is None else f'{share:.2f}':>15}"
        )
        rows.append(
            {
                "method": method.name,
                "records_per_s": round(rate),
                "ratio_to_floor": round(rate / base, 4),
                "peak_rss_mib": rss,
                "child_cpu_per_wall": share,
                "runs": [{**asdict(r), "records_per_s": round(r.rate)} for r in method.runs],
            }
        )
    return rows


def print_profile(path: Path, top: int) -> None:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="processRecords messages per run (default 20)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="records per message (default 10,000)")
    parser.add_argument("--event-bytes", type=int, default=200, help="mean size of one click event (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; figures are medians (default 3)")
    parser.add_argument("--prefill", type=int, default=0, metavar="N", help="rows in the dataset table before each run")
    parser.add_argument("--seed", type=int, default=20240501)
    parser.add_argument("--workdir", type=Path, default=None, help="where stores go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "processor.json")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE.prof",
        help="after the timed runs, one more processor run under cProfile; print its top entries",
    )
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument(
        "--postgres", action="store_true", help="use a PostgreSQL store on a throwaway local server (needs initdb)"
    )
    args = parser.parse_args(argv)
    if min(args.batches, args.batch_size, args.repeat) < 1 or args.prefill < 0:
        parser.error("--batches, --batch-size and --repeat must be at least 1, --prefill at least 0")

    with tempfile.TemporaryDirectory(prefix="thyme-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        print(f"generating {args.batches} x {args.batch_size:,} records ...", flush=True)
        workload = generate(args.batches, args.batch_size, args.event_bytes, args.seed)
        shape = f"event {workload.mean_event_bytes:.0f} B, line {workload.mean_line_bytes / 1e6:.2f} MB"
        mix = f"accepted {workload.accepted:,}, repeated keys {workload.repeated_keys:,}"
        print(f"  {workload.seconds:.1f} s; {shape}; {mix}, dead letters {dict(workload.dead_letters)}", flush=True)
        stores = Stores(work, args.postgres)
        try:
            prefilled: Prefill | None = None
            template: str | None = None
            if args.prefill:
                print(f"prefilling {args.prefill:,} rows into {stores.kind} ...", flush=True)
                template = stores.template()
                prefilled = prefill(template, args.prefill, args.seed + 1)
                print(f"  prefill took {prefilled.seconds:.1f} s", flush=True)
            floor_script = work / "floor_child.py"
            floor_script.write_text(FLOOR_CHILD)

            floor = Method("floor (readline + json.loads + reply)")
            ours = Method(
                f"record_processor, {stores.kind}" + (f", {args.prefill:,} rows prefilled" if args.prefill else "")
            )
            checks: list[dict[str, Any]] = []

            def processor_run(index: int, profile: Path | None = None) -> Run:
                url = stores.fresh(index, template)
                run = drive(processor_command(url, profile), workload, work / f"run{index}.stderr.log")
                check = verify(url, workload, 0 if prefilled is None else prefilled.rows)
                checks.append(check)
                if not check["ok"]:
                    print(f"  WARNING: the store does not hold what the workload should leave: {check}", flush=True)
                if url.startswith("sqlite:///"):
                    Path(url.removeprefix("sqlite:///")).unlink()
                return run

            for index in range(args.repeat):
                run = drive([sys.executable, str(floor_script)], workload, work / "floor.stderr.log")
                floor.runs.append(run)
                print(f"  run {index + 1}: floor {run.rate:,.0f} rec/s", flush=True)
                run = processor_run(index)
                ours.runs.append(run)
                print(f"  run {index + 1}: processor {run.rate:,.0f} rec/s ({run.seconds:.2f} s)", flush=True)

            rows = report([floor, ours], floor)
            ok = all(c["ok"] for c in checks)
            print(
                f"\nstore contents after each run {'as expected' if ok else 'NOT as expected (see JSON)'}: "
                f"{checks[-1]['rows']:,} rows, {sum(checks[-1]['dead_letters'].values()):,} dead letters per run"
            )

            result = {
                "benchmark": "record_processor over the multilang pipe protocol",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                },
                "config": {
                    "dataset": DATASET,
                    "batches": args.batches,
                    "batch_size": args.batch_size,
                    "repeat": args.repeat,
                    "records_per_run": workload.records,
                    "mean_event_bytes": round(workload.mean_event_bytes, 1),
                    "mean_line_bytes": round(workload.mean_line_bytes),
                    "repeated_keys": workload.repeated_keys,
                    "accepted": workload.accepted,
                    "dead_letters": dict(workload.dead_letters),
                    "seed": args.seed,
                },
                "store": stores.kind,
                "prefill": None if prefilled is None else asdict(prefilled),
                "results": rows,
                "store_checks": checks,
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.out}")

            if args.profile is not None:
                print(f"\nprofiling one more processor run into {args.profile} ...", flush=True)
                run = processor_run(args.repeat, args.profile.resolve())
                print(f"  under cProfile: {run.rate:,.0f} rec/s")
                print_profile(args.profile, args.profile_top)
        finally:
            stores.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
