"""Helpers of the fault suites (``test_faults*.py``): a consumer with fault hooks, log and lease
readers, views of what a store holds, and the conclusion of each scenario (a row of the README's
reliability table, ``reliability.py``)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import boto3
import streams

from tests.e2e.harness import (
    Consumer,
    Ledger,
    click,
    events,
    json_lines,
    now,
    unique,
    wait_for,
)
from tests.e2e.reliability import Result, record, tally

RETRYING = "store unavailable; nothing applied or acknowledged, retrying"
GAVE_UP = "batch not applied; exiting so the daemon restarts the shard"
RESTARTING = "the daemon exited (a shard's processor failed or the daemon crashed); restarting with the same worker id"
GRACEFUL_CHECKPOINT = "shutdown requested; checkpointing the last applied record"
RECOMPUTING = "shard state changed under this worker (another worker applied records); recomputing"
KCL_SKIPPED = "Exception occurred while dispatching incoming data.  The incoming data has been skipped"
"""KCL 3.1.3 (ShardConsumer) when dispatching a fetched batch throws, e.g. a failed ListShards in
ProcessTask's constructor: the batch is dropped and the next one is delivered (a loss)."""


# -- consumers with extra options ----------------------------------------------------------------


class FaultConsumer(Consumer):
    """A ``thyme kinesis run`` with extra command-line options (grace, failover...)."""

    def __init__(self, *args: Any, extra: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra = list(extra)

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]

    def start(self) -> FaultConsumer:
        super().start()
        return self

    def close(self) -> None:
        """Kill the launcher, the JVM and the children. The tree is read before anything is
        killed: once the launcher is dead, its JVM is re-parented and no longer found under it."""
        if self.process is None or not self.alive():
            return
        for pid in self.pid_tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # SIGKILL also ends a stopped (SIGSTOP) process
        self.process.wait(30)

    def pid_tree(self) -> list[int]:
        """The launcher, the JVM and the children."""
        assert self.process is not None
        return [self.process.pid, *streams.descendants(self.process.pid)]

    def jvm(self) -> int:
        for pid in self.pid_tree()[1:]:
            with contextlib.suppress(OSError):
                if b"MultiLangDaemon" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        raise AssertionError(f"no JVM under the launcher {self.pid_tree()}:\n{self.log_text()[-3000:]}")


MakeConsumer = Callable[..., FaultConsumer]


def consumer_factory(aws: Mapping[str, str], tmp_path: Path, consumers: list[Consumer]) -> MakeConsumer:
    def make(
        app: Path,
        *,
        store: Path | None = None,
        store_url: str | None = None,
        application: str | None = None,
        worker_id: str = "w1",
        env: Mapping[str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> FaultConsumer:
        consumer = FaultConsumer(
            app,
            store or tmp_path / "thyme.db",
            application or unique("e2e-fault"),
            worker_id,
            {**os.environ, **aws, **(env or {})},
            tmp_path / f"consumer-{len(consumers)}.log",
            store_url=store_url,
            extra=extra,
        )
        consumers.append(consumer)
        return consumer

    return make


# -- logs ------------------------------------------------------------------------------------------


def messages(consumer: Consumer, message: str, contains: str = "") -> list[dict[str, Any]]:
    """The consumer's JSON log lines with ``message`` (and ``contains`` somewhere in the line)."""
    return [e for e in json_lines(consumer.log_text()) if e.get("message") == message and contains in json.dumps(e)]


def wait_message(consumer: Consumer, message: str, count: int, timeout: float, contains: str = "") -> dict[str, Any]:
    """Wait until the log holds ``count`` lines with ``message``; the last one."""

    def seen() -> list[dict[str, Any]] | None:
        found = messages(consumer, message, contains)
        return found if len(found) >= count else None

    try:
        return wait_for(seen, timeout, f"log line {message!r} ({contains}) x{count}", interval=0.3)[-1]  # type: ignore[no-any-return]
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{consumer.log_text()[-5000:]}") from exc


# -- the lease table ---------------------------------------------------------------------------


def leases(aws: Mapping[str, str], table: str) -> dict[str, dict[str, Any]]:
    """shard -> checkpoint, owner and counter, read from the KCL lease table."""
    client = boto3.client(
        "dynamodb",
        endpoint_url=aws.get("THYME_DYNAMODB_ENDPOINT_URL") or None,
        region_name=aws.get("AWS_REGION", "us-east-1"),
    )
    found: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            key = item.get("leaseKey", {}).get("S", "")
            if key.startswith("shardId-"):
                found[key] = {
                    "checkpoint": item.get("checkpoint", {}).get("S"),
                    "owner": item.get("leaseOwner", {}).get("S"),
                    "counter": int(item.get("leaseCounter", {}).get("N", "0")),
                }
    return found


def checkpoints(aws: Mapping[str, str], table: str) -> dict[str, str | None]:
    return {shard: lease["checkpoint"] for shard, lease in leases(aws, table).items()}


# -- stores ------------------------------------------------------------------------------------


class View(Protocol):
    def applied(self) -> Counter[int]: ...

    def dead_letters(self) -> Counter[str]: ...


class PgView:
    """Read-only queries on a PostgreSQL store (the same answers as ``StoreView`` for SQLite)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as conn:
            try:
                return conn.execute(sql).fetchall()
            except psycopg.errors.UndefinedTable:
                return []

    def applied(self) -> Counter[int]:
        return Counter(int(n) for (n,) in self._query("SELECT (row::json ->> 'n')::bigint FROM \"ds_Clicks_v1\""))

    def dead_letters(self) -> Counter[str]:
        rows = self._query("SELECT reason, count(*) FROM thyme_dead_letters GROUP BY reason")
        return Counter({str(r): int(c) for r, c in rows})

    def positions(self) -> dict[str, str | None]:
        return {str(s): q for s, q in self._query("SELECT shard, sequence FROM thyme_shards")}


def total(view: View) -> int:
    return sum(view.applied().values()) + sum(view.dead_letters().values())


def kcl_skipped(*consumers: Consumer) -> int:
    """How many fetched batches the daemon dropped (see ``KCL_SKIPPED``)."""
    return sum(c.log_text().count(KCL_SKIPPED) for c in consumers)


def wait_total(view: View, expected: int, timeout: float, *consumers: Consumer) -> None:
    def done() -> bool:
        for consumer in consumers:
            if consumer.process is not None and consumer.process.poll() is not None:
                raise AssertionError(
                    f"the consumer exited ({consumer.process.returncode}):\n{consumer.log_text()[-5000:]}"
                )
        return total(view) >= expected

    try:
        wait_for(done, timeout, f"{expected} records in the store", interval=0.5)
    except TimeoutError as exc:
        logs = "\n".join(c.log_text()[-3000:] for c in consumers)
        skipped = kcl_skipped(*consumers)
        raise AssertionError(f"{exc}: the store holds {total(view)}; KCL dropped {skipped} batch(es)\n{logs}") from exc


def conclude(scenario: str, injected: str, ledger: Ledger, view: View, started: float, notes: str = "") -> Result:
    """Record the scenario's row, then assert the promise: each valid record once, each rejected
    record once as a dead letter with its reason."""
    applied, dead = view.applied(), view.dead_letters()
    produced, in_store, duplicates, lost = tally(ledger.valid, ledger.rejected, applied, dead)
    result = record(
        Result(scenario, injected, produced, in_store, duplicates, lost, round(time.monotonic() - started, 1), notes)
    )
    assert {n: c for n, c in applied.items() if c > 1} == {}, f"{scenario}: applied more than once"
    assert set(applied) == ledger.valid, (
        f"{scenario}: lost {sorted(ledger.valid - set(applied))[:20]}, unexpected {sorted(set(applied) - ledger.valid)[:20]}"
    )
    assert dead == ledger.rejected, f"{scenario}: dead letters {dict(dead)} != {dict(ledger.rejected)}"
    assert result.ok
    return result


def said(line: dict[str, Any]) -> str:
    """The error of a log line without the store's path or URL (``<store> <where>: <what>``)."""
    text = " ".join(str(line.get("error", "")).split(": ", 1)[-1].split())
    return text if len(text) <= 100 else f"{text[:55]} … {text[-40:]}"


def rejects(ledger: Ledger, start: int) -> list[tuple[str, bytes]]:
    """One invalid and one late record (each must become one dead letter)."""
    ledger.expect_rejected("invalid_json")
    ledger.expect_rejected("late")
    late = click(start, "u-late", now() - timedelta(minutes=10))
    return [("u-bad", b"{not json " + str(start).encode()), ("u-late", json.dumps(late).encode())]


def records(ledger: Ledger, start: int, count: int) -> list[tuple[str, bytes]]:
    """``count`` valid records then one invalid and one late one, as payloads."""
    valid = ledger.expect_valid(events(start, count))
    return [*streams.json_payloads(valid), *rejects(ledger, start + count)]


# -- a small disk --------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (needs root / CAP_SYS_ADMIN: fails loudly otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mounted.returncode == 0, (
        f"cannot mount a {size} tmpfs at {path} to fill a disk ({mounted.stderr.strip()}): "
        "the full-disk scenario needs root (CI and the development machines run as root)"
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full (ENOSPC); the bytes written."""
    written = 0
    chunk = b"\0" * (256 * 1024)
    with path.open("wb", buffering=0) as out:
        while True:
            try:
                written += out.write(chunk) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    # the last partial chunks: down to the last byte
    with path.open("ab", buffering=0) as out:
        for size in (4096, 512, 1):
            while True:
                try:
                    written += out.write(b"\0" * size) or 0
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return written
