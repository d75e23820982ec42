"""KCL 3's leader lock, watched: a consumer never stalls silently behind a leader that is gone.

KCL 3 assigns leases from one worker, the leader: whoever holds the ``Leader`` item of
``<app>-CoordinatorState`` (the DynamoDB lock client's item: ``ownerName``,
``recordVersionNumber``, ``leaseDuration``). The holder renews it by writing a new
``recordVersionNumber`` (every 30 s in KCL; every 5 s under our entry point); the others take it
once it has gone unrenewed for its lease (KCL's 120 s; our 15 s, ``thyme.kinesis.entry``).
Until then nobody assigns a dead worker's leases, and a report
against KCL 3 (awslabs/amazon-kinesis-client#1803) says that after a SIGKILL of the leader no
worker may ever take the lock again: consumption stops, silently, until someone deletes the item.

:class:`LeaderWatch` reads the item every ``interval_s``. If its ``recordVersionNumber`` has not
changed for ``stale_after_s`` (default 3 times the lock's lease, at least 45 s), it logs one error line naming the
holder, then removes the stale item — conditionally on that very version, so a renewal that
races it wins and two launchers never both act — and KCL's workers take the lock at their next
check. A lock missing for as long, while the table exists, is logged the same way. What the watch
sees is also a gauge (seconds since the lock last changed) for the Prometheus exporter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from thyme.kinesis.periodic import Periodic

log = logging.getLogger("thyme.kinesis")

MIN_STALE_AFTER_S: Final = 45
"""Below this a live leader of the stock daemon (renewing every 30 s) could be taken for a dead one."""
LEADER_KEY: Final = "Leader"


@dataclass(frozen=True)
class LeaderLock:
    """The ``Leader`` item as read: its holder and its version (None: no such item)."""

    owner: str | None
    version: str | None
    lease_ms: int | None = None
    """The lock's lease as its holder wrote it (``leaseDuration``)."""


def coordinator_table(application: str) -> str:
    return f"{application}-CoordinatorState"


def read_leader(client: Any, application: str) -> LeaderLock | None:
    """The leader lock, or None if KCL has not created its coordinator table yet."""
    try:
        item = client.get_item(
            TableName=coordinator_table(application), Key={"key": {"S": LEADER_KEY}}, ConsistentRead=True
        ).get("Item")
    except client.exceptions.ResourceNotFoundException:
        return None
    if not item:
        return LeaderLock(None, None)
    lease = item.get("leaseDuration", {}).get("S") or item.get("leaseDuration", {}).get("N")
    return LeaderLock(
        item.get("ownerName", {}).get("S"),
        item.get("recordVersionNumber", {}).get("S"),
        int(lease) if lease and lease.isdigit() else None,
    )


def stale_bound(lock_lease_s: float) -> float:
    """When a lock counts as stale: 3 times its lease, at least :data:`MIN_STALE_AFTER_S`."""
    return max(float(MIN_STALE_AFTER_S), 3 * lock_lease_s)


def remove_stale(client: Any, application: str, version: str) -> bool:
    """Delete the ``Leader`` item if it still has ``version``; False if it changed meanwhile."""
    try:
        client.delete_item(
            TableName=coordinator_table(application),
            Key={"key": {"S": LEADER_KEY}},
            ConditionExpression="recordVersionNumber = :v",
            ExpressionAttributeValues={":v": {"S": version}},
        )
    except client.exceptions.ConditionalCheckFailedException:
        return False
    return True


class LeaderWatch(Periodic):
    """Watches the leader lock while the daemon runs (see the module docstring)."""

    def __init__(
        self,
        read: Callable[[], LeaderLock | None],
        remove: Callable[[str], bool],
        interval_s: float = 15.0,
        stale_after_s: float | None = None,
        lock_lease_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(interval_s, "leader-watch")
        self.lock_lease_s = lock_lease_s
        """The lock's lease in effect (KCL takes over a lock unrenewed this long)."""
        self.stale_after_s = stale_bound(lock_lease_s) if stale_after_s is None else stale_after_s
        self._read = read
        self._remove = remove
        self._clock = clock
        self._seen: LeaderLock | None = None
        self._since: float | None = None
        self.removed = 0
        """Stale locks this watch removed."""
        self._failures = 0

    @property
    def lock_age_s(self) -> float | None:
        """Seconds since the lock last changed as this watch saw it (None before the first read)."""
        return None if self._since is None else self._clock() - self._since

    def tick(self) -> None:
        try:
            self.check()
            self._failures = 0
        except Exception as exc:  # a failing read must not end the watch, nor the consumer
            self._failures += 1
            if self._failures in (1, 10, 100) or self._failures % 1000 == 0:  # said, not repeated every 15 s
                log.warning(
                    "reading KCL's leader lock failed",
                    extra={"fields": {"error": f"{type(exc).__name__}: {exc}", "failures": self._failures}},
                )

    def check(self) -> None:
        """One look at the lock; removes it if it is stale."""
        lock = self._read()
        now = self._clock()
        if lock is None:  # no coordinator table yet: KCL is starting
            self._seen, self._since = None, None
            return
        if lock != self._seen or self._since is None:
            self._seen, self._since = lock, now
            return
        age = now - self._since
        if age < self.stale_after_s:
            return
        if lock.version is None:
            log.error(
                "KCL has had no leader for %.0fs: no worker assigns leases, so shards without an owner are not "
                "consumed; check the other consumers' logs (a live worker takes the lock within %.0fs)",
                age,
                self.lock_lease_s,
                extra={"fields": {"event": "leader_missing", "seconds": round(age)}},
            )
            self._since = now  # say it again after another bound, not at every look
            return
        log.error(
            "KCL's leader lock, held by worker %s, has not been renewed for %.0fs (a live leader renews it within "
            "its lease; KCL takes over after %.0fs): no worker assigns the leases of dead workers; removing the "
            "stale lock so a live worker takes it (awslabs/amazon-kinesis-client#1803)",
            lock.owner,
            age,
            self.lock_lease_s,
            extra={"fields": {"event": "leader_lock_stale", "owner": lock.owner, "seconds": round(age)}},
        )
        if self._remove(lock.version):
            self.removed += 1
            log.warning(
                "stale leader lock removed; a live worker takes it at its next check",
                extra={"fields": {"event": "leader_lock_removed", "owner": lock.owner}},
            )
        self._seen, self._since = None, None
