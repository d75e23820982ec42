"""Failover, measured as an operator sees it: hosts (``thyme kinesis run``, distinct worker ids)
on a 4-shard stream and one PostgreSQL store, a producer writing to every shard throughout, one
host killed or stopped; how long until every shard is consumed again, what was lost, what twice.

Used by ``tests/e2e/test_failover.py`` (one trial per scenario) and ``benchmarks/failover.py``
(repeated trials: medians and worst cases for the README's failover table).

"Consumed again": for each shard, a record put after the fault is visible in the store. The
survivor's own shards count too (they must not pause). The leader is whoever holds the
``Leader`` item of ``<app>-CoordinatorState`` just before the fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import boto3
import streams

from tests.e2e.faults import FaultConsumer, MakeConsumer, PgView
from tests.e2e.harness import click, now, unique, wait_for, write_app
from thyme.kinesis.leader import read_leader

SHARDS: Final = 4
STABLE_S: Final = 10.0
"""How long no lease may have moved before the fault."""
SCENARIOS: Final = (
    "kill9-leader",
    "kill9-other",
    "kill9-leader-jvm",
    "sigterm-leader",
    "sigterm-other",
)
"""kill -9 of the leader's whole host, of another host, of the leader's JVM only (its launcher
restarts it); SIGTERM of the leader and of another host while its replacement starts (a rolling
deploy)."""


@dataclass
class Trial:
    scenario: str
    victim: str
    victim_shards: list[str]
    """The shards the victim held just before the fault: the ones that had to move."""
    leader_before: str | None
    resumed_s: float
    """From the fault until every shard had a record put after it in the store."""
    per_shard_s: dict[str, float]
    leader_after: str | None
    lock_lease_ms: int | None
    produced: int
    lost: int
    twice: int

    def line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class Producer:
    """Puts one record on every shard every ``interval_s`` (each shard by its explicit hash key),
    remembering each record's shard and when it was put."""

    def __init__(self, kinesis: Any, stream: str, interval_s: float = 0.25) -> None:
        self.kinesis, self.stream, self.interval_s = kinesis, stream, interval_s
        shards = kinesis.list_shards(StreamName=stream)["Shards"]
        self.keys = {s["ShardId"]: s["HashKeyRange"]["StartingHashKey"] for s in shards}
        self.put_at: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="producer")
        self.errors: list[str] = []

    def start(self) -> Producer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            batch = []
            for shard, key in self.keys.items():
                event = click(n, f"u{n % 40}", now())
                batch.append((n, shard, {"PartitionKey": "k", "ExplicitHashKey": key, "Data": json.dumps(event)}))
                n += 1
            try:
                reply = self.kinesis.put_records(StreamName=self.stream, Records=[r for _, _, r in batch])
            except Exception as exc:  # the emulator was slow: put these again next round (new numbers)
                self.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                at = time.monotonic()
                with self._lock:
                    for (number, shard, _), entry in zip(batch, reply["Records"], strict=True):
                        if "SequenceNumber" in entry:
                            self.put_at[number] = (shard, at)
            self._stop.wait(self.interval_s)

    def produced(self) -> dict[int, tuple[str, float]]:
        with self._lock:
            return dict(self.put_at)


def dynamodb() -> Any:
    return boto3.client("dynamodb", endpoint_url=os.environ.get("THYME_DYNAMODB_ENDPOINT_URL"), region_name="us-east-1")


def owners(consumer: FaultConsumer) -> dict[str, str | None]:
    return {s["shard"]: s["lease_owner"] for s in consumer.status()["shards"]}


def run_trial(
    scenario: str,
    kinesis: Any,
    store_url: str,
    tmp_path: Path,
    make: MakeConsumer,
    extra: tuple[str, ...] = (),
    timeout_s: float = 240,
) -> Trial:
    """One trial of ``scenario`` (see :data:`SCENARIOS`) on a fresh stream and application."""
    assert scenario in SCENARIOS, scenario
    stream = unique("e2e-failover")
    arn = streams.create_stream(kinesis, stream, SHARDS)
    app = write_app(tmp_path, arn, "trim_horizon")
    application = unique("e2e-failover")
    options = ("--failover-ms", "10000", *extra)

    def host(name: str) -> FaultConsumer:
        return make(app, store_url=store_url, application=application, worker_id=name, extra=options)

    hosts = {"host-a": host("host-a").start(), "host-b": host("host-b").start()}
    view = PgView(store_url)
    producer = Producer(kinesis, stream).start()
    client = dynamodb()
    try:
        # both hosts hold shards, a leader holds the lock, and what was put so far is in the store
        def settled() -> str | None:
            found = owners(hosts["host-a"])
            held = {owner for owner in found.values() if owner}
            lock = read_leader(client, application)
            if len(found) == SHARDS and held == set(hosts) and lock is not None and lock.owner in hosts:
                return lock.owner
            return None

        leader = wait_for(settled, 180, "the leases split between both hosts and a leader", interval=1)
        before = set(producer.produced())
        wait_for(lambda: set(view.applied()) >= before, 120, "the records put so far in the store", interval=1)

        last: dict[str, str | None] = {}
        unchanged_since = time.monotonic()

        def chosen() -> tuple[str, str, list[str]] | None:
            """The leader, the victim and the victim's shards, read just before the fault, once no
            lease has moved for STABLE_S: KCL 3 rebalances, and a lease moved to a host seconds
            before its SIGTERM was once seen to wait for expiry (18 s) instead of being handed back.
            The cases here are faults of a settled fleet."""
            nonlocal last, unchanged_since
            lead = settled()
            found = owners(hosts["host-a"])
            if found != last:
                last, unchanged_since = found, time.monotonic()
            if lead is None or time.monotonic() - unchanged_since < STABLE_S:
                return None
            victim = lead if scenario.endswith(("leader", "leader-jvm")) else next(h for h in hosts if h != lead)
            held = sorted(shard for shard, owner in found.items() if owner == victim)
            return (lead, victim, held) if held else None

        leader, victim, victim_shards = wait_for(chosen, 180, "the victim to hold shards, none moving", interval=0.5)

        faulted = time.monotonic()
        target = hosts[victim]
        if scenario.startswith("kill9") and scenario.endswith("jvm"):
            os.kill(target.jvm(), signal.SIGKILL)  # the launcher restarts its daemon
        elif scenario.startswith("kill9"):
            target.kill9()
        else:  # a rolling deploy: the replacement starts as the old one drains
            assert target.process is not None
            target.process.send_signal(signal.SIGTERM)
            hosts["host-c"] = host("host-c").start()

        seen_at: dict[str, float] = {}

        def resumed() -> bool:
            """Notes when each shard first shows a record put after the fault in the store."""
            applied = set(view.applied())
            seen = time.monotonic() - faulted
            for number, (shard, at) in producer.produced().items():
                if at > faulted and number in applied and shard not in seen_at:
                    seen_at[shard] = round(seen, 1)
            return len(seen_at) == SHARDS

        wait_for(resumed, timeout_s, f"every shard consumed again after {scenario}", interval=0.5)
        resumed_s = max(seen_at.values())
        if scenario.startswith("sigterm"):
            assert target.process is not None
            code = target.process.wait(90)
            assert code == 0, f"{victim} exited {code} after SIGTERM:\n{target.log_text()[-3000:]}"
        producer.stop()
        produced = producer.produced()
        wait_for(lambda: set(view.applied()) >= set(produced), 180, "every record put in the store", interval=1)
        counts = view.applied()
        lock = read_leader(client, application)
        return Trial(
            scenario=scenario,
            victim=victim,
            victim_shards=victim_shards,
            leader_before=leader,
            resumed_s=resumed_s,
            per_shard_s=dict(sorted(seen_at.items())),
            leader_after=None if lock is None else lock.owner,
            lock_lease_ms=None if lock is None else lock.lease_ms,
            produced=len(produced),
            lost=len(set(produced) - set(counts)),
            twice=sum(1 for c in counts.values() if c > 1),
        )
    finally:
        producer.stop()
        for consumer in hosts.values():
            with contextlib.suppress(Exception):
                consumer.close()


def summary(trials: list[Trial], key: Callable[[Trial], float] = lambda t: t.resumed_s) -> dict[str, Any]:
    values = sorted(key(t) for t in trials)
    middle = (
        values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    )
    return {
        "trials": len(values),
        "median_s": round(middle, 1),
        "worst_s": max(values),
        "lost": sum(t.lost for t in trials),
        "twice": sum(t.twice for t in trials),
    }
