"""The shard worker without the protocol: skipping replays, lateness, conflicts, store outages."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from record_processor.envelope import InputRecord, from_base64
from record_processor.worker import BatchFailedError, RetryPolicy, ShardWorker
from tests.factories import ClickEvent, b64, feed_of, schema_of, seq
from thyme.errors import StoreUnavailableError
from thyme.records import describe
from thyme.records.lateness import LatenessPolicy
from thyme.serving import lookup
from thyme.store import Batch, Conflict, Position, ShardState, Store

SCHEMA = schema_of(ClickEvent)
FEED = feed_of(SCHEMA)
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
POLICY = LatenessPolicy(timedelta(minutes=5), timedelta(hours=1))


def rec(n: int, user: str, minutes: float, page: str = "/", sub: int = 0, arrival_ms: int | None = None) -> InputRecord:
    moment = T0 + timedelta(minutes=minutes)
    payload = {"user_id": user, "page": page, "timestamp": moment.isoformat()}
    return from_base64(b64(payload), user, seq(n), sub, T0_MS + 3_600_000 if arrival_ms is None else arrival_ms)


def raw(n: int, data: bytes | str) -> InputRecord:
    return from_base64(data if isinstance(data, str) else b64(data), "pk", seq(n), 0, T0_MS)


def worker(store: Store, **kwargs: Any) -> ShardWorker:
    w = ShardWorker(FEED, POLICY, store, **kwargs)
    w.initialize("shardId-000000000000")
    return w


def test_batch_applies_rows_dead_letters_and_state(store: Store) -> None:
    w = worker(store)
    outcome = w.process(
        [
            rec(1, "u1", 0, "/a"),
            raw(2, b"{oops"),
            rec(3, "u2", 10),
            rec(4, "u1", 1, "/late"),
            raw(5, "!!"),
            rec(6, "u3", 200),  # 3h20m ahead of its arrival: from the future
        ]
    )
    assert (outcome.received, outcome.applied, outcome.replayed) == (6, 2, 0)
    assert dict(outcome.dead_letters) == {"invalid_json": 1, "late": 1, "invalid_base64": 1, "future_timestamp": 1}
    assert outcome.last == Position(int(seq(6)))
    assert store.shard_state(FEED, "shardId-000000000000") == ShardState(
        Position(int(seq(6))), int((T0 + timedelta(minutes=10)).timestamp() * 1_000_000)
    )
    assert store.dead_letter_counts(SCHEMA) == {
        "future_timestamp": 1,
        "invalid_base64": 1,
        "invalid_json": 1,
        "late": 1,
    }
    letters = {d.reason: d for d in store.dead_letters(SCHEMA)}
    assert letters["invalid_json"].raw == b"{oops"
    assert letters["invalid_base64"].raw == b"!!"
    assert json.loads(letters["late"].raw)["page"] == "/late"
    # the numbers behind late and future_timestamp, kept beside the reason (which stays the class)
    late_us, watermark_us = (int((T0 + timedelta(minutes=m)).timestamp() * 1_000_000) for m in (1, 10))
    assert json.loads(letters["late"].detail or "") == {
        "event_time_us": late_us,
        "watermark_us": watermark_us,
        "max_lateness_us": 300_000_000,
    }
    assert describe(letters["late"].detail) == (
        "event time 2024-05-01T12:01:00.000Z is 9m behind the shard's watermark 2024-05-01T12:10:00.000Z; "
        "max_lateness is 5m"
    )
    assert describe(letters["future_timestamp"].detail) == (
        "event time 2024-05-01T15:20:00.000Z is 2h20m after the record's arrival 2024-05-01T13:00:00.000Z; "
        "max_future_skew is 1h"
    )
    assert letters["invalid_json"].detail is None
    found = lookup(ClickEvent, "u1", store=store)
    assert found is not None
    assert found.page == "/a"


def test_replayed_and_overlapping_batches_apply_once(store: Store) -> None:
    w = worker(store)
    batch = [rec(n, f"u{n}", n) for n in range(1, 6)]
    w.process(batch)
    again = w.process(batch)
    assert (again.applied, again.replayed) == (0, 5)
    overlap = w.process([*batch[3:], rec(6, "u6", 6)])
    assert (overlap.applied, overlap.replayed) == (1, 2)
    # a new worker (restart, lease move) skips them too
    fresh = worker(store)
    assert fresh.process(batch).replayed == 5
    assert store.count_rows(SCHEMA) == 6


def test_kpl_sub_sequences_are_distinct_records(store: Store) -> None:
    w = worker(store)
    first = [rec(7, f"k{i}", i, sub=i) for i in range(3)]
    assert w.process(first).applied == 3
    assert w.process([rec(7, "k1", 1, sub=1), rec(7, "k3", 3, sub=3)]).applied == 1
    assert store.shard_state(FEED, "shardId-000000000000").position == Position(int(seq(7)), 3)  # type: ignore[union-attr]


def test_watermark_survives_restart(store: Store) -> None:
    worker(store).process([rec(1, "u1", 30)])
    restarted = worker(store)
    outcome = restarted.process([rec(2, "u2", 20)])  # 10 min behind the stored watermark
    assert dict(outcome.dead_letters) == {"late": 1}


def test_new_shard_inherits_parent_watermark(store: Store) -> None:
    w = ShardWorker(
        FEED, POLICY, store, parent_watermark=lambda shard: int((T0 + timedelta(minutes=30)).timestamp() * 1e6)
    )
    w.initialize("shardId-000000000002")
    outcome = w.process([rec(1, "u", 20), rec(2, "u", 29)])
    assert (outcome.applied, dict(outcome.dead_letters)) == (1, {"late": 1})


def test_zombie_writer_recomputes_from_the_new_owners_state(store: Store) -> None:
    old = worker(store)
    old.process([rec(1, "u1", 0)])
    new = worker(store)
    new.process([rec(2, "u2", 1), rec(3, "u3", 2)])
    # the old owner still thinks the position is seq(1); it was handed 2..4
    outcome = old.process([rec(2, "u2", 1), rec(3, "u3", 2), rec(4, "u4", 3)])
    assert (outcome.applied, outcome.replayed, outcome.attempts) == (1, 2, 2)
    assert store.count_rows(SCHEMA) == 4
    assert store.shard_state(FEED, "shardId-000000000000").position == Position(int(seq(4)))  # type: ignore[union-attr]


class FlakyStore:
    """Wraps a store; ``apply`` fails while ``failures`` is positive."""

    def __init__(self, inner: Store, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.url = inner.url

    def apply(self, dataset: Any, batch: Batch, expect: ShardState | None) -> Conflict | None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailableError("SQLite store x: the disk is full (database or disk is full)")
        return self.inner.apply(dataset, batch, expect)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(self.inner, name)  # type: ignore[no-any-return]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_store_outage_is_retried_with_backoff(store: Store) -> None:
    clock = FakeClock()
    flaky = FlakyStore(store, failures=3)
    w = worker(flaky, clock=clock, sleep=clock.sleep)
    outcome = w.process([rec(1, "u1", 0)])
    assert (outcome.applied, outcome.attempts) == (1, 4)
    assert clock.sleeps == [0.2, 0.4, 0.8]


def test_store_outage_past_the_bound_fails_the_batch(store: Store) -> None:
    clock = FakeClock()
    flaky = FlakyStore(store, failures=10**6)
    w = worker(flaky, retry=RetryPolicy(give_up_after_s=30), clock=clock, sleep=clock.sleep)
    with pytest.raises(BatchFailedError, match=r"store unavailable for 3[0-9]s, giving up"):
        w.process([rec(1, "u1", 0)])
    assert store.count_rows(SCHEMA) == 0
    assert store.shard_state(FEED, "shardId-000000000000") is None
    assert max(clock.sleeps) == 5.0


def test_shard_end_is_recorded(store: Store) -> None:
    w = worker(store)
    w.process([rec(1, "u1", 0)])
    w.shard_ended()
    state = store.shard_state(FEED, "shardId-000000000000")
    assert state is not None
    assert state.ended
    assert state.position == Position(int(seq(1)))


def test_shard_end_keeps_a_newer_owners_state(store: Store) -> None:
    old = worker(store)
    old.process([rec(1, "u1", 0)])
    new = worker(store)
    new.process([rec(2, "u2", 5)])
    old.shard_ended()  # the old owner's view is seq(1); the store's is seq(2)
    state = store.shard_state(FEED, "shardId-000000000000")
    assert state is not None
    assert (state.ended, state.position) == (True, Position(int(seq(2))))
    assert state.watermark_us == int((T0 + timedelta(minutes=5)).timestamp() * 1_000_000)


def test_known_parents_need_no_lease_table(store: Store) -> None:
    from record_processor.lineage import parent_watermark_from_leases

    parent = ShardWorker(FEED, POLICY, store)
    parent.initialize("shardId-000000000000")
    parent.process([rec(1, "u1", 0)])
    known = {"shardId-000000000002": ("shardId-000000000000",), "shardId-000000000000": ()}
    # a lease table that cannot be reached: only a shard missing from `known` would need it
    parents = parent_watermark_from_leases(store, FEED, "no-such-table", "us-east-1", "http://127.0.0.1:9", known)
    assert parents("shardId-000000000002") == int(T0.timestamp() * 1_000_000)
    assert parents("shardId-000000000000") is None
    assert parents("shardId-000000000009") is None  # not known: the lease lookup fails, said in a warning


def test_shard_parents_from_list_shards_pages() -> None:
    from thyme.kinesis.aws import shard_parents

    class Client:
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def list_shards(self, **request: Any) -> dict[str, Any]:
            self.calls.append(request)
            if "StreamARN" in request:
                return {"Shards": [{"ShardId": "s0"}], "NextToken": "t1"}
            return {
                "Shards": [
                    {"ShardId": "s1", "ParentShardId": "s0"},
                    {"ShardId": "s2", "ParentShardId": "s0", "AdjacentParentShardId": "s1"},
                ]
            }

    client = Client()
    assert shard_parents(client, "arn") == {"s0": (), "s1": ("s0",), "s2": ("s0", "s1")}
    assert client.calls == [{"StreamARN": "arn"}, {"NextToken": "t1"}]
