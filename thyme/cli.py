"""The ``thyme`` command line. Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime

import msgspec

from thyme.errors import ThymeError

EXIT_USAGE = 2


def _at(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f'{value!r} has no time zone; add "Z" or an offset')
    return moment


def _cmd_lookup(args: argparse.Namespace) -> int:
    from thyme.loader import load_dataset
    from thyme.lookup import lookup
    from thyme.store import open_store

    klass = load_dataset(args.dataset, require_source=False)
    store = open_store(args.store)
    try:
        results: list[dict[str, object] | None] = []
        for key in args.keys:
            found = lookup(klass, key, at=args.at, store=store)
            results.append(None if found is None else found.as_dict())
    finally:
        store.close()
    out = results[0] if len(results) == 1 else results
    sys.stdout.write(msgspec.json.encode(out).decode() + "\n")
    return 0 if all(r is not None for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thyme", description="Thyme feature platform: Kinesis ingestion and lookups.")
    commands = parser.add_subparsers(dest="command", required=True)

    lookup = commands.add_parser(
        "lookup", help="print the newest version of keys as JSON",
        description="Print the newest version of each KEY with event time <= --at (default now), as JSON. "
        "Exit status 1 if a key has no version.",
    )
    lookup.add_argument("dataset", metavar="MODULE:DATASET")
    lookup.add_argument("keys", metavar="KEY", nargs="+")
    lookup.add_argument("--at", type=_at, default=None, help="ISO-8601 time with a zone (default: now)")
    lookup.add_argument("--store", default=None, help="store URL (default: $THYME_STORE_URL or sqlite:///thyme.db)")
    lookup.set_defaults(handler=_cmd_lookup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ThymeError as exc:
        sys.stderr.write(f"thyme: error: {exc}\n")
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
