"""The store contract: what every backend (SQLite, PostgreSQL) must guarantee.

A store holds, per dataset version, every accepted event keyed and versioned by event time;
per :class:`Feed` (a dataset version fed from one stream) and shard, the position of the last
applied record and the shard's watermark; and the dead letters. Shard ids repeat from stream to
stream (``shardId-000000000000``), so a shard's state belongs to its feed: pointing a dataset
at another stream starts from nothing, never from the first stream's positions or watermarks.
It needs few operations:

The contract is two protocols: :class:`ShardStore`, the few operations a shard's worker needs,
and :class:`Store`, which adds what serving and operators use.

* :meth:`Store.apply` applies one batch **atomically**: its rows, its dead letters and the
  shard's new :class:`ShardState` commit together or not at all. It is a compare-and-set on
  the shard state: if the stored state is not the one the caller computed the batch from
  (another worker applied records in between, or this is a replay), nothing is written and
  the current state comes back as a :class:`Conflict`, so the caller can recompute.
* :meth:`Store.shard_state` reads the state a worker resumes from.
* :meth:`Store.lookup` returns the newest version of a key with event time ≤ a moment.

"Replay" means the same records delivered again (Kinesis and KCL deliver at least once):
callers skip every record at or below the stored position, so re-applying a batch changes
nothing. A store that cannot write (locked, disk full, unreachable) raises
:class:`~thyme.errors.StoreUnavailableError` and has changed nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from thyme.schema import DatasetSchema

Key = str | int


@dataclass(frozen=True)
class Feed:
    """What one consumer writes: a dataset version fed from one stream (its ARN).

    The unit the store keeps shard state, counters and dead letters for."""

    dataset: DatasetSchema
    stream: str
    """The stream's ARN."""


@dataclass(frozen=True, order=True)
class Position:
    """A record's place in its shard: sequence number, then KPL sub-sequence number."""

    sequence: int
    sub_sequence: int = 0

    @classmethod
    def parse(cls, sequence: str, sub_sequence: int | None = 0) -> Position:
        return cls(int(sequence), sub_sequence or 0)

    def __str__(self) -> str:
        return f"{self.sequence}/{self.sub_sequence}"


@dataclass(frozen=True)
class ShardState:
    """What a shard's worker resumes from: last applied position and the watermark."""

    position: Position | None = None
    """The last record applied (or dead-lettered); None before the first batch."""
    watermark_us: int | None = None
    """Greatest event time accepted on this shard, µs since the epoch (UTC); None if none yet."""
    ended: bool = False
    """The shard was read to its end (after a split or merge)."""


@dataclass(frozen=True)
class DeadLetter:
    """A record that was not applied, kept with its raw bytes so it can be inspected and re-driven."""

    shard: str
    sequence: str
    sub_sequence: int
    partition_key: str
    raw: bytes
    reason: str
    """``invalid_base64``, ``invalid_utf8``, ``invalid_json``, ``not_an_object``,
    ``schema: <field>: <what>``, ``late``, ``future_timestamp``; and the formats' own
    (``thyme/records/formats.py``): ``decompressed_too_large``, ``invalid_compression``,
    ``truncated_compression``, ``invalid_envelope``, ``invalid_log_event``, ``wrong_field_count``."""
    arrival_ms: int | None
    recorded_at_us: int = 0
    """Filled in by the store when read back."""
    id: int = 0
    """The store's id of the dead letter (filled in when read back; order of recording)."""
    redriven_at_us: int | None = None
    """When ``thyme kinesis dead-letters redrive`` applied it (kept, marked, for the record)."""
    stream: str = ""
    """The stream it was read from (filled in when read back; written from the batch's feed)."""
    detail: str | None = None
    """The facts behind the reason, as a small JSON object: for ``late`` or ``future_timestamp``
    the event time, the watermark or the arrival time and the bound; for a format's reasons the
    sizes, counts or error; for a CloudWatch Logs event its envelope (log group, stream, owner),
    which re-drive reads back (``thyme.records.describe`` words it all). The reason stays the
    class, so it counts and filters as before."""


@dataclass(frozen=True)
class DeadLetterQuery:
    """Filters for :meth:`Store.dead_letters` (all optional; combined with AND)."""

    shard: str | None = None
    stream: str | None = None
    """Only letters read from this stream (ARN)."""
    since_us: int | None = None
    """Recorded at or after (µs since the epoch)."""
    until_us: int | None = None
    """Recorded before."""
    after_id: int = 0
    """Only ids above this one (to page through)."""
    include_redriven: bool = False


Row = tuple[Key, int, str]
"""An accepted event ready to store: ``(key, event time in µs since the epoch UTC, row as JSON)``.
A plain tuple: the record processor makes one per record on its hot path."""


@dataclass
class Batch:
    """Everything one ``processRecords`` call changes, applied in one transaction."""

    shard: str
    state: ShardState
    """The shard state after this batch."""
    rows: list[Row] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    millis_behind_latest: int | None = None
    """How far the shard's reader was behind the tip when it fetched this batch (KCL's
    ``millisBehindLatest``); kept with the shard state for ``thyme kinesis status``."""


@dataclass(frozen=True)
class Conflict:
    """:meth:`Store.apply` found another state than expected; nothing was written."""

    current: ShardState | None


@dataclass(frozen=True)
class ShardSummary:
    """A shard's state with its counters, for status and tests."""

    dataset: str
    shard: str
    state: ShardState
    applied: int
    dead_lettered: int
    updated_at_us: int
    """When the last batch was applied."""
    millis_behind_latest: int | None = None
    """As reported with the last applied batch."""


class ShardStore(Protocol):
    """What a shard's worker needs: a handful of operations. See the module docstring for what
    "atomically" and "replay" mean. Safe to share between threads, and to use after a ``fork``."""

    url: str
    """The store URL with any password removed (safe to print)."""

    def ensure_feed(self, feed: Feed) -> None:
        """Create the dataset's tables if needed and record its shape, widening the stored one when
        rows can follow (:func:`~thyme.schema.compare_shapes`), else raise
        :class:`~thyme.errors.SchemaChangedError`; then adopt shard state and dead letters written
        before they were kept per stream and version (the dataset's first feed takes them, once)."""

    def shard_state(self, feed: Feed, shard: str) -> ShardState | None:
        """The stored state of a shard, or None if nothing was applied yet."""

    def apply(self, feed: Feed, batch: Batch, expect: ShardState | None) -> Conflict | None:
        """Apply ``batch`` atomically if the stored state equals ``expect``; else a :class:`Conflict`."""

    def close(self) -> None:
        """Release the connections."""


class Store(ShardStore, Protocol):
    """A whole store: the worker's operations and the ones serving and operators use."""

    def ensure_dataset(self, schema: DatasetSchema) -> None:
        """Create the dataset's tables if needed and record (or widen) its shape; refuse one stored
        rows cannot follow with :class:`~thyme.errors.SchemaChangedError`."""

    def lookup(self, dataset: DatasetSchema, key: Key, at_us: int) -> str | None:
        """The row (JSON) of the newest version of ``key`` with event time ≤ ``at_us``; ties go
        to the one applied last (stream order). Reads only: a dataset never written is None."""

    def lookup_many(self, dataset: DatasetSchema, keys: Sequence[Key], at_us: int) -> list[str | None]:
        """:meth:`lookup` for each key, in order, from one read snapshot."""

    def count_rows(self, dataset: DatasetSchema) -> int:
        """Number of stored versions (all keys, all event times)."""

    def shards(self, feed: Feed) -> list[ShardSummary]:
        """Every shard the store has state for in ``feed``."""

    def dead_letters(
        self,
        dataset: DatasetSchema,
        reason: str | None = None,
        limit: int = 1000,
        *,
        query: DeadLetterQuery | None = None,
    ) -> list[DeadLetter]:
        """Dead letters of a dataset version in the order recorded, optionally for one reason (or its
        start: ``schema`` finds every ``schema: …`` reason, see ``common.reason_forms``) and the
        filters of ``query``; by default only the ones not re-driven yet."""

    def dead_letter_counts(self, dataset: DatasetSchema) -> dict[str, int]:
        """Number of dead letters not re-driven, per reason (every stream)."""

    def dead_letter_counts_by_shard(self, feed: Feed) -> dict[str, dict[str, int]]:
        """Number of dead letters of ``feed`` not re-driven, per shard then per reason."""

    def redrive(self, dataset: DatasetSchema, fixes: Sequence[tuple[int, Row]]) -> int:
        """In one transaction: mark each dead letter ``id`` re-driven and apply its row, for the
        ids not marked yet (a second run, or a concurrent one, applies nothing twice). Returns
        the number applied."""
