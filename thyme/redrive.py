"""Re-drive dead letters: validate them again against the dataset as it is now, apply the ones
that pass, keep the rest.

The usual story: records were rejected because the schema did not expect them (a new field
type, a field producers stopped sending); the user fixes the dataset (a new ``version``, or a
field made ``Optional``), then runs ``thyme kinesis dead-letters redrive MODULE:DATASET``.
Each dead letter goes through the same record rules as the stream (``thyme/records``: the
decoder, the schema, the source's current ``max_future_skew`` with the record's original arrival
time). Lateness is not
judged again: a watermark is a property of a position in a shard, which a re-drive does not
have. Records dead-lettered as ``late`` are therefore only re-driven when asked for by
``--reason late`` (that is, "apply them anyway").

Idempotent: the store marks each re-driven letter and applies its row in one transaction, so
running it twice, or twice at once, applies nothing twice. Re-driven letters are kept, marked,
and listed with ``dead-letters list --include-redriven``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from thyme.connectors.source import source_spec
from thyme.errors import LoadError
from thyme.records import INVALID_BASE64, LATE, LatenessPolicy, RecordRules
from thyme.schema import dataset_schema
from thyme.store.base import DeadLetterQuery, Row, Store

PAGE = 1000
"""Dead letters read, and re-driven in one transaction, at a time."""


@dataclass
class RedriveReport:
    examined: int = 0
    redriven: int = 0
    """Applied now."""
    would_redrive: int = 0
    """Passed validation (with ``dry_run``, nothing is applied)."""
    still_failing: Counter[str] = field(default_factory=Counter)
    """By the reason they fail now."""
    not_redriven: Counter[str] = field(default_factory=Counter)
    """Kept without being tried: ``late`` unless asked for, ``invalid_base64``."""

    def as_dict(self) -> dict[str, object]:
        return {
            "examined": self.examined,
            "redriven": self.redriven,
            "would_redrive": self.would_redrive,
            "still_failing": dict(sorted(self.still_failing.items())),
            "not_redriven": dict(sorted(self.not_redriven.items())),
        }


def redrive(
    klass: type,
    store: Store,
    *,
    reason: str | None = None,
    query: DeadLetterQuery | None = None,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
) -> RedriveReport:
    """Re-drive the dataset's dead letters (optionally one reason, and ``query``'s filters)."""
    schema, spec = dataset_schema(klass), source_spec(klass)
    if schema is None or spec is None:
        raise LoadError(f"{getattr(klass, '__name__', klass)} is not a @source(KinesisSource(...)) @dataset class")
    store.ensure_dataset(schema)
    # no lateness (see above); the source's format, so a letter decodes as its record did
    rules = RecordRules(schema, LatenessPolicy(None, spec.max_future_skew), spec.connector.record_format)
    report = RedriveReport()
    query = query or DeadLetterQuery()
    after = query.after_id
    while True:
        page = store.dead_letters(
            schema,
            reason,
            PAGE,
            query=DeadLetterQuery(
                query.shard, query.stream, query.since_us, query.until_us, after, include_redriven=False
            ),
        )
        if not page:
            return report
        after = page[-1].id
        fixes: list[tuple[int, Row]] = []
        for letter in page:
            report.examined += 1
            if letter.reason == INVALID_BASE64 or (letter.reason == LATE and (reason or "").strip() != LATE):
                report.not_redriven[letter.reason] += 1
                continue
            arrival = letter.arrival_ms if letter.arrival_ms is not None else int(clock() * 1000)
            result = rules.judge_dead_letter(letter.raw, letter.detail, arrival)
            if isinstance(result, str):
                report.still_failing[result] += 1
                continue
            fixes.append((letter.id, result))
        report.would_redrive += len(fixes)
        if not dry_run:
            report.redriven += store.redrive(schema, fixes)
