"""A lookup client in its own process: single-key lookups through ``thyme.lookup`` against a
prefilled store, alternately as of now and as of a past time (the middle of the prefilled
history, so the newest version at or before it has to be found), paced every
``--interval-ms``, until ``--stop-file`` appears. It writes ``--ready-file`` after a warm-up,
and prints one JSON object: the latencies in milliseconds and how many lookups found a row.

    python benchmarks/lookup_client.py --store URL --rows 5000000 --ready-file R --stop-file S
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from processor import T0_MS  # noqa: E402
from stores import PREFILL_SEED  # noqa: E402


def prefilled_keys(rows: int) -> list[str]:
    """The keys ``processor.prefill`` used for ``rows`` rows (the same generator, the same seed)."""
    rng = random.Random(PREFILL_SEED)
    return [f"user-{rng.getrandbits(64):016x}" for _ in range(max(1, rows // 4))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--stop-file", type=Path, required=True)
    parser.add_argument("--interval-ms", type=float, default=2.0)
    parser.add_argument("--max-lookups", type=int, default=200_000)
    args = parser.parse_args()

    from tests.factories import SourcedClick
    from thyme.lookup import lookup
    from thyme.store import open_store

    keys = prefilled_keys(args.rows)
    first_ms = T0_MS - args.rows * 10
    past = datetime.fromtimestamp((first_ms + args.rows * 5) / 1000, tz=UTC)
    store = open_store(args.store)
    rng = random.Random(7)
    for _ in range(200):  # warm-up: imports, prepared statements, the upper index pages
        lookup(SourcedClick, rng.choice(keys), store=store)
        lookup(SourcedClick, rng.choice(keys), at=past, store=store)
    args.ready_file.write_text("ready\n")
    now_ms: list[float] = []
    past_ms: list[float] = []
    hits = {"now": 0, "past": 0}
    interval = args.interval_ms / 1000
    clock = time.perf_counter
    next_at = clock()
    while len(now_ms) + len(past_ms) < args.max_lookups and not args.stop_file.exists():
        for kind, at, sink in (("now", None, now_ms), ("past", past, past_ms)):
            key = rng.choice(keys)
            started = clock()
            found = lookup(SourcedClick, key, at=at, store=store)
            sink.append((clock() - started) * 1000)
            hits[kind] += found is not None
            next_at += interval
            pause = next_at - clock()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = clock()
    store.close()
    json.dump({"now_ms": now_ms, "past_ms": past_ms, "hits": hits}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
