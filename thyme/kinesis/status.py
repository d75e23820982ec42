"""``thyme kinesis status``: per shard, who holds the lease, what KCL checkpointed, what the
store applied, the watermark and the counters — without a console.

Checks that the stream exists (with the identity ``run`` reads it with: the role, if any),
then reads the KCL lease table (DynamoDB, the consumer's own account and default credentials)
and the Thyme store: the dataset version's state for this stream only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from thyme.connectors.source import source_spec
from thyme.errors import LoadError
from thyme.kinesis.aws import calling, check_stream, client_config, session_name, source_kinesis
from thyme.kinesis.launcher import RunOptions, env_endpoint
from thyme.kinesis.leader import read_leader
from thyme.kinesis.properties import default_application_name
from thyme.schema import dataset_schema
from thyme.store import Feed, open_store
from thyme.store.common import total_by_reason
from thyme.times import iso_from_us


@dataclass(frozen=True)
class ShardStatus:
    """One shard as the lease table and the store see it."""

    shard: str
    lease_owner: str | None
    lease_counter: int | None
    """Incremented by KCL at every lease renewal: a counter that stops moving means a dead owner."""
    kcl_checkpoint: str | None
    store_position: str | None
    watermark: str | None
    ended: bool
    applied: int
    dead_lettered: int
    """Records this shard ever dead-lettered (re-driven ones included)."""
    dead_letters_by_reason: dict[str, int]
    """Dead letters held (not re-driven), by reason."""
    millis_behind_latest: int | None
    """KCL's lag of the shard's reader behind the stream's tip, as reported with the last batch."""
    last_batch_at: str | None
    """When the store last applied a batch of this shard."""
    owner_last_seen: str | None = None
    """When the lease owner last reported its worker metrics (KCL 3's ``<app>-WorkerMetricStats``,
    every 30 s, every 1 s with the local profile); None: no report found."""
    owner_gone: bool | None = None
    """The owner has not reported for longer than KCL itself waits (:data:`OWNER_GONE_AFTER_S`):
    stopped or dead, its leases waiting for another worker; None: unknown."""


OWNER_GONE_AFTER_S = 60
"""Two of KCL's default worker-metrics report periods (30 s): after this KCL too counts a worker's
metrics as stale and stops assigning it leases."""


def read_leases(table: str, region: str, endpoint_url: str | None) -> dict[str, dict[str, Any]]:
    """Shard id → lease item (owner, counter, checkpoint) from the KCL lease table; {} if none yet."""
    import boto3

    client = boto3.client("dynamodb", region_name=region, endpoint_url=endpoint_url, config=client_config())

    def scan() -> dict[str, dict[str, Any]]:
        leases: dict[str, dict[str, Any]] = {}
        try:
            for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
                for item in page["Items"]:
                    key = item.get("leaseKey", {}).get("S")
                    if key is None or "checkpoint" not in item:
                        continue  # KCL keeps other entities in some tables
                    leases[key] = {
                        "owner": item.get("leaseOwner", {}).get("S"),
                        "counter": int(item["leaseCounter"]["N"]) if "leaseCounter" in item else None,
                        "checkpoint": item["checkpoint"].get("S"),
                        "sub": int(item.get("checkpointSubSequenceNumber", {}).get("N", "0")),
                    }
        except client.exceptions.ResourceNotFoundException:
            return {}
        return leases

    where = f"lease table {table} (region {region})"
    return calling("the consumer's own identity", "dynamodb:Scan", where, endpoint_url, scan)


def read_worker_reports(table: str, region: str, endpoint_url: str | None) -> dict[str, int]:
    """Worker id → when it last reported (epoch seconds), from KCL 3's ``<table>-WorkerMetricStats``;
    {} when that table is missing or unreadable (older KCL, a narrower policy): liveness is extra."""
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("dynamodb", region_name=region, endpoint_url=endpoint_url, config=client_config())
    reports: dict[str, int] = {}
    try:
        for page in client.get_paginator("scan").paginate(TableName=f"{table}-WorkerMetricStats"):
            for item in page["Items"]:
                worker, updated = item.get("wid", {}).get("S"), item.get("lut", {}).get("N")
                if worker is not None and updated is not None:
                    reports[worker] = int(float(updated))
    except ClientError:
        return {}
    return reports


@dataclass(frozen=True)
class LeaderStatus:
    """Who holds KCL 3's leader lock (``<app>-CoordinatorState``), and whether it still reports."""

    owner: str | None
    """None: no worker holds it (KCL is starting, or the lock was just removed)."""
    owner_last_seen: str | None = None
    owner_gone: bool | None = None
    lock_lease_s: float | None = None
    """The lock's lease as its holder wrote it: a live worker takes a dead holder's lock after it."""


def read_leader_status(
    table: str, region: str, endpoint_url: str | None, reports: dict[str, int], now: float
) -> LeaderStatus | None:
    """The leader from the coordinator table, with its liveness from ``reports``; None when the
    table is missing or unreadable (KCL not started yet, an older KCL, a narrower policy)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("dynamodb", region_name=region, endpoint_url=endpoint_url, config=client_config())
    try:
        lock = read_leader(client, table)
    except (BotoCoreError, ClientError):
        return None
    if lock is None:
        return None
    seen = reports.get(lock.owner) if lock.owner else None
    return LeaderStatus(
        lock.owner,
        None if seen is None else iso_from_us(seen * 1_000_000),
        None if seen is None else now - seen > OWNER_GONE_AFTER_S,
        None if lock.lease_ms is None else lock.lease_ms / 1000,
    )


def status(
    klass: type, options: RunOptions, environ: Mapping[str, str] | None = None, now: float | None = None
) -> tuple[list[ShardStatus], dict[str, int], LeaderStatus | None]:
    """Every shard known to the lease table or the store, the dead letters by reason, and KCL's leader."""
    environ = os.environ if environ is None else environ
    schema, spec = dataset_schema(klass), source_spec(klass)
    if schema is None or spec is None:
        raise LoadError(f"{getattr(klass, '__name__', klass)} is not a @source(KinesisSource(...)) @dataset class")
    connector = spec.connector
    table = options.application_name or default_application_name(schema.name, connector.stream_name, schema.version)
    connection = connector.resolve(environ)
    sts = options.sts_endpoint_url or env_endpoint(environ, "sts")
    check_stream(connection, source_kinesis(connection, sts, session_name(table)))
    endpoint = options.dynamodb_endpoint_url or env_endpoint(environ, "dynamodb") or connector.endpoint_url
    leases = read_leases(table, connector.region, endpoint)
    reports = read_worker_reports(table, connector.region, endpoint) if leases else {}
    now = time.time() if now is None else now
    leader = read_leader_status(table, connector.region, endpoint, reports, now) if leases else None
    feed = Feed(schema, connector.stream_arn)
    store = open_store(options.store_url, create=False)
    try:
        shards = {s.shard: s for s in store.shards(feed)}
        by_shard = store.dead_letter_counts_by_shard(feed)
    finally:
        store.close()
    rows = []
    for shard in sorted(set(leases) | set(shards)):
        lease, stored = leases.get(shard, {}), shards.get(shard)
        seen = reports.get(lease["owner"]) if lease.get("owner") else None
        checkpoint = lease.get("checkpoint")
        if checkpoint is not None and lease.get("sub"):
            checkpoint = f"{checkpoint}/{lease['sub']}"
        rows.append(
            ShardStatus(
                shard=shard,
                lease_owner=lease.get("owner"),
                lease_counter=lease.get("counter"),
                kcl_checkpoint=checkpoint,
                store_position=None if stored is None or stored.state.position is None else str(stored.state.position),
                watermark=None if stored is None else iso_from_us(stored.state.watermark_us),
                ended=bool(stored and stored.state.ended),
                applied=0 if stored is None else stored.applied,
                dead_lettered=0 if stored is None else stored.dead_lettered,
                dead_letters_by_reason=by_shard.get(shard, {}),
                millis_behind_latest=None if stored is None else stored.millis_behind_latest,
                last_batch_at=None if stored is None else iso_from_us(stored.updated_at_us),
                owner_last_seen=None if seen is None else iso_from_us(seen * 1_000_000),
                owner_gone=None if seen is None else now - seen > OWNER_GONE_AFTER_S,
            )
        )
    return rows, total_by_reason(by_shard), leader


def _owner(row: ShardStatus) -> str:
    if row.lease_owner is None:
        return "-"
    if row.owner_gone and row.owner_last_seen is not None:
        return f"{row.lease_owner} (gone since {row.owner_last_seen[:19]}Z)"
    return row.lease_owner


def short_position(value: str | None) -> str:
    """``…<last 12 digits>[/sub]`` for a sequence number (``seq`` or ``seq/sub``, sub 0 left out);
    KCL's sentinels (``TRIM_HORIZON``, ``SHARD_END``) as they are."""
    if value is None:
        return "-"
    sequence, _, sub = value.partition("/")
    if not sequence.isdigit():
        return value
    shown = sequence if len(sequence) <= 13 else "…" + sequence[-12:]
    return shown + (f"/{sub}" if sub and sub != "0" else "")


def as_json(rows: list[ShardStatus], reasons: dict[str, int], leader: LeaderStatus | None = None) -> dict[str, Any]:
    return {
        "shards": [asdict(r) for r in rows],
        "dead_letters_by_reason": reasons,
        "leader": None if leader is None else asdict(leader),
    }


def as_table(rows: list[ShardStatus], reasons: dict[str, int], leader: LeaderStatus | None = None) -> str:
    """A plain-text table. The KCL checkpoint and the store position are printed the same way
    (the sequence number's last 12 digits, then ``/sub`` only when a sub-sequence is set), so
    they can be compared by eye."""

    header = (
        "shard",
        "owner",
        "renewals",
        "kcl checkpoint",
        "store position",
        "watermark",
        "behind",
        "last batch",
        "applied",
        "dead",
    )
    lines = [
        (
            r.shard + (" (ended)" if r.ended else ""),
            _owner(r),
            "-" if r.lease_counter is None else str(r.lease_counter),
            short_position(r.kcl_checkpoint),
            short_position(r.store_position),
            r.watermark or "-",
            "-" if r.millis_behind_latest is None else f"{r.millis_behind_latest / 1000:.1f}s",
            r.last_batch_at or "-",
            str(r.applied),
            str(r.dead_lettered),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    if not rows:
        out.append("(no shard has a lease or stored state yet)")
    if leader is not None:
        holder = leader.owner or "none (no worker holds the lock: leases are not being assigned)"
        if leader.owner_gone and leader.owner_last_seen is not None:
            lease = "its lease" if leader.lock_lease_s is None else f"{leader.lock_lease_s:g} s"
            holder += f" (gone since {leader.owner_last_seen[:19]}Z: a live worker takes the lock after {lease})"
        elif leader.owner and leader.lock_lease_s is not None:
            holder += f" (lock lease {leader.lock_lease_s:g} s)"
        out.append(f"KCL leader: {holder}")
    out.append("")
    out.append("dead letters held, by reason:" if reasons else "no dead letters held")
    out += [f"  {count:8}  {reason}" for reason, count in reasons.items()]
    for r in rows:
        if r.dead_letters_by_reason:
            out.append(f"  {r.shard}: " + ", ".join(f"{reason} {n}" for reason, n in r.dead_letters_by_reason.items()))
    return "\n".join(out) + "\n"
