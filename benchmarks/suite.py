"""The benchmark suite: every figure of the performance issue, in one command.

    benchmarks/run                          # everything (~30 min; prefills once, cached)
    benchmarks/run --quick                  # fewer batches, no 20M store, shorter e2e
    benchmarks/run --only throughput,lookup # a subset: throughput formats lookup memory scaling e2e
    benchmarks/run --only shards,catchup    # many shards on one host: named only (~30 min)

Sections (each figure is the median of ``--repeat`` runs, default 5; comparisons alternate
run by run inside one invocation):

1. throughput — 10,000-record ``processRecords`` lines piped into the real child
   (``python -m record_processor``) through to committed rows and the status reply, on a
   SQLite store and on a PostgreSQL store that already hold 5M rows; the floor child (read
   the line + ``json.loads`` the envelope + reply) and the peer child (Powertools' Kinesis
   batch processor + pydantic model + ``executemany``) in the same runs; two children on two
   shards of the same store at once against one.
   formats — the same events as gzip JSON, CloudWatch Logs subscription records (20 events per
   record) and CloudFront real-time log lines, beside plain JSON in the same runs (SQLite, 5M rows).
2. lookup — p50/p99 of single-key lookups (as of now, as of a past time) in a separate
   process while a child writes, on the same stores; and a threaded server's load: 1, 4 and
   16 threads sharing one store, lookups/s and p50/p99.
3. e2e — through the real daemon on the local stack (``benchmarks/e2e.py``).
4. memory — the child's peak RSS for 10,000 x 200 B batches and for 100 KiB records.
5. scaling — throughput and lookup latency at 1M, 5M and 20M rows (SQLite).
7. shards — one host holding 1, 8, 32 and 64 shards: first rows, RSS, idle CPU (``shards.py``).
8. catchup — 8 and 64 backlogged shards within ``--memory-budget``, SQLite and PostgreSQL:
   rows/s, the host's peak PSS against the budget (``catchup.py``). 7 and 8 run only when named.

Results: a table on stdout and ``benchmarks/results/suite.json`` (every run's figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
for entry in (str(REPO), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from context import Context  # noqa: E402
from processor import log  # noqa: E402
from sections import e2e, formats, hosts, lookup, memory, scaling, throughput  # noqa: E402

SECTIONS: Final = ("throughput", "formats", "lookup", "memory", "scaling", "e2e")
NAMED_ONLY: Final = ("shards", "catchup")
"""Sections that run only when ``--only`` names them: each starts local stacks per case and
takes long (7: ~6 min, 8: ~25 min)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS + NAMED_ONLY)} (the last two only when named)",
    )
    parser.add_argument("--quick", action="store_true", help="10 batches per run, no 20M store, shorter e2e")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--batches", type=int, default=None, help="processRecords lines per run (default 20; quick 10)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL store")
    parser.add_argument("--e2e-rounds", type=int, default=None, help="daemon starts per variant (default 5)")
    parser.add_argument("--e2e-records", type=int, default=None, help="records per round at 20/s (default 60)")
    parser.add_argument("--seed", type=int, default=20240501)
    parser.add_argument("--cache", type=Path, default=BENCH / "results" / "cache", help="prefilled stores")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "suite.json")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS + NAMED_ONLY)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS + NAMED_ONLY}")
    if args.batches is None:
        args.batches = 10 if args.quick else 20
    if args.e2e_rounds is None:
        args.e2e_rounds = 5
    if args.e2e_records is None:
        args.e2e_records = 40 if args.quick else 60
    args.repeat = max(1, args.repeat)

    began = time.monotonic()
    args.cache.mkdir(parents=True, exist_ok=True)  # results/ is not in a fresh clone
    with tempfile.TemporaryDirectory(prefix="thyme-suite-", dir=args.cache.parent) as tmp:
        bench = Context(args, Path(tmp))
        steps: dict[str, Callable[[Context], None]] = {
            "throughput": throughput.throughput,
            "formats": formats.formats,
            "lookup": lookup.lookup,
            "memory": memory.memory,
            "scaling": scaling.scaling,
            "e2e": e2e.e2e,
            "shards": hosts.shards,
            "catchup": hosts.catchup,
        }
        errors: dict[str, str] = {}
        try:
            for name in SECTIONS + NAMED_ONLY:
                if name in only:
                    try:
                        bench.results.setdefault("load_average", {})[f"{name} start"] = os.getloadavg()
                        steps[name](bench)
                        bench.results["load_average"][f"{name} end"] = os.getloadavg()
                    except Exception as exc:  # one broken section must not lose the others
                        import traceback

                        traceback.print_exc()
                        errors[name] = f"{type(exc).__name__}: {exc}"
                        bench.row(name, "SECTION FAILED (see the log)", errors[name][:80], "", False)
                    write(args, bench, began, errors)
        finally:
            if bench.pg is not None:
                bench.pg.stop()
    log("\n" + bench.table())
    write(args, bench, began, errors)
    log(f"\nwrote {args.out} ({round(time.monotonic() - began)} s)")
    return 1 if errors else 0


def write(args: argparse.Namespace, bench: Context, began: float, errors: dict[str, str]) -> None:
    """The JSON result so far (written after every section)."""
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - began),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "table": [
            dict(zip(("section", "measurement", "figure", "target", "verdict"), r, strict=True)) for r in bench.rows
        ],
        "results": bench.results,
        "errors": errors,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=asdict) + "\n")


if __name__ == "__main__":
    sys.exit(main())
