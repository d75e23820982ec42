"""A host sized with ``--max-shards`` and ``--memory-budget``, through the real daemon: it takes no
more leases than it was sized for, even with unowned shards waiting; the daemon runs with the
heap and the prefetch the budget gave; a second host takes the shards the first left; every
record lands exactly once."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import streams

from tests.e2e.harness import Ledger, events, json_lines, produce, unique, wait_for, write_app
from tests.e2e.test_scale_out import applied, owners
from tests.pg_server import PgServer
from thyme.errors import ConfigError
from thyme.kinesis import budget

RECORD_SIZE = 256


def _binding_budget(shards: int) -> budget.MemoryPlan:
    """The smallest budget (in 16 MiB steps) that holds ``shards`` shards: its batches are far below
    KCL's 10,000 records, so the run shows that the budget, not the default, decided them."""
    size = 256 * budget.MIB
    while True:
        try:
            return budget.plan(size, shards, RECORD_SIZE, "postgresql")  # the hosts share a PostgreSQL store
        except ConfigError:  # too small: try a larger one
            size += 16 * budget.MIB


def test_a_sized_host_holds_its_shards_and_no_more(
    kinesis: Any, new_consumer: Any, pg_server: PgServer, tmp_path: Path
) -> None:
    url = pg_server.create_database()
    stream = unique("e2e-budget")
    arn = streams.create_stream(kinesis, stream, 4)
    app = write_app(tmp_path, arn, "trim_horizon")
    application = unique("e2e-budget")
    plan = _binding_budget(2)
    assert plan.max_records < 1000, plan.describe()
    ledger = Ledger()
    produce(kinesis, stream, ledger.expect_valid(events(0, 400, users=40)))

    sized = new_consumer(app, application=application, worker_id="host-a", store_url=url)
    sized.extra_args = ["--max-shards", "2", "--memory-budget", f"{plan.budget // budget.MIB}MiB"]
    sized.extra_args += ["--record-size", str(RECORD_SIZE)]
    sized.start()

    def two_held() -> dict[str, str | None] | None:
        found = owners(sized)
        return found if len(found) == 4 and Counter(found.values()).get("host-a") == 2 else None

    held = wait_for(two_held, 120, "host-a to hold 2 of the 4 leases", interval=1)
    mine = {shard for shard, owner in held.items() if owner == "host-a"}
    # host-a applies its two shards' records and, through 30 lease assignment runs (every 500 ms
    # on the local profile), leaves the other two unowned although it is the only worker
    wait_for(lambda: len(applied(url)) > 0, 120, "host-a's first rows", interval=1)
    watched_until = time.monotonic() + 15
    while time.monotonic() < watched_until:
        found = owners(sized)
        assert {s for s, o in found.items() if o == "host-a"} == mine, found
        time.sleep(1)

    text = sized.log_text()
    chosen = [e for e in json_lines(text) if e.get("event") == "memory_budget"]
    assert [e["max_records"] for e in chosen] == [plan.max_records], chosen
    assert "prefetch per shard: 1 batches" in text
    assert sized.process is not None
    below = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in streams.descendants(sized.process.pid)]
    (jvm,) = [line for line in below if b"MultiLangDaemon" in line]
    assert f"-Xmx{plan.heap_mib}m".encode() in jvm

    # a second host, unsized, takes the two shards host-a left
    other = new_consumer(app, application=application, worker_id="host-b", store_url=url).start()
    wait_for(lambda: set(applied(url)) >= ledger.valid, 240, "every record in the store", interval=1)
    final = owners(sized)
    assert Counter(final.values()) == {"host-a": 2, "host-b": 2}, final
    counts = applied(url)
    assert {n: c for n, c in counts.items() if c > 1} == {}, "applied more than once"
    assert set(counts) == ledger.valid
    assert other.stop() == 0
    assert sized.stop() == 0
