"""The real record processor child with a store that keeps nothing: what the child costs
without any store, to compare with the floor (``suite.py`` reports it next to SQLite's
cheapest durable append, which together bound what any SQLite store could reach).

    python benchmarks/null_child.py --dataset MODULE:DATASET --store sqlite:///unused.db

The store URL is checked as usual but never opened. Everything else — the pipe protocol,
decoding, validation, lateness, replay skipping, checkpoints — is the real child's code.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import record_processor.__main__ as child  # noqa: E402
from thyme.store import Batch, Conflict, Feed, ShardState, ShardStore  # noqa: E402


class NullStore:
    """A :class:`~thyme.store.ShardStore` that keeps the shard states (the child's compare-and-set
    needs them) and nothing else."""

    url = "null://"

    def __init__(self) -> None:
        self.states: dict[str, ShardState] = {}

    def ensure_feed(self, feed: Feed) -> None:
        pass

    def shard_state(self, feed: Feed, shard: str) -> ShardState | None:
        return self.states.get(shard)

    def apply(self, feed: Feed, batch: Batch, expect: ShardState | None) -> Conflict | None:
        if self.states.get(batch.shard) != expect:
            return Conflict(self.states.get(batch.shard))
        self.states[batch.shard] = batch.state
        return None

    def close(self) -> None:
        pass


def open_null_store(url: str | None = None) -> ShardStore:
    return NullStore()


if __name__ == "__main__":
    child.open_store = open_null_store  # type: ignore[assignment]
    sys.exit(child.main())
