"""End-to-end latency through the real KCL daemon on the local stack (kinesis-mock + moto).

Per round, on a fresh 1-shard stream and a fresh KCL application:

* **start-up**: 5 records are put first; the clock runs from starting the consumer to the
  first of them being visible (ours: a ``thyme.lookup`` finds it in the store; floor: the
  do-nothing child has read it);
* **latency**: then ``records`` records at ~20/s, one ``PutRecord`` each; for each, the time
  from ``PutRecord`` returning to the row being visible to a lookup (ours: a poller looks up
  every pending key every 5 ms) or to the child reading it (floor).

Variants, alternating round by round in one invocation:

* ``ours``: ``thyme kinesis run app.py:Clicks --idle-ms 200`` as a user starts it;
* ``floor``: the same daemon with the same properties (rendered by ``thyme``'s own planner),
  but ``executableName`` = ``benchmarks/idle_child.py``, a child that does nothing; the lease
  table and one lease per shard are created first with boto3, as ``thyme kinesis run`` does
  on a new application, so that both start the same way;
* ``ours_kcl_start``: ``ours`` with ``--no-bootstrap-leases``: KCL creates the lease table and
  leases itself, after its random 1-30 s wait on an empty lease table (when the installed
  ``thyme`` has no such option, the variant is skipped).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Final

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
for entry in (str(REPO), str(REPO / "scripts"), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import local_aws  # noqa: E402
import streams  # noqa: E402
from processor import log, pct  # noqa: E402

THYME: Final = str(Path(sys.executable).with_name("thyme"))
IDLE_MS: Final = 200
PRE_RECORDS: Final = 5
RATE: Final = 20.0


def summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50": pct(values, 0.5),
        "p95": pct(values, 0.95),
        "p99": pct(values, 0.99),
        "max": max(values) if values else float("nan"),
    }


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process`` and everything below it (by PID; collected before the kill)."""
    victims = [process.pid, *streams.descendants(process.pid)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(30)


def _app(folder: Path, arn: str) -> Path:
    from tests.e2e.harness import write_app

    return write_app(folder, arn, position="trim_horizon")


def _event(n: int, key: str) -> bytes:
    import json
    from datetime import UTC, datetime

    return json.dumps({"user_id": key, "n": n, "page": f"/p{n}", "timestamp": datetime.now(UTC).isoformat()}).encode()


def create_leases(env: dict[str, str], table: str, stream: str) -> None:
    """The lease table and one unowned lease per shard at TRIM_HORIZON, as KCL 3.x makes them."""
    import boto3

    kinesis = boto3.client("kinesis", endpoint_url=env["THYME_KINESIS_ENDPOINT_URL"], region_name="us-east-1")
    dynamodb = boto3.client("dynamodb", endpoint_url=env["THYME_DYNAMODB_ENDPOINT_URL"], region_name="us-east-1")
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "leaseKey", "AttributeType": "S"},
            {"AttributeName": "leaseOwner", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
        GlobalSecondaryIndexes=[
            {
                "IndexName": "LeaseOwnerToLeaseKeyIndex",
                "KeySchema": [
                    {"AttributeName": "leaseOwner", "KeyType": "HASH"},
                    {"AttributeName": "leaseKey", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
    )
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        item: dict[str, Any] = {
            "leaseKey": {"S": shard["ShardId"]},
            "leaseCounter": {"N": "0"},
            "checkpoint": {"S": "TRIM_HORIZON"},
            "checkpointSubSequenceNumber": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
            "startingHashKey": {"S": shard["HashKeyRange"]["StartingHashKey"]},
            "endingHashKey": {"S": shard["HashKeyRange"]["EndingHashKey"]},
        }
        if shard.get("ParentShardId"):
            item["parentShardId"] = {"SS": [shard["ParentShardId"]]}
        dynamodb.put_item(TableName=table, Item=item)


class Round:
    """One fresh stream + application, consumed by one variant."""

    def __init__(self, work: Path, env: dict[str, str], variant: str, index: int, records: int) -> None:
        self.work = work / f"{variant}-{index}"
        self.work.mkdir(parents=True)
        self.env = {**os.environ, **env}
        self.variant = variant
        self.records = records
        self.client = streams.kinesis_client()
        self.stream = f"bench-{variant.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        self.application = f"bench-{uuid.uuid4().hex[:8]}"
        self.store_path = self.work / "thyme.db"
        self.arrivals = self.work / "arrivals.tsv"
        self.process: subprocess.Popen[bytes] | None = None

    def run(self) -> dict[str, Any]:
        arn = streams.create_stream(self.client, self.stream, 1)
        app = _app(self.work, arn)
        pre = [(f"pre-{i}", _event(i, f"pre-{i}")) for i in range(PRE_RECORDS)]
        streams.put_payloads(self.client, self.stream, pre)
        if self.variant == "floor":
            create_leases(self.env, self.application, self.stream)
        command, jvm = self._command(app)
        log_file = (self.work / "consumer.log").open("wb")
        started = time.time()
        self.process = subprocess.Popen(
            command, env=self.env, stdout=log_file, stderr=subprocess.STDOUT, cwd=self.work, start_new_session=jvm
        )
        try:
            klass = self._dataset(app)
            visible = self._first_visible(klass, started)
            latencies = self._latency(klass)
        finally:
            _kill_tree(self.process)
            log_file.close()
            kept = BENCH / "results" / "e2e-logs"
            kept.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.work / "consumer.log", kept / f"{self.work.name}.log")
        return {"startup_s": visible - started, "latency_ms": latencies}

    def _dataset(self, app: Path) -> Any:
        if self.variant == "floor":
            return None
        from thyme.loader import load_dataset

        return load_dataset(f"{app}:Clicks")

    def _command(self, app: Path) -> tuple[list[str], bool]:
        if self.variant != "floor":
            return [
                THYME,
                "kinesis",
                "run",
                f"{app}:Clicks",
                "--store",
                f"sqlite:///{self.store_path}",
                "--application-name",
                self.application,
                "--worker-id",
                "bench-worker",
                "--idle-ms",
                str(IDLE_MS),
                *(["--no-bootstrap-leases"] if self.variant == "ours_kcl_start" else []),
            ], False
        # The floor: thyme's own planner renders the properties; only the child differs.
        from thyme.kinesis.launcher import RunOptions, plan
        from thyme.loader import load_dataset

        klass = load_dataset(f"{app}:Clicks")
        options = RunOptions(
            store_url=f"sqlite:///{self.store_path}",
            application_name=self.application,
            worker_id="bench-worker",
            idle_time_between_reads_ms=IDLE_MS,
        )
        the_plan = plan(klass, options, environ=self.env)
        child = f"{sys.executable} {BENCH / 'idle_child.py'} {self.arrivals}"
        properties = the_plan.properties.model_copy(update={"executable_name": child})
        path = self.work / "floor.properties"
        path.write_text(properties.render())
        path.chmod(0o600)
        return the_plan.command(path), True

    def _alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = (self.work / "consumer.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.variant}: the consumer exited ({self.process.returncode}):\n{tail}")

    def _arrived(self) -> dict[str, float]:
        if not self.arrivals.exists():
            return {}
        found: dict[str, float] = {}
        for line in self.arrivals.read_text().splitlines():
            sequence, _, at = line.partition("\t")
            found.setdefault(sequence, float(at))
        return found

    def _first_visible(self, klass: Any, started: float) -> float:
        deadline = started + 240
        while time.time() < deadline:
            self._alive()
            if klass is None:
                arrived = self._arrived()
                if arrived:
                    return min(arrived.values())
            elif self._visible(klass, "pre-0"):
                return time.time()
            time.sleep(0.05)
        raise RuntimeError(f"{self.variant}: nothing visible within 240 s")

    def _visible(self, klass: Any, key: str) -> bool:
        if not self.store_path.exists():
            return False
        try:
            db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=5)
            try:
                return db.execute('SELECT 1 FROM "ds_Clicks_v1" WHERE rid = 1').fetchone() is not None
            finally:
                db.close()
        except sqlite3.OperationalError:
            return False

    def _latency(self, klass: Any) -> list[float]:
        put_at: dict[str, float] = {}
        by_sequence: dict[str, str] = {}
        seen: dict[str, float] = {}
        done = threading.Event()
        lock = threading.Lock()

        def poll() -> None:
            from thyme.serving import lookup
            from thyme.store.sqlite import SQLiteStore

            store = SQLiteStore(self.store_path)
            try:
                while not done.is_set():
                    with lock:
                        pending = [k for k in put_at if k not in seen]
                    for key in pending:
                        if lookup(klass, key, store=store) is not None:
                            seen[key] = time.time()
                    time.sleep(0.005)
            finally:
                store.close()

        poller = threading.Thread(target=poll) if klass is not None else None
        if poller is not None:
            poller.start()
        try:
            next_at = time.monotonic()
            for n in range(self.records):
                key = f"k-{n}"
                reply = self.client.put_record(StreamName=self.stream, Data=_event(1000 + n, key), PartitionKey=key)
                with lock:
                    put_at[key] = time.time()
                by_sequence[reply["SequenceNumber"]] = key
                next_at += 1 / RATE
                time.sleep(max(0.0, next_at - time.monotonic()))
            deadline = time.time() + 60
            while time.time() < deadline:
                self._alive()
                if klass is None:
                    arrived = self._arrived()
                    seen.update({by_sequence[s]: at for s, at in arrived.items() if s in by_sequence})
                if len(seen) >= self.records:
                    break
                time.sleep(0.1)
        finally:
            done.set()
            if poller is not None:
                poller.join()
        if len(seen) < self.records:
            raise RuntimeError(f"{self.variant}: only {len(seen)} of {self.records} records arrived")
        return [(seen[k] - put_at[k]) * 1000 for k in put_at]


def run(work: Path, rounds: int = 5, records: int = 60, quick: bool = False) -> dict[str, Any]:
    """Start the local stack, run ``rounds`` rounds of each variant alternately, stop it."""
    help_text = subprocess.run([THYME, "kinesis", "run", "--help"], capture_output=True, text=True, check=False).stdout
    variants = ["ours", "floor"] + (["ours_kcl_start"] if "--bootstrap-leases" in help_text else [])
    results: dict[str, Any] = {v: {"startup_s": [], "latencies_ms": [], "rounds": []} for v in variants}
    stack = local_aws.LocalAWS(state_dir=work / "local-aws")
    stack.start()
    try:
        env = stack.env()
        os.environ.update(env)  # for streams.kinesis_client()
        for index in range(rounds):
            for variant in variants:
                began = time.monotonic()
                outcome = Round(work / "e2e", env, variant, index, records).run()
                stats = summary(outcome["latency_ms"])
                results[variant]["startup_s"].append(outcome["startup_s"])
                results[variant]["latencies_ms"].extend(outcome["latency_ms"])
                results[variant]["rounds"].append({"startup_s": outcome["startup_s"], **stats})
                log(
                    f"  round {index + 1}/{rounds} {variant}: start-up {outcome['startup_s']:.1f} s, latency p50 "
                    f"{stats['p50']:.0f} p95 {stats['p95']:.0f} ms ({time.monotonic() - began:.0f} s)"
                )
    finally:
        stack.stop()
    for variant in variants:
        results[variant]["latency_ms"] = summary(results[variant]["latencies_ms"])
    labels = {
        "ours": "row visible (`thyme kinesis run`, fresh application)",
        "ours_kcl_start": "row visible, `--no-bootstrap-leases` (KCL's own start)",
        "floor": "do-nothing child reads it (same daemon, leases created first)",
    }
    results["startup_labels"] = {v: labels[v] for v in variants}
    return results
