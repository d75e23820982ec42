"""Failover, repeated: the README's failover table (median and worst per scenario).

Each trial is ``tests/e2e/failover.py``'s: a fresh 4-shard stream and application, two hosts
(``thyme kinesis run``, distinct worker ids) and one PostgreSQL store, a producer putting one
record on every shard every 250 ms; the fault; seconds until every shard shows a record put
after it in the store; then every record put checked once in the store.

    .venv/bin/python benchmarks/failover.py                       # every scenario, 5 trials each
    .venv/bin/python benchmarks/failover.py --trials 3 --scenarios kill9-leader,sigterm-other
    .venv/bin/python benchmarks/failover.py --kcl-timing          # also kill9-leader with KCL's own lock
    .venv/bin/python benchmarks/failover.py --assignment-ms 2000  # the aws profile's assignment interval

``--kcl-timing`` runs the kill -9 of the leader again with ``--leader-lock-s 0`` (KCL's 120 s
lock, the floor this project starts from), so the ratio is measured in the same run. The local
stack's profile assigns leases every 500 ms; ``--assignment-ms 2000`` measures with the aws
profile's interval instead (the one timing of that profile failover depends on).

Results: a table on stdout and ``benchmarks/results/failover.json`` (every trial).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Final

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import local_aws  # noqa: E402
import streams  # noqa: E402

from tests.e2e.failover import SCENARIOS, Trial, run_trial, summary  # noqa: E402
from tests.e2e.faults import consumer_factory  # noqa: E402
from tests.e2e.harness import Consumer  # noqa: E402
from tests.pg_server import PgServer  # noqa: E402


def write(out: Path, results: dict[str, list[Trial]]) -> None:
    rows = {label: summary(trials) for label, trials in results.items()}
    trials = {k: [json.loads(t.line()) for t in v] for k, v in results.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": rows, "trials": trials}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--kcl-timing", action="store_true", help="also kill9-leader with KCL's own 120 s lock")
    parser.add_argument("--assignment-ms", type=int, default=None, help="leaseAssignmentIntervalMillis for every run")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/failover[-<ms>].json")
    args = parser.parse_args(argv)
    wanted = [s for s in args.scenarios.split(",") if s]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    common: tuple[str, ...] = () if args.assignment_ms is None else ("--assignment-ms", str(args.assignment_ms))
    runs: list[tuple[str, str, tuple[str, ...]]] = [(s, s, common) for s in wanted]
    if args.kcl_timing:
        runs.append(("kill9-leader (KCL's 120 s lock)", "kill9-leader", (*common, "--leader-lock-s", "0")))
    out = (
        args.out or BENCH / "results" / f"failover{'' if args.assignment_ms is None else f'-{args.assignment_ms}'}.json"
    )
    results: dict[str, list[Trial]] = {}
    with tempfile.TemporaryDirectory(prefix="thyme-failover-") as scratch:
        root = Path(scratch)
        stack = local_aws.LocalAWS(state_dir=root / "local-aws")
        stack.start()
        try:
            with PgServer() as pg:
                os.environ.update(stack.env())
                kinesis = streams.kinesis_client()
                for index, (label, scenario, extra) in enumerate(runs):
                    for trial in range(args.trials):
                        folder = root / f"run-{index}-{trial}"
                        folder.mkdir()
                        started: list[Consumer] = []
                        make = consumer_factory(stack.env(), folder, started)
                        outcome = run_trial(
                            scenario, kinesis, pg.create_database(), folder, make, extra=extra, timeout_s=400
                        )
                        results.setdefault(label, []).append(outcome)
                        sys.stderr.write(f"{label} #{trial + 1}: {outcome.line()}\n")
                        write(out, results)  # kept as it goes: a later failure loses nothing
        finally:
            stack.stop()
    rows = {label: summary(trials) for label, trials in results.items()}
    ours = rows.get("kill9-leader")
    floor = rows.get("kill9-leader (KCL's 120 s lock)")
    lines = [
        "| scenario | trials | median s | worst s | lost | applied twice |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in rows.items():
        lines.append(
            f"| {label} | {row['trials']} | {row['median_s']} | {row['worst_s']} | {row['lost']} | {row['twice']} |"
        )
    interval = "500 ms (local profile)" if args.assignment_ms is None else f"{args.assignment_ms} ms"
    sys.stdout.write(f"lease assignment every {interval}\n" + "\n".join(lines) + "\n")
    if ours and floor:
        sys.stdout.write(
            f"kill -9 of the leader: median {ours['median_s']} s vs {floor['median_s']} s with KCL's own lock "
            f"({floor['median_s'] / ours['median_s']:.1f}x faster)\n"
        )
    write(out, results)
    return 0 if all(r["lost"] == 0 and r["twice"] == 0 for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
