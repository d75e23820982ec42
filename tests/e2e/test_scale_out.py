"""Scale-out: two consumers ("hosts", distinct worker ids) on one 4-shard stream and one
PostgreSQL store. KCL splits the leases between them; one is killed -9 and the other takes
over its shards; every record lands exactly once."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import streams

from tests.e2e.harness import Consumer, Ledger, events, produce, unique, wait_for, write_app
from tests.pg_server import PgServer


def applied(url: str) -> Counter[int]:
    import psycopg

    with psycopg.connect(url) as conn:
        try:
            rows = conn.execute("SELECT (row::json ->> 'n')::bigint FROM \"ds_Clicks_v1\"").fetchall()
        except psycopg.errors.UndefinedTable:
            return Counter()  # the consumers have not created the dataset yet
    return Counter(int(n) for (n,) in rows)


def owners(consumer: Consumer) -> dict[str, str | None]:
    return {s["shard"]: s["lease_owner"] for s in consumer.status()["shards"]}


def test_two_hosts_split_the_shards_and_survive_a_kill(
    kinesis: Any, new_consumer: Any, pg_server: PgServer, tmp_path: Path
) -> None:
    url = pg_server.create_database()
    stream = unique("e2e-scale")
    arn = streams.create_stream(kinesis, stream, 4)
    app = write_app(tmp_path, arn, "trim_horizon")
    application = unique("e2e-scale")
    ledger = Ledger()
    first = new_consumer(app, application=application, worker_id="host-a", store_url=url).start()
    second = new_consumer(app, application=application, worker_id="host-b", store_url=url).start()

    def produced_all_applied() -> bool:
        return set(applied(url)) >= ledger.valid

    def split_between_both() -> dict[str, str | None] | None:
        found = owners(first)
        return found if len(found) == 4 and Counter(found.values()) == {"host-a": 2, "host-b": 2} else None

    produce(kinesis, stream, ledger.expect_valid(events(0, 200, users=40)))
    wait_for(produced_all_applied, 240, "the first 200 records in the store", interval=1)
    split = wait_for(split_between_both, 120, "the leases to split 2/2 between the hosts", interval=1)

    # kill -9 host-b (launcher, JVM and children), keep producing; host-a takes its shards over
    victims = {shard for shard, owner in split.items() if owner == "host-b"}
    second.kill9()
    killed_at = time.monotonic()
    produce(kinesis, stream, ledger.expect_valid(events(1000, 200, users=40)))

    def taken_over() -> bool:
        found = owners(first)
        return all(found.get(shard) == "host-a" for shard in victims)

    wait_for(taken_over, 180, "host-a to take over host-b's leases", interval=1)
    takeover_s = time.monotonic() - killed_at
    wait_for(produced_all_applied, 180, "every record in the store after the takeover", interval=1)
    counts = applied(url)
    assert {n: c for n, c in counts.items() if c > 1} == {}, "applied more than once"
    assert set(counts) == ledger.valid
    assert first.stop() == 0
    print(f"host-a took over host-b's {len(victims)} shards {takeover_s:.1f}s after the kill")  # noqa: T201
