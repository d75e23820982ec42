"""``thyme kinesis preflight``: what the consumer would make of the records on the stream now,
before it runs.

Reads a bounded sample from every shard (``--limit`` records each, from ``--since`` back, within
``--timeout`` seconds; ``GetShardIterator``/``GetRecords`` only, with the identity ``run`` reads
with: the role, if any), takes KPL-aggregated records apart as the KCL does, and judges each user
record with the dataset's own record rules (format, schema, future skew) in stream order. It
writes nothing: no lease table, no store, no checkpoint.

Lateness is measured rather than only judged: each row's distance behind the greatest event time
before it on its shard is what ``max_lateness`` is compared with (a late record never moves the
watermark, so the distance does not depend on the setting). So one sample answers both "how many
would be late now" and "what ``max_lateness`` would keep 99% of them".
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final

from thyme.connectors.source import SourceSpec
from thyme.duration import format_duration
from thyme.kinesis.aws import calling, list_shards
from thyme.kinesis.kpl import deaggregate
from thyme.records import Fanout, LatenessPolicy, RecordRules, Rejected
from thyme.records.formats import readable
from thyme.schema import DatasetSchema
from thyme.times import from_us, iso, to_us

EXAMPLE_CHARS: Final = 160
"""How much of a dead letter's bytes an example shows (escaped)."""
_EMPTY_POLLS: Final = 3
"""Empty answers at the tip of a shard before its reading stops."""


@dataclass(frozen=True)
class UserRecord:
    """One record as the child would receive it (a KPL user record has its own sub-sequence)."""

    shard: str
    sequence: str
    sub_sequence: int
    partition_key: str
    data: bytes
    arrival_ms: int


@dataclass
class ShardSample:
    """What one shard's sample would become."""

    shard: str
    records: int = 0
    """User records read (KPL records counted one per user record)."""
    rows: int = 0
    """Rows the consumer would write, with today's ``max_lateness``."""
    dead_letters: Counter[str] = field(default_factory=Counter)
    control_messages: int = 0
    first_event_us: int | None = None
    last_event_us: int | None = None
    lateness_us: list[int] = field(default_factory=list)
    """For every row before lateness is judged: how far it is behind the greatest earlier event time."""
    complete: bool = True
    """False when the reading stopped at --timeout before the limit or the tip."""

    def saw(self, ts_us: int) -> None:
        if self.first_event_us is None or ts_us < self.first_event_us:
            self.first_event_us = ts_us
        if self.last_event_us is None or ts_us > self.last_event_us:
            self.last_event_us = ts_us


@dataclass
class Preflight:
    """The whole sample's verdict."""

    stream: str
    format: str
    since: datetime | None
    max_lateness: timedelta | None
    keep: float
    shards: list[ShardSample]
    examples: dict[str, str]
    """One example per dead-letter reason: the record's bytes, escaped and cut short."""

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def dead_letters(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for s in self.shards:
            total.update(s.dead_letters)
        return total

    def suggested_max_lateness(self, keep: float | None = None) -> timedelta | None:
        """The smallest whole-second ``max_lateness`` that keeps ``keep`` (default :attr:`keep`)
        of the rows sampled; None with no rows."""
        share = self.keep if keep is None else keep
        distances = sorted(d for s in self.shards for d in s.lateness_us)
        if not distances:
            return None
        allowed_late = math.floor(len(distances) * (1 - share) + 1e-9)
        needed_us = distances[len(distances) - 1 - allowed_late]
        return timedelta(seconds=math.ceil(needed_us / 1_000_000))

    def as_json(self) -> dict[str, Any]:
        suggested, keep_all = self.suggested_max_lateness(), self.suggested_max_lateness(1.0)
        return {
            "stream": self.stream,
            "format": self.format,
            "since": None if self.since is None else iso(self.since),
            "records": self.records,
            "rows": self.rows,
            "dead_letters": dict(self.dead_letters),
            "examples": self.examples,
            "late": self.dead_letters.get("late", 0),
            "max_lateness": None if self.max_lateness is None else format_duration(self.max_lateness),
            "keep": self.keep,
            "suggested_max_lateness": None if suggested is None else format_duration(suggested),
            "max_lateness_keeping_all": None if keep_all is None else format_duration(keep_all),
            "shards": [
                {
                    "shard": s.shard,
                    "records": s.records,
                    "rows": s.rows,
                    "dead_letters": dict(s.dead_letters),
                    "control_messages": s.control_messages,
                    "event_time_from": _iso(s.first_event_us),
                    "event_time_to": _iso(s.last_event_us),
                    "complete": s.complete,
                }
                for s in self.shards
            ],
        }

    def as_table(self) -> str:
        lines = [f"stream {self.stream} ({self.format}), sampled from {_since(self.since)}"]
        header = ("shard", "records", "rows", "dead", "late", "event time from", "event time to")
        table = [header]
        for s in [*self.shards, _total(self.shards)]:
            table.append(
                (
                    s.shard + ("" if s.complete else " (timed out)"),
                    str(s.records),
                    str(s.rows),
                    str(sum(s.dead_letters.values())),
                    str(s.dead_letters.get("late", 0)),
                    _iso(s.first_event_us) or "-",
                    _iso(s.last_event_us) or "-",
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            lines.append(
                "  ".join(
                    cell.ljust(w) if i in (0, 5, 6) else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
        dead = self.dead_letters
        if dead:
            lines.append("")
            lines.append("dead letters by reason (one example each, escaped):")
            width = max(len(reason) for reason in dead)
            for reason, count in dead.most_common():
                lines.append(f"  {reason.ljust(width)}  {count:>6}  e.g. {self.examples.get(reason, '')}")
        lines.append("")
        lines.append(self.lateness_advice())
        return "\n".join(lines) + "\n"

    def lateness_advice(self) -> str:
        rows = sum(len(s.lateness_us) for s in self.shards)
        late = self.dead_letters.get("late", 0)
        suggested = self.suggested_max_lateness()
        if suggested is None:
            return "no rows in the sample: nothing to say about max_lateness"
        if self.max_lateness is None:
            now = "no max_lateness (nothing is late)"
        else:
            setting = format_duration(self.max_lateness)
            now = f'max_lateness="{setting}": {late} of {rows} rows late ({_share(late, rows)})'
        everything = self.suggested_max_lateness(1.0)
        assert everything is not None
        if everything == timedelta(0):
            return f"{now}; every sampled row is in event-time order on its shard"
        advice = f'{now}; max_lateness="{format_duration(suggested)}" would keep {_share_text(self.keep)} of them'
        if suggested != everything:
            advice += f' ("{format_duration(everything)}" all of them)'
        return advice


def _since(since: datetime | None) -> str:
    return "the oldest record kept (trim_horizon)" if since is None else iso(since)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "0%"


def _share_text(keep: float) -> str:
    return f"{100 * keep:g}%"


def _iso(us: int | None) -> str | None:
    return None if us is None else iso(from_us(us))


def _total(shards: list[ShardSample]) -> ShardSample:
    total = ShardSample("all shards", complete=all(s.complete for s in shards))
    for s in shards:
        total.records += s.records
        total.rows += s.rows
        total.dead_letters.update(s.dead_letters)
        for ts in (s.first_event_us, s.last_event_us):
            if ts is not None:
                total.saw(ts)
    return total


def escaped(raw: bytes) -> str:
    """A record's bytes to show: text with undecodable bytes as ``\\xNN``, cut short; a
    compressed record as what it holds once decompressed (bounded, as the consumer does)."""
    shown, kind = readable(raw)
    prefix = "" if kind is None else f"({kind}, {len(raw)} bytes) "
    text = shown[: EXAMPLE_CHARS * 4].decode("utf-8", "backslashreplace")
    return prefix + (text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…")


def judge_sample(
    schema: DatasetSchema, spec: SourceSpec, shards: dict[str, list[UserRecord]]
) -> tuple[list[ShardSample], dict[str, str]]:
    """Judge each shard's records in order, as the consumer would from an empty store."""
    rules = RecordRules(schema, LatenessPolicy(None, spec.max_future_skew), spec.connector.record_format)
    lateness_us = None if spec.max_lateness is None else spec.max_lateness // timedelta(microseconds=1)
    examples: dict[str, str] = {}
    out = []
    for shard, records in shards.items():
        sample = ShardSample(shard)
        watermark: int | None = None

        def accept(ts_us: int, raw: bytes, sample: ShardSample = sample) -> None:
            nonlocal watermark
            sample.saw(ts_us)
            behind = 0 if watermark is None else max(0, watermark - ts_us)
            sample.lateness_us.append(behind)
            if lateness_us is not None and behind > lateness_us:
                reject("late", raw, sample)
                return
            sample.rows += 1
            if watermark is None or ts_us > watermark:
                watermark = ts_us

        def reject(reason: str, raw: bytes, sample: ShardSample = sample) -> None:
            sample.dead_letters[reason] += 1
            examples.setdefault(reason, escaped(raw))

        for record in records:
            sample.records += 1
            result = rules.judge(record.data, record.arrival_ms, None)
            if isinstance(result, str):
                rules.facts(result, record.arrival_ms, None)
                reject(result, record.data)
            elif isinstance(result, Fanout):
                sample.control_messages += result.control
                for event in result:
                    if isinstance(event, Rejected):
                        reject(event.reason, event.raw)
                    else:
                        accept(event[1], record.data)
            else:
                accept(result[1], record.data)
        out.append(sample)
    return out, examples


def read_sample(
    client: Any,
    stream_arn: str,
    identity: str,
    endpoint: str | None,
    since: datetime | None,
    limit: int,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[str, list[UserRecord]], set[str]]:
    """Up to ``limit`` user records of every shard, oldest first from ``since`` (None: the oldest
    kept), and the shards whose reading ``timeout_s`` cut short."""
    label = f"stream {stream_arn.rsplit('/', 1)[-1]}"

    def call(action: str, fn: Callable[[], Any]) -> Any:
        return calling(identity, f"kinesis:{action}", label, endpoint, fn)

    shard_ids = [s["ShardId"] for s in call("ListShards", partial(list_shards, client, StreamARN=stream_arn))]
    start: dict[str, Any] = (
        {"ShardIteratorType": "TRIM_HORIZON"}
        if since is None
        else {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": since}
    )
    deadline = clock() + timeout_s
    found: dict[str, list[UserRecord]] = {}
    cut: set[str] = set()
    for shard in shard_ids:
        opened = call(
            "GetShardIterator", partial(client.get_shard_iterator, StreamARN=stream_arn, ShardId=shard, **start)
        )
        iterator: str | None = opened["ShardIterator"]
        records: list[UserRecord] = []
        empty = 0
        while iterator and len(records) < limit:
            if clock() > deadline:
                cut.add(shard)
                break
            wanted = min(10_000, limit - len(records))
            page = call(
                "GetRecords", partial(client.get_records, StreamARN=stream_arn, ShardIterator=iterator, Limit=wanted)
            )
            records.extend(_user_records(shard, page.get("Records", [])))
            iterator = page.get("NextShardIterator")
            if page.get("Records"):
                empty = 0
            elif page.get("MillisBehindLatest", 0) == 0:
                empty += 1
                if empty >= _EMPTY_POLLS:
                    break
                sleep(0.2)
        found[shard] = records[:limit]
    return found, cut


def _user_records(shard: str, records: Iterable[dict[str, Any]]) -> list[UserRecord]:
    out = []
    for r in records:
        arrival = r.get("ApproximateArrivalTimestamp")
        arrival_ms = int(to_us(arrival) // 1000) if isinstance(arrival, datetime) else int(time.time() * 1000)
        data = bytes(r["Data"])
        inner = deaggregate(data, r["PartitionKey"])
        if inner is None:
            out.append(UserRecord(shard, r["SequenceNumber"], 0, r["PartitionKey"], data, arrival_ms))
        else:
            out += [
                UserRecord(shard, r["SequenceNumber"], sub, key, body, arrival_ms)
                for sub, (body, key) in enumerate(inner)
            ]
    return out
