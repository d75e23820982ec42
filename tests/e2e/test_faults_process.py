"""Fault injection on the consumer's processes: a child killed -9 again and again, a worker
frozen mid-batch whose lease is taken over (a zombie writer), and the memory a child needs for
the largest batches. Each scenario ends with every produced record in the store exactly once
and writes a row for the README's reliability table."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import streams

from tests.e2e.faults import (
    KCL_SKIPPED,
    RECOMPUTING,
    RESTARTING,
    MakeConsumer,
    PgView,
    conclude,
    kcl_skipped,
    leases,
    messages,
    records,
    rejects,
    wait_message,
    wait_total,
)
from tests.e2e.harness import (
    Ledger,
    StoreView,
    click,
    events,
    now,
    produce,
    unique,
    wait_for,
    write_app,
)
from tests.pg_server import PgServer


class Background(threading.Thread):
    """Runs ``work(stop)`` in a thread; ``finish`` re-raises its error."""

    def __init__(self, work: Callable[[Callable[[], bool]], None]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work(self.halt.is_set)
        except BaseException as exc:  # re-raised by finish()
            self.error = exc

    def finish(self, timeout: float = 180) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the background producer did not finish"
        if self.error is not None:
            raise self.error


def hash_key(partition_key: str) -> int:
    return int(hashlib.md5(partition_key.encode()).hexdigest(), 16)


def keys_for(shard: dict[str, Any], count: int) -> list[str]:
    """``count`` partition keys that Kinesis maps to ``shard``."""
    low, high = int(shard["HashKeyRange"]["StartingHashKey"]), int(shard["HashKeyRange"]["EndingHashKey"])
    found: list[str] = []
    i = 0
    while len(found) < count:
        key = f"k{i}"
        if low <= hash_key(key) <= high:
            found.append(key)
        i += 1
    return found


# -- 1. one child killed -9, again and again ---------------------------------------------------------

KILLS = 3
"""Kills, each after the restarted daemon applied records again. The launcher gives up after 5
daemon exits each within a minute of their start (README), so 3 stays inside that budget."""


def test_a_child_killed_again_and_again_at_random_points(
    kinesis: Any, fault_consumer: MakeConsumer, tmp_path: Path
) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"kill -9 points: random seed {seed}")  # noqa: T201
    stream = unique("e2e-fault-kill")
    arn = streams.create_stream(kinesis, stream, 2)
    consumer = fault_consumer(write_app(tmp_path, arn), extra=["--shutdown-grace-ms", "2000"]).start()
    view = StoreView(consumer.store)
    ledger = Ledger()
    started = time.monotonic()
    produce(kinesis, stream, ledger.expect_valid(events(0, 20)))
    view.wait_total(ledger.total, 180, consumer)

    streams.put_payloads(kinesis, stream, rejects(ledger, 90))

    def flow(stop: Callable[[], bool]) -> None:  # 20 records/s until the kills are done
        for start in range(1000, 100_000, 10):
            if stop():
                return
            produce(kinesis, stream, ledger.expect_valid(events(start, 10, users=40)))
            time.sleep(0.5)

    producer = Background(flow)
    producer.start()
    try:
        for kill in range(KILLS):
            applied = len(messages(consumer, "batch applied"))
            wait_message(consumer, "batch applied", applied + 2, 120)  # this run is processing
            time.sleep(rng.uniform(0.0, 1.0))  # a random point: mid-batch or between batches
            children = consumer.children()
            assert children, consumer.log_text()[-3000:]
            os.kill(rng.choice(children), signal.SIGKILL)
            wait_message(consumer, RESTARTING, kill + 1, 120)
            assert consumer.alive(), consumer.log_text()[-4000:]
        applied = len(messages(consumer, "batch applied"))
        wait_message(consumer, "batch applied", applied + 2, 120)  # the last run is processing too
    finally:
        producer.halt.set()
        producer.finish()
    view.wait_total(ledger.total, 180, consumer)
    runs = len(messages(consumer, "starting the KCL MultiLangDaemon"))
    assert runs == KILLS + 1
    conclude(
        "kill -9 of one child, repeated",
        f"{KILLS} children killed -9 at random points while a producer ran (seed {seed})",
        ledger,
        view,
        started,
        f"the launcher restarted the daemon {KILLS}x with the same worker id",
    )
    assert consumer.stop() == 0


# -- 2. a zombie writer: frozen mid-batch, its lease taken over, then resumed -------------------------


def test_zombie_writer_cannot_duplicate_or_regress_the_new_owner(
    kinesis: Any, aws: dict[str, str], fault_consumer: MakeConsumer, pg_server: PgServer, tmp_path: Path
) -> None:
    import psycopg

    url = pg_server.create_database()
    stream = unique("e2e-fault-zombie")
    arn = streams.create_stream(kinesis, stream, 2)
    app = write_app(tmp_path, arn)
    application = unique("e2e-fault-zombie")
    fast = ["--failover-ms", "3000", "--shutdown-grace-ms", "5000"]
    view = PgView(url)
    ledger = Ledger()
    started = time.monotonic()
    first = fault_consumer(app, store_url=url, application=application, worker_id="host-a", extra=fast).start()
    produce(kinesis, stream, ledger.expect_valid(events(0, 20)))
    wait_total(view, ledger.total, 240, first)
    # host-a leads (it started alone); host-b joins and gets one shard
    wait_for(lambda: {lease["owner"] for lease in leases(aws, application).values()} == {"host-a"}, 60, "host-a")
    second = fault_consumer(app, store_url=url, application=application, worker_id="host-b", extra=fast).start()

    def victim() -> str | None:
        owned = [shard for shard, lease in leases(aws, application).items() if lease["owner"] == "host-b"]
        return owned[0] if len(owned) == 1 else None

    shard_id = wait_for(victim, 120, "host-b to own one shard", interval=1)
    shard = next(s for s in kinesis.list_shards(StreamName=stream)["Shards"] if s["ShardId"] == shard_id)
    keys = keys_for(shard, 8)
    serial = iter(range(10_000, 20_000))

    def on_victim(count: int) -> list[dict[str, Any]]:
        base = now()
        return ledger.expect_valid(
            [click(n := next(serial), keys[n % len(keys)], base + timedelta(milliseconds=i)) for i in range(count)]
        )

    wait_message(second, "shard initialised", 1, 60, contains=shard_id)  # host-b's child runs the shard
    produce(kinesis, stream, on_victim(10))
    wait_total(view, ledger.total, 120, first, second)
    wait_message(second, "batch applied", 1, 60, contains=shard_id)

    # host-b's child takes the next batch and blocks on the shard's row, which the test holds
    lock = psycopg.connect(url)
    admin = psycopg.connect(url, autocommit=True)
    try:
        lock.execute("SELECT 1 FROM thyme_shards WHERE shard = %s FOR UPDATE", (shard_id,))
        in_flight = on_victim(20)
        produce(kinesis, stream, in_flight)

        def blocked() -> int | None:
            row = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() "
                "AND datname = current_database()"
            ).fetchone()
            return None if row is None else int(row[0])

        backend = wait_for(blocked, 60, "host-b's child to wait on the shard row")
        tree = second.pid_tree()
        for pid in tree:  # freeze host-b: launcher, JVM and children, mid-batch
            os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        admin.execute("SELECT pg_cancel_backend(%s)", (backend,))  # its statement fails when it wakes up
        wait_for(lambda: blocked() is None, 30, "the frozen child's lock wait to be cancelled")
    finally:
        lock.rollback()
        lock.close()

    # host-a takes the shard over and applies the in-flight records and more
    wait_for(lambda: leases(aws, application)[shard_id]["owner"] == "host-a", 120, "host-a to take over", interval=1)
    takeover_s = time.monotonic() - frozen_at
    produce(kinesis, stream, on_victim(20))
    wait_total(view, ledger.total, 120, first)
    position_a = int(view.positions()[shard_id] or 0)

    for pid in tree:
        os.kill(pid, signal.SIGCONT)
    # the zombie's late write is refused by the compare-and-set and recomputed against host-a's state
    wait_message(second, RECOMPUTING, 1, 60, contains=shard_id)
    produce(kinesis, stream, on_victim(20))
    streams.put_payloads(kinesis, stream, rejects(ledger, 90))
    wait_total(view, ledger.total, 120, first, second)
    assert int(view.positions()[shard_id] or 0) >= position_a, "the shard's position regressed"
    conclude(
        "zombie writer after a lease takeover",
        "worker frozen (SIGSTOP) mid-batch on PostgreSQL; lease taken over; worker resumed",
        ledger,
        view,
        started,
        f"takeover {takeover_s:.0f} s after the freeze; the late write hit the compare-and-set and was recomputed "
        "as a replay",
    )
    admin.close()
    assert first.stop() == 0
    assert second.stop() == 0


# -- 3. memory: the largest batches --------------------------------------------------------------------

SMALL = 10_000
BIG = 12
BIG_BYTES = 1_000_000
MEMORY_BOUND_MIB = 192
"""Stated bound on a child's peak RSS (VmHWM) for a 10,000-record batch and ~10 MB batches of
1 MB records (GetRecords returns at most 10,000 records / 10 MB per call)."""


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def test_child_memory_with_10000_record_and_1mib_record_batches(
    kinesis: Any, fault_consumer: MakeConsumer, tmp_path: Path
) -> None:
    stream = unique("e2e-fault-memory")
    arn = streams.create_stream(kinesis, stream, 1)
    ledger = Ledger()
    started = time.monotonic()
    produce(kinesis, stream, ledger.expect_valid(events(0, SMALL, users=1000)))
    base = now()
    big = ledger.expect_valid(
        [click(SMALL + i, f"big{i}", base + timedelta(seconds=1, milliseconds=i), "x" * BIG_BYTES) for i in range(BIG)]
    )
    for start in range(0, BIG, 4):  # PutRecords takes 5 MiB per request
        kinesis.put_records(
            StreamName=stream,
            Records=[{"PartitionKey": e["user_id"], "Data": json.dumps(e).encode()} for e in big[start : start + 4]],
        )
    produced_s = time.monotonic() - started
    consumer = fault_consumer(write_app(tmp_path, arn)).start()
    view = StoreView(consumer.store)
    peaks: dict[int, int] = {}

    def sampled() -> bool:
        for pid in consumer.children():
            try:
                peaks[pid] = max(peaks.get(pid, 0), peak_rss_kib(pid))
            except (OSError, AssertionError):
                continue
        return view.total() >= ledger.total

    try:
        wait_for(sampled, 150, f"{ledger.total} records in the store", interval=0.2)
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}: the store holds {view.total()}; the daemon dropped {kcl_skipped(consumer)} fetched batch(es) "
            f"({KCL_SKIPPED!r})"
        ) from exc
    sampled()
    sizes = [(int(e["received"]), float(e["seconds"])) for e in messages(consumer, "batch applied") if e["received"]]
    assert max(n for n, _ in sizes) == SMALL, f"no {SMALL}-record batch: {sizes}"
    big_batches = [n for n, _ in sizes if n < SMALL]
    assert peaks, "no child was sampled"
    peak_mib = max(peaks.values()) / 1024
    conclude(
        "memory: largest batches",
        f"a {SMALL:,}-record batch, then {BIG} records of 1 MB (batches of {big_batches})",
        ledger,
        view,
        started,
        f"child peak RSS {peak_mib:.0f} MiB (bound {MEMORY_BOUND_MIB} MiB); producing took {produced_s:.0f} s",
    )
    assert peak_mib <= MEMORY_BOUND_MIB, f"a child peaked at {peak_mib:.0f} MiB"
    assert consumer.stop() == 0


# -- 4. a hung child -------------------------------------------------------------------------------------

CHILD_TIMEOUT_S = 80  # the least the launcher accepts with a 5 s store retry bound (5 + 75)
"""``timeoutInSeconds`` for this test: above the child's store retry bound (5 s here)."""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_hung_child_is_detected_and_replaced(kinesis: Any, fault_consumer: MakeConsumer, tmp_path: Path) -> None:
    """A child that stops answering mid-stream (a record that takes forever; here the child is
    frozen with SIGSTOP, which from the daemon's side is the same) must not stall its shard for
    good: the daemon's ``timeoutInSeconds`` halts it, the launcher kills what is left of that run
    (the hung child would otherwise live on, holding its store transaction) and restarts it.

    Needs ``thyme kinesis run --child-timeout-s`` (KCL ``timeoutInSeconds``); see the report."""
    stream = unique("e2e-fault-hung")
    arn = streams.create_stream(kinesis, stream, 1)
    consumer = fault_consumer(
        write_app(tmp_path, arn),
        env={"THYME_STORE_GIVE_UP_AFTER_S": "5"},
        extra=["--child-timeout-s", str(CHILD_TIMEOUT_S), "--shutdown-grace-ms", "5000"],
    ).start()
    view = StoreView(consumer.store)
    ledger = Ledger()
    started = time.monotonic()
    produce(kinesis, stream, ledger.expect_valid(events(0, 20)))
    view.wait_total(ledger.total, 180, consumer)
    (hung,) = consumer.children()
    os.kill(hung, signal.SIGSTOP)
    try:
        held = view.total()
        streams.put_payloads(kinesis, stream, records(ledger, 100, 50))
        wait_message(consumer, RESTARTING, 1, CHILD_TIMEOUT_S + 45)
        assert view.total() == held or view.total() == ledger.total
        wait_for(lambda: not alive(hung), 30, "the hung child to be killed with its daemon")
        view.wait_total(ledger.total, 120, consumer)
    finally:
        if alive(hung):
            os.kill(hung, signal.SIGKILL)
    conclude(
        "hung child",
        f"one child frozen (SIGSTOP) mid-stream; `timeoutInSeconds` {CHILD_TIMEOUT_S} s",
        ledger,
        view,
        started,
        "the daemon halted, the launcher killed the hung child and restarted; the shard resumed from its checkpoint",
    )
    assert consumer.stop() == 0
