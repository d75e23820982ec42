"""One shard's worker: turn delivered records into one store transaction, exactly once.

Plain, typed Python with no knowledge of the KCL protocol (``record_processor.kcl`` adapts
it to amazon-kclpy). Per batch:

1. skip every record at or below the shard's stored position (a replay);
2. judge each record by the record rules (``thyme/records``: decode, validate, lateness against
   the watermark), in stream order;
3. apply rows, dead letters and the new position/watermark in one transaction, as a
   compare-and-set on the state the batch was computed from. If another worker moved the
   state meanwhile (a lease moved and the old owner is late), recompute from the new state;
4. if the store is unavailable, retry with backoff; past a bound, raise :class:`BatchFailedError`.
   The caller must then exit without acknowledging, so the daemon restarts the shard from
   its last checkpoint.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from record_processor.envelope import InputRecord
from thyme.connectors.formats import FormatSpec
from thyme.errors import StoreUnavailableError
from thyme.handover import DEFAULT_GIVE_UP_AFTER_S
from thyme.records import INVALID_BASE64, Fanout, LatenessPolicy, RecordRules, Rejected
from thyme.store.base import Batch, DeadLetter, Feed, Position, Row, ShardState, ShardStore

log = logging.getLogger("record_processor")
T = TypeVar("T")

MAX_CONFLICTS = 20
"""Recomputations allowed for one batch before giving up (each needs another writer's commit)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for a store that cannot apply a batch: doubling from ``initial_s`` to ``max_s``,
    giving up (exit, no acknowledgement) once ``give_up_after_s`` has passed."""

    initial_s: float = 0.2
    max_s: float = 5.0
    give_up_after_s: float = DEFAULT_GIVE_UP_AFTER_S


@dataclass
class BatchOutcome:
    """What one batch did (for logs, metrics and tests)."""

    received: int = 0
    applied: int = 0
    replayed: int = 0
    """Records skipped because the store already had them."""
    dead_letters: Counter[str] = field(default_factory=Counter)
    control_messages: int = 0
    """CloudWatch Logs control messages: acknowledged, neither rows nor dead letters."""
    attempts: int = 1
    last: Position | None = None
    """Position of the last record delivered (the checkpoint to take)."""
    store_seconds: float = 0.0
    """Time spent in the store's ``apply`` (all attempts)."""


class BatchFailedError(Exception):
    """The batch could not be applied within the retry bound; it must not be acknowledged."""


class ShardWorker:
    """Applies the batches of one shard to the store. One instance per child process."""

    def __init__(
        self,
        feed: Feed,
        lateness: LatenessPolicy,
        store: ShardStore,
        retry: RetryPolicy | None = None,
        *,
        parent_watermark: Callable[[str], int | None] | None = None,
        record_format: FormatSpec | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.feed = feed
        self.schema = feed.dataset
        self.lateness = lateness
        self.store = store
        self.retry = retry or RetryPolicy()
        self.rules = RecordRules(feed.dataset, lateness, record_format)
        self._parent_watermark = parent_watermark
        self._clock = clock
        self._sleep = sleep
        self.shard = ""
        self.stored: ShardState | None = None
        """The shard state as last read from or written to the store."""
        self._inherited_watermark: int | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def initialize(self, shard: str) -> None:
        """Load the shard's state; a new shard starts from its parents' watermark."""
        self.shard = shard

        def load() -> ShardState | None:
            self.store.ensure_feed(self.feed)
            return self.store.shard_state(self.feed, shard)

        self.stored = self._retrying("initialize", load)
        if self.stored is None and self._parent_watermark is not None:
            self._inherited_watermark = self._parent_watermark(shard)
        log.info(
            "shard initialised",
            extra={
                "fields": {
                    "position": None
                    if self.stored is None or self.stored.position is None
                    else str(self.stored.position),
                    "watermark_us": self._base().watermark_us,
                }
            },
        )

    def process(self, records: Sequence[InputRecord], millis_behind_latest: int | None = None) -> BatchOutcome:
        """Apply one delivered batch; return what happened. Raises :class:`BatchFailedError`.

        ``millis_behind_latest`` (KCL's, for this batch) is stored with the shard state."""
        # A batch makes ~10 objects per record and no reference cycles: the cyclic collector
        # would only rescan them (measured: 10-14% of the child's time). Paused per batch.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._process(records, millis_behind_latest)
        finally:
            if collecting:
                gc.enable()

    def _process(self, records: Sequence[InputRecord], millis_behind_latest: int | None) -> BatchOutcome:
        started = self._clock()
        attempts = 0
        conflicts = 0
        store_seconds = 0.0
        while True:
            attempts += 1
            expect = self.stored
            batch, outcome = self._build(records, expect)
            batch.millis_behind_latest = millis_behind_latest
            outcome.attempts = attempts
            if not batch.rows and not batch.dead_letters:
                return outcome  # nothing new: a replay or an empty batch
            writing = time.perf_counter()
            try:
                conflict = self.store.apply(self.feed, batch, expect)
            except StoreUnavailableError as exc:
                store_seconds += time.perf_counter() - writing
                self._backoff(started, attempts, exc)
                continue
            outcome.store_seconds = store_seconds = store_seconds + time.perf_counter() - writing
            if conflict is None:
                self.stored = batch.state
                return outcome
            conflicts += 1
            log.warning(
                "shard state changed under this worker (another worker applied records); recomputing",
                extra={"fields": {"expected": _describe(expect), "found": _describe(conflict.current)}},
            )
            if conflicts >= MAX_CONFLICTS:
                raise BatchFailedError(f"shard {self.shard}: state kept changing under this worker")
            self.stored = conflict.current

    def shard_ended(self) -> None:
        """Record that the shard was read to its end (its children may inherit its watermark)."""

        def mark() -> None:
            # Recomputed on every attempt: if another worker moved the state meanwhile, its
            # position and watermark are kept, never overwritten with this worker's older ones.
            state = self._base()
            ended = ShardState(position=state.position, watermark_us=state.watermark_us, ended=True)
            conflict = self.store.apply(self.feed, Batch(self.shard, ended), self.stored)
            if conflict is not None:
                self.stored = conflict.current
                raise StoreUnavailableError("shard state changed while marking the shard ended")
            self.stored = ended

        self._retrying("shard_ended", mark)

    # -- internals --------------------------------------------------------------------------

    def _base(self) -> ShardState:
        return self.stored or ShardState(watermark_us=self._inherited_watermark)

    def _build(self, records: Sequence[InputRecord], expect: ShardState | None) -> tuple[Batch, BatchOutcome]:
        base = expect or ShardState(watermark_us=self._inherited_watermark)
        outcome = BatchOutcome(received=len(records))
        if not records:
            return Batch(self.shard, base), outcome
        after = base.position
        first = Position(int(records[0].sequence), records[0].sub_sequence)
        outcome.last = last = Position(int(records[-1].sequence), records[-1].sub_sequence)
        if after is not None and first <= after:  # a replay, in part or whole: skip what is applied
            fresh = [r for r in records if Position(int(r.sequence), r.sub_sequence) > after]
            outcome.replayed = len(records) - len(fresh)
            records = fresh
            if not records:
                return Batch(self.shard, base), outcome
        watermark = base.watermark_us
        judge = self.rules.judge
        rows: list[Row] = []
        dead: list[DeadLetter] = []
        now_ms = int(self._clock() * 1000)
        for record in records:
            detail = None
            try:
                if record.base64_error:
                    reason = INVALID_BASE64
                else:
                    arrival = record.arrival_ms
                    result = judge(record.data, now_ms if arrival is None else arrival, watermark)
                    if isinstance(result, str):
                        reason = result
                        # rare: the numbers behind it (by how much late, sizes, counts), for the operator
                        detail = self.rules.facts(reason, now_ms if arrival is None else arrival, watermark)
                    elif isinstance(result, Fanout):  # a record of many events: one row or letter each
                        watermark = self._fan_out(record, result, rows, dead, outcome, watermark)
                        continue
                    else:
                        rows.append(result)
                        if watermark is None or result[1] > watermark:
                            watermark = result[1]
                        continue
            except Exception as exc:  # a bug must not stall the shard: keep the record, say why
                log.exception("unexpected error decoding a record; dead-lettered")
                self.rules.facts("", 0, None)  # drop what the failed judgement may have left
                reason = f"internal_error: {type(exc).__name__}"
            dead.append(self._letter(record, record.data, reason, detail))
            outcome.dead_letters[_reason_class(reason)] += 1
        outcome.applied = len(rows)
        state = ShardState(position=last, watermark_us=watermark, ended=base.ended)
        return Batch(self.shard, state, rows, dead), outcome

    def _fan_out(
        self,
        record: InputRecord,
        events: Fanout,
        rows: list[Row],
        dead: list[DeadLetter],
        outcome: BatchOutcome,
        watermark: int | None,
    ) -> int | None:
        """Add one record's events (already judged in order) to the batch; the new watermark.
        All of them commit with the record's position, so a replay applies none of them twice."""
        if events.control:
            outcome.control_messages += 1
        for event in events:
            if isinstance(event, Rejected):
                dead.append(self._letter(record, event.raw, event.reason, event.detail))
                outcome.dead_letters[_reason_class(event.reason)] += 1
            else:
                rows.append(event)
                if watermark is None or event[1] > watermark:
                    watermark = event[1]
        return watermark

    def _letter(self, record: InputRecord, raw: bytes, reason: str, detail: str | None) -> DeadLetter:
        """A dead letter of ``record`` (or of one of its events: ``raw``, the event's bytes)."""
        return DeadLetter(
            self.shard,
            record.sequence,
            record.sub_sequence,
            record.partition_key,
            raw,
            reason,
            record.arrival_ms,
            detail=detail,
        )

    def _backoff(self, started: float, attempts: int, exc: StoreUnavailableError, what: str = "batch") -> None:
        elapsed = self._clock() - started
        if elapsed >= self.retry.give_up_after_s:
            raise BatchFailedError(
                f"shard {self.shard}: store unavailable for {elapsed:.0f}s, giving up so the daemon "
                f"restarts the shard from its last checkpoint: {exc}"
            ) from exc
        delay = min(self.retry.max_s, self.retry.initial_s * 2 ** (attempts - 1))
        log.warning(
            "store unavailable; nothing applied or acknowledged, retrying",
            extra={
                "fields": {
                    "event": "store_unavailable",
                    "during": what,
                    "error": str(exc),
                    "attempt": attempts,
                    "retry_in_s": delay,
                }
            },
        )
        self._sleep(delay)

    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        """Run a store action, retrying while the store is unavailable (bounded)."""
        started = self._clock()
        attempts = 0
        while True:
            attempts += 1
            try:
                return action()
            except StoreUnavailableError as exc:
                self._backoff(started, attempts, exc, what)


def _reason_class(reason: str) -> str:
    """Group ``schema: <field>: <what>`` reasons by field for counters."""
    if reason.startswith("schema: "):
        return "schema: " + reason[8:].split(":", 1)[0]
    return reason


def _describe(state: ShardState | None) -> str:
    if state is None or state.position is None:
        return "nothing applied"
    return f"position {state.position}, watermark {state.watermark_us}"
