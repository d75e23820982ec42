"""A lookup client in its own process: single-key lookups through ``thyme.lookup`` against a
prefilled store, alternately as of now and as of a past time (the middle of the prefilled
history, so the newest version at or before it has to be found), paced every
``--interval-ms``, until ``--stop-file`` appears. It writes ``--ready-file`` after a warm-up,
and prints one JSON object: the latencies in milliseconds and how many lookups found a row.

    python benchmarks/lookup_client.py --store URL --rows 5000000 --ready-file R --stop-file S

With ``--threads N --seconds S`` it is a threaded server's load instead: N threads share one
``open_store()`` and look up as fast as they can (half as of now, half as of the past time) for S
seconds after the warm-up; it prints the lookups made and every latency.

    python benchmarks/lookup_client.py --store URL --rows 5000000 --threads 16 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--stop-file", type=Path)
    parser.add_argument("--threads", type=int, default=0, help="closed-loop mode: this many threads")
    parser.add_argument("--seconds", type=float, default=5.0, help="closed-loop mode: for this long")
    parser.add_argument("--interval-ms", type=float, default=2.0)
    parser.add_argument("--max-lookups", type=int, default=200_000)
    args = parser.parse_args()

    from tests.factories import SourcedClick
    from thyme.serving import lookup
    from thyme.store import open_store

    keys = prefilled_keys(args.rows)
    first_ms = T0_MS - args.rows * 10
    past = datetime.fromtimestamp((first_ms + args.rows * 5) / 1000, tz=UTC)
    store = open_store(args.store)
    rng = random.Random(7)
    for _ in range(200):  # warm-up: imports, prepared statements, the upper index pages
        lookup(SourcedClick, rng.choice(keys), store=store)
        lookup(SourcedClick, rng.choice(keys), at=past, store=store)
    if args.threads:
        json.dump(closed_loop(store, keys, past, args.threads, args.seconds), sys.stdout)
        store.close()
        return 0
    if args.ready_file is None or args.stop_file is None:
        parser.error("give --ready-file and --stop-file, or --threads")
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


def closed_loop(store: Any, keys: list[str], past: datetime, threads: int, seconds: float) -> dict[str, object]:
    """``threads`` threads looking up random keys through one shared store until ``seconds`` pass."""
    from tests.factories import SourcedClick
    from thyme.serving import lookup

    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def work(me: int) -> None:
        rng = random.Random(me)
        mine = latencies[me]
        clock = time.perf_counter
        start.wait()
        while not stop.is_set():
            began = clock()
            lookup(SourcedClick, rng.choice(keys), at=past if len(mine) % 2 else None, store=store)
            mine.append((clock() - began) * 1000)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    every = [ms for mine in latencies for ms in mine]
    return {"threads": threads, "seconds": elapsed, "lookups": len(every), "latencies_ms": every}


if __name__ == "__main__":
    sys.exit(main())
