"""Failover, one trial per scenario (``tests/e2e/failover.py``; repeated trials with medians and
worst cases: ``benchmarks/failover.py``). Two hosts on a 4-shard stream and one PostgreSQL store,
a producer on every shard throughout: after a kill -9 of any host, the leader's included, every
shard is consumed again within 30 s; after a SIGTERM within 15 s; nothing lost, nothing twice.
The leader lock's lease is ours (10 s, set by the daemon's entry point), not KCL's 120 s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.failover import SCENARIOS, run_trial
from tests.e2e.faults import MakeConsumer
from tests.pg_server import PgServer

BOUND_S = {"kill9": 30.0, "sigterm": 15.0}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_shard_is_consumed_again_within_the_bound(
    scenario: str, kinesis: Any, pg_server: PgServer, fault_consumer: MakeConsumer, tmp_path: Path
) -> None:
    trial = run_trial(scenario, kinesis, pg_server.create_database(), tmp_path, fault_consumer)
    print(trial.line())  # noqa: T201 - the measurement, for the log
    assert trial.lost == 0
    assert trial.twice == 0
    assert trial.lock_lease_ms == 10_000, "the leader lock is not ours: the entry point did not set it"
    bound = BOUND_S[scenario.split("-", maxsplit=1)[0]]
    assert trial.resumed_s <= bound, f"{scenario}: every shard consumed again only after {trial.resumed_s}s"
