"""A memory budget for one host: the daemon's settings that keep the whole process tree in it.

What a host holds grows with its shards: one Python child per leased shard, and in the JVM the
batches KCL fetches ahead for each. On a quiet day that is ~15-25 MiB a shard; after an outage,
when every shard is backlogged at once, each child holds a whole batch (up to ``maxRecords``
records) and the JVM holds up to four more per shard (KCL's prefetch: 4 batches, 8 MiB a shard).
With KCL's defaults (10,000-record batches) a host with 64 backlogged shards of 1 KiB records can
need several GiB; in a container the JVM's default heap (a quarter of the limit) then runs out.

``run --memory-budget 2GiB --max-shards 64`` turns the budget into settings, from a model fitted
to measurements on the local stack (``benchmarks/catchup.py``; README, "Many shards on one host"):

* ``maxLeasesForWorker`` = ``--max-shards``: the host never holds more shards than it was sized for;
* the prefetch: one batch ahead per shard, at most one batch's bytes (``thyme.prefetchBatches``,
  ``thyme.prefetchBytes``, read by our entry point: the properties file has no keys for them);
* ``maxRecords``: the largest batch whose copies (the child's, the JVM's) fit the share of a shard;
* the JVM's heap (``-Xmx``) and metaspace, so the JVM cannot grow past its part.

The budget is memory as a container's limit counts it: every page once (the tree's PSS), so the
code all the children map alike counts once, not once per child as a sum of RSS would. The batch
size is worked out in bytes and turned into records with ``record_size`` (1 KiB unless
``--record-size`` says otherwise): records larger than that make batches larger than planned, up
to the 10 MiB a GetRecords call returns at most.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal

from thyme.errors import ConfigError

Store = Literal["sqlite", "postgresql"]
"""The store the children write to: a PostgreSQL child holds more (its driver)."""
MIB: Final = 1024 * 1024
KIB: Final = 1024
LAUNCHER_MIB: Final = 64
"""``thyme kinesis run`` itself (measured 55-61 MiB)."""
JVM_NATIVE_MIB: Final = 320
"""The JVM beside its heap: metaspace (capped below), code cache, a few threads per shard, the GC,
the SDK's direct buffers (measured with 64 shards catching up: 191 to 315 MiB beside a 204-226
MiB heap, the most with PostgreSQL's slower children)."""
METASPACE_MIB: Final = 96
HEAP_BASE_MIB: Final = 48
"""The heap without any batch: SDK clients, leases, the scheduler."""
HEAP_MIN_MIB: Final = 128
"""The least heap a plan gives the JVM, however few its shards: a heap that runs out stops every
shard of the host, while the extra tens of MiB cost little."""
HEAP_PER_SHARD_MIB: Final = 1.0
"""A shard's consumer, lease and record processor bookkeeping in the heap."""
JVM_BATCH_COPIES: Final = 3.0
"""A batch in the heap, in multiples of its record bytes, for each batch held: the SDK's
response, the records, and the JSON line (base64) written to the child."""
JVM_PER_RECORD_KIB: Final = 0.5
"""A record's objects in the heap beside its bytes (the SDK's record, KCL's, their strings)."""
CHILD_PRIVATE_MIB: Final = {"sqlite": 12, "postgresql": 21}
"""A child's own memory before any batch, by store (fitted to its anonymous pages: measured 14.4 MiB
with SQLite and 23.4 MiB with PostgreSQL, whose driver loads libpq and more, each with 294 records
of 512 B in hand, ~2.4 MiB of it the batch's)."""
CHILD_SHARED_MIB: Final = {"sqlite": 10, "postgresql": 20}
"""The code and files every child maps alike (Python, the libraries): in memory once for all the
children (a child's RSS less its anonymous pages: measured 8.7 and 17.7 MiB)."""
CHILD_PER_RECORD_KIB: Final = 4.5
CHILD_BATCH_COPIES: Final = 7.5
"""A child's growth with a batch: ``CHILD_PER_RECORD_KIB`` a record (Python's objects for the
decoded record and its row) and ``CHILD_BATCH_COPIES`` times its bytes (the JSON line, base64,
the decoded bytes, the row's JSON). Fitted to the child's measured peaks (README, Performance:
+55 MiB with 10,000 records of 200 B, +74 MiB with 100 of 100 KiB; ``benchmarks/catchup.py``: the
largest of 64 children +4.3 MiB with 488 of 512 B, the children's average at the tree's peak +2.4)."""
GETRECORDS_MAX_BYTES: Final = 10 * MIB
"""The most one GetRecords call returns (AWS's limit), whatever ``maxRecords`` says."""
MIN_BATCH_RECORDS: Final = 100
"""Below this, the per-batch cost (a store transaction, a checkpoint) dominates: the budget is
too small for the shards rather than a reason for tiny batches."""
MAX_BATCH_RECORDS: Final = 10_000
DEFAULT_RECORD_SIZE: Final = 1 * KIB
_SIZE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|K|M|G)?\s*", re.IGNORECASE)
_UNITS: Final = {
    "b": 1,
    **dict.fromkeys(("k", "kb", "kib"), KIB),
    **dict.fromkeys(("m", "mb", "mib"), MIB),
    **dict.fromkeys(("g", "gb", "gib"), 1024 * MIB),
}


def parse_size(text: str, what: str) -> int:
    """Bytes from ``2GiB``, ``1536MiB``, ``512M``, ``4096`` (binary units: a container limit's)."""
    match = _SIZE.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(
            what,
            "expected a size such as 2GiB, 1536MiB or 512KiB",
            f"Write the {what} as a number and a unit (B, KiB, MiB, GiB).",
            value=text,
        )
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


@dataclass(frozen=True)
class MemoryPlan:
    """The settings that keep a host holding ``shards`` shards within ``budget`` bytes."""

    budget: int
    shards: int
    record_size: int
    max_records: int
    prefetch_batches: int
    prefetch_bytes: int
    heap_mib: int
    store: Store = "sqlite"

    @property
    def batch_bytes(self) -> int:
        return _batch(self.max_records, self.record_size)[1]

    def java_opts(self) -> list[str]:
        return [f"-Xmx{self.heap_mib}m", f"-XX:MaxMetaspaceSize={METASPACE_MIB}m"]

    def expected_peak_mib(self) -> float:
        """The model's peak for the whole tree with every shard backlogged at once."""
        return _peak_mib(self.shards, self.max_records, self.record_size, self.heap_mib, self.store)

    def jvm_mib(self) -> float:
        """The model's peak for the JVM: its heap and what it holds beside."""
        return JVM_NATIVE_MIB + self.heap_mib

    def child_mib(self) -> float:
        """The model's peak RSS for one shard's child, a whole batch in hand (its shared pages included)."""
        return CHILD_SHARED_MIB[self.store] + _child_mib(self.max_records, self.record_size, self.store)

    def describe(self) -> str:
        return (
            f"memory budget {self.budget / MIB:.0f} MiB for up to {self.shards} shards: batches of "
            f"{self.max_records} records ({self.record_size} B each assumed) into {self.store}, "
            f"{self.prefetch_batches} fetched ahead per shard (at most {self.prefetch_bytes} B), JVM heap "
            f"{self.heap_mib} MiB; expected peak {self.expected_peak_mib():.0f} MiB"
        )


def _batch(max_records: int, record_size: int) -> tuple[int, int]:
    """Records and bytes of a full batch: ``max_records`` records, or fewer if 10 MiB is reached first."""
    records = max(1, min(max_records, GETRECORDS_MAX_BYTES // record_size))
    return records, min(records * record_size, GETRECORDS_MAX_BYTES)


def _heap_mib(shards: int, max_records: int, record_size: int) -> int:
    # one batch queued ahead and one being handed to the child, per shard, with room for the GC
    records, size = _batch(max_records, record_size)
    held = shards * 2 * (size * JVM_BATCH_COPIES / MIB + records * JVM_PER_RECORD_KIB / 1024)
    return max(HEAP_MIN_MIB, math.ceil(HEAP_BASE_MIB + shards * HEAP_PER_SHARD_MIB + 1.25 * held))


def _child_mib(max_records: int, record_size: int, store: Store) -> float:
    """One child's own memory with a whole batch in hand (without the pages it shares)."""
    records, size = _batch(max_records, record_size)
    return CHILD_PRIVATE_MIB[store] + records * CHILD_PER_RECORD_KIB / 1024 + size * CHILD_BATCH_COPIES / MIB


def _peak_mib(shards: int, max_records: int, record_size: int, heap_mib: int, store: Store) -> float:
    children = CHILD_SHARED_MIB[store] + shards * _child_mib(max_records, record_size, store)
    return LAUNCHER_MIB + JVM_NATIVE_MIB + heap_mib + children


def plan(budget: int, shards: int, record_size: int = DEFAULT_RECORD_SIZE, store: Store = "sqlite") -> MemoryPlan:
    """The largest batches that keep ``shards`` backlogged shards within ``budget`` bytes.

    Raises :class:`ConfigError` naming the smallest budget that works when this one cannot hold
    ``shards`` shards with batches of :data:`MIN_BATCH_RECORDS` records."""
    if shards < 1:
        raise ConfigError(
            "--max-shards", "must be at least 1", "Give the most shards this host may hold.", value=shards
        )
    if record_size < 1:
        raise ConfigError(
            "--record-size", "must be at least 1 byte", "Give the records' usual size.", value=record_size
        )

    def peak(records: int) -> float:
        return _peak_mib(shards, records, record_size, _heap_mib(shards, records, record_size), store)

    def fits(records: int) -> bool:
        return peak(records) <= budget / MIB

    if not fits(MIN_BATCH_RECORDS):
        smallest = peak(MIN_BATCH_RECORDS)
        raise ConfigError(
            "--memory-budget",
            f"too small for {shards} shards of {record_size} B records into {store}: the host needs about "
            f"{math.ceil(smallest)} MiB with batches of {MIN_BATCH_RECORDS} records",
            f"Raise --memory-budget to at least {math.ceil(smallest / 64) * 64}MiB, or lower --max-shards "
            "(and run more hosts).",
            value=f"{budget / MIB:.0f}MiB",
        )
    low, high = MIN_BATCH_RECORDS, MAX_BATCH_RECORDS
    while low < high:  # the largest batch that fits
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    low = _batch(low, record_size)[0]  # no more records than 10 MiB holds: smaller ones would cost more
    return MemoryPlan(
        budget=budget,
        shards=shards,
        record_size=record_size,
        max_records=low,
        prefetch_batches=1,
        prefetch_bytes=_batch(low, record_size)[1],
        heap_mib=_heap_mib(shards, low, record_size),
        store=store,
    )
