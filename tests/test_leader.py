"""The leader-lock watch's own logic (``thyme.kinesis.leader``), with the lock read and removal
given as functions; against the local stack's DynamoDB: ``tests/e2e/test_leader_e2e.py``."""

from __future__ import annotations

import logging

import pytest

from thyme.cli import main
from thyme.kinesis.leader import LeaderLock, LeaderWatch
from thyme.kinesis.prometheus import PrometheusExporter
from thyme.kinesis.status import LeaderStatus, as_json, as_table


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(locks: list[LeaderLock | None], removed: list[str], clock: Clock, removes: bool = True) -> LeaderWatch:
    def read() -> LeaderLock | None:
        return locks[0]

    def remove(version: str) -> bool:
        removed.append(version)
        return removes

    return LeaderWatch(read, remove, interval_s=10, stale_after_s=360, clock=clock)


def test_a_renewed_lock_is_left_alone_and_a_stale_one_removed_once(caplog: pytest.LogCaptureFixture) -> None:
    clock, removed = Clock(), list[str]()
    locks: list[LeaderLock | None] = [LeaderLock("w1", "v1")]
    w = watch(locks, removed, clock)
    for step in range(40):  # renewed every 30 s for 20 minutes
        clock.now += 30
        locks[0] = LeaderLock("w1", f"v{step}")
        w.check()
    assert removed == []
    assert w.lock_age_s == 0
    clock.now += 359
    w.check()
    assert removed == []
    assert w.lock_age_s == 359
    with caplog.at_level(logging.WARNING, logger="thyme.kinesis"):
        clock.now += 1
        w.check()
    assert removed == ["v39"]
    assert w.removed == 1
    assert caplog.records[0].getMessage() == (
        "KCL's leader lock, held by worker w1, has not been renewed for 360s (a live leader renews it within its "
        "lease; KCL takes over after 120s): no worker assigns the leases of dead workers; removing the stale lock "
        "so a live worker takes it (awslabs/amazon-kinesis-client#1803)"
    )
    assert caplog.records[1].getMessage().startswith("stale leader lock removed")
    clock.now += 10
    w.check()  # the same stale item seen again (the removal lost a race): the count starts over
    assert removed == ["v39"]


def test_the_bound_follows_the_lock_in_effect() -> None:
    from thyme.kinesis.leader import MIN_STALE_AFTER_S, stale_bound

    ours = LeaderWatch(lambda: None, lambda v: True, lock_lease_s=10)
    assert ours.stale_after_s == 45 == MIN_STALE_AFTER_S  # not 3 x our 10 s lease: a stock daemon renews every 30 s
    assert LeaderWatch(lambda: None, lambda v: True, lock_lease_s=120).stale_after_s == 360  # KCL's own
    assert stale_bound(6) == MIN_STALE_AFTER_S  # never below what a stock daemon's 30 s renewal needs
    assert LeaderWatch(lambda: None, lambda v: True, stale_after_s=90, lock_lease_s=15).stale_after_s == 90


def test_a_removal_that_loses_to_a_renewal_is_not_counted_and_no_table_is_no_alarm() -> None:
    clock, removed = Clock(), list[str]()
    locks: list[LeaderLock | None] = [None]
    w = watch(locks, removed, clock, removes=False)
    for _ in range(100):
        clock.now += 30
        w.check()
    assert (removed, w.lock_age_s) == ([], None)  # KCL has not created its table yet
    locks[0] = LeaderLock("w1", "v1")
    w.check()
    clock.now += 400
    w.check()
    assert removed == ["v1"]
    assert w.removed == 0


def test_no_leader_for_long_is_said_once_per_bound(caplog: pytest.LogCaptureFixture) -> None:
    clock, removed = Clock(), list[str]()
    w = watch([LeaderLock(None, None)], removed, clock)
    w.check()
    with caplog.at_level(logging.ERROR, logger="thyme.kinesis"):
        for _ in range(13):
            clock.now += 30
            w.check()
    assert [r.getMessage()[:30] for r in caplog.records] == ["KCL has had no leader for 360s"]
    assert removed == []


def test_status_and_metrics_show_the_leader() -> None:
    gone = LeaderStatus("w1", "2026-12-04T10:00:00.000Z", True, 10.0)
    assert "KCL leader: w1 (gone since 2026-12-04T10:00:00Z: a live worker takes the lock after 10 s)" in as_table(
        [], {}, gone
    )
    assert "KCL leader: w2 (lock lease 120 s)" in as_table([], {}, LeaderStatus("w2", None, None, 120.0))
    assert "KCL leader: none (no worker holds the lock" in as_table([], {}, LeaderStatus(None))
    assert as_json([], {}, gone)["leader"] == {
        "owner": "w1",
        "owner_last_seen": "2026-12-04T10:00:00.000Z",
        "owner_gone": True,
        "lock_lease_s": 10.0,
    }
    exporter = PrometheusExporter("Clicks")
    assert "leader_lock" not in exporter.render()
    exporter.leader_lock_age = lambda: 42.0
    assert 'thyme_kcl_leader_lock_age_seconds{dataset="Clicks"} 42' in exporter.render()


@pytest.mark.parametrize("value", ["10", "-1", "soon"])
def test_the_bound_is_checked_before_anything_starts(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as code:
        main(["kinesis", "run", "tests.factories:SourcedClick", "--leader-stale-s", value])
    assert code.value.code == 2
    assert "renews its lock every 30 s" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["5", "121", "-1", "15.5"])
def test_the_lock_lease_is_checked_before_anything_starts(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as code:
        main(["kinesis", "run", "tests.factories:SourcedClick", "--leader-lock-s", value])
    assert code.value.code == 2
    assert "not a whole number of seconds from 6 to 120, or 0 (KCL's own 120 s)" in capsys.readouterr().err
