"""What the launcher (``thyme kinesis run``) and its children (``python -m record_processor``)
agree on, in one place both import: the child's settings, the variables that carry them, and
the per-batch event the child reports.

Settings: either ``--config FILE`` (:data:`ENV_PROCESSOR_CONFIG`): a JSON :class:`ProcessorConfig`
that ``thyme kinesis run`` writes into its private directory, so the child never imports user
code nor sees secrets; or ``--dataset MODULE:CLASS`` (:data:`ENV_DATASET`) with ``--store URL``
(``THYME_STORE_URL``), handy for running the child by hand.

Reports: after each committed batch the child logs one JSON line, message :data:`BATCH_APPLIED`,
whose fields are a :class:`BatchEvent`. The launcher reads them back with :func:`batch_event`
for its progress line and its Prometheus counters; the child's EMF metrics are built from the
same event.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Final, Literal

import msgspec

from thyme.connectors.formats import FormatSpec
from thyme.connectors.source import source_spec
from thyme.errors import ConfigError, LoadError
from thyme.schema import DatasetSchema, dataset_schema
from thyme.store.base import Feed

ENV_PROCESSOR_CONFIG: Final = "THYME_PROCESSOR_CONFIG"
"""The path of the child's :class:`ProcessorConfig` (set by the launcher for the daemon's children)."""
ENV_DATASET: Final = "THYME_DATASET"
"""``MODULE:DATASET`` for a child started by hand."""
ENV_STORE_GIVE_UP: Final = "THYME_STORE_GIVE_UP_AFTER_S"
"""How long a child retries a batch against an unavailable store before it exits."""
DEFAULT_GIVE_UP_AFTER_S: Final = 120.0
DEFAULT_NAMESPACE: Final = "Thyme/KinesisSource"
"""CloudWatch namespace of the children's EMF metrics."""


class ProcessorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The child's settings. A msgspec struct like the schema it holds: the child loads no pydantic."""

    dataset: DatasetSchema
    """The dataset the shard's records are written to."""
    stream: str
    """The stream's ARN: shard state and dead letters are kept per dataset version and stream."""
    max_lateness_ms: int | None = None
    """``@source(max_lateness=...)`` in milliseconds; None: nothing is late."""
    max_future_skew_ms: int = 3_600_000
    """``@source(max_future_skew=...)`` in milliseconds."""
    format: str = "json"
    """``KinesisSource(format=...)``: how a record's bytes become rows (``thyme/records/formats.py``)."""
    fields: tuple[str, ...] | None = None
    """``KinesisSource(fields=...)``: the CloudFront real-time log fields, in order."""
    store_url: str | None = None
    """The store; None: ``THYME_STORE_URL`` or the default SQLite file. Never in ``repr`` (it may
    hold a password)."""
    retry_give_up_after_s: float = DEFAULT_GIVE_UP_AFTER_S
    """How long a batch is retried against an unavailable store before the child exits."""
    lease_table: str | None = None
    """The KCL lease table, where a new shard's parents are found (their watermark is inherited)."""
    known_parents: dict[str, tuple[str, ...]] | None = None
    """Each shard's parents as the stream listed them when the consumer started (``ListShards``):
    a new shard found here needs no lease-table read (and the child no AWS SDK); one created
    later (a split while running) is looked up in the lease table."""
    region: str | None = None
    """Region of the lease table."""
    dynamodb_endpoint_url: str | None = None
    """DynamoDB endpoint override (local stacks)."""
    metrics: Literal["emf", "off"] = "off"
    """``emf``: one CloudWatch Embedded Metric Format line per batch on stderr."""
    metrics_namespace: str = DEFAULT_NAMESPACE

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'<redacted>' if name == 'store_url' and value is not None else repr(value)}"
            for name, value in msgspec.structs.asdict(self).items()
        )
        return f"ProcessorConfig({shown})"

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()

    def replace(self, **changes: object) -> ProcessorConfig:
        return msgspec.structs.replace(self, **changes)

    @property
    def feed(self) -> Feed:
        return Feed(self.dataset, self.stream)

    @property
    def record_format(self) -> FormatSpec:
        return FormatSpec(self.format, self.fields)

    @property
    def max_lateness(self) -> timedelta | None:
        return None if self.max_lateness_ms is None else timedelta(milliseconds=self.max_lateness_ms)

    @property
    def max_future_skew(self) -> timedelta:
        return timedelta(milliseconds=self.max_future_skew_ms)

    @classmethod
    def from_file(cls, path: str | Path) -> ProcessorConfig:
        try:
            return msgspec.json.decode(Path(path).read_bytes(), type=cls)
        except OSError as exc:
            raise ConfigError("processor config", f"cannot read {path}: {exc.strerror}", value=str(path)) from exc
        except msgspec.DecodeError as exc:  # ValidationError included
            raise ConfigError("processor config", f"{path} is not a valid processor config: {exc}") from exc

    @classmethod
    def from_dataset(cls, klass: type, store_url: str | None = None) -> ProcessorConfig:
        schema = dataset_schema(klass)
        spec = source_spec(klass)
        if schema is None or spec is None:
            raise LoadError(f"{getattr(klass, '__name__', klass)} is not a @source(KinesisSource(...)) @dataset class")
        return cls(
            dataset=schema,
            stream=spec.connector.stream_arn,
            max_lateness_ms=None if spec.max_lateness is None else spec.max_lateness // timedelta(milliseconds=1),
            max_future_skew_ms=spec.max_future_skew // timedelta(milliseconds=1),
            format=spec.connector.record_format.name,
            fields=spec.connector.record_format.fields,
            store_url=store_url,
        )


BATCH_APPLIED: Final = "batch applied"
"""The message of a child's log line for a committed batch."""
_BATCH_MARK: Final = f'"message": "{BATCH_APPLIED}"'


class BatchEvent(msgspec.Struct, kw_only=True):
    """One committed (or wholly replayed) batch of one shard, as the child reports it."""

    shard: str
    first: str | None = None
    """Sequence number of the first record delivered."""
    last: str | None = None
    received: int = 0
    """Records delivered in the batch."""
    applied: int = 0
    """Rows written to the store."""
    replayed: int = 0
    """Skipped: already in the store (a redelivery)."""
    dead_letters: dict[str, int] = {}
    """Dead letters written, by reason (``schema: <field>`` reasons grouped by field)."""
    control_messages: int = 0
    """CloudWatch Logs control messages acknowledged (no rows, no dead letters)."""
    attempts: int = 1
    millis_behind_latest: int | None = None
    """KCL's lag of the shard's reader behind the tip when it fetched the batch."""
    seconds: float = 0.0
    """Decode, judge and store transaction, retries included."""
    store_seconds: float = 0.0
    """In the store's transaction (all attempts)."""

    @property
    def late(self) -> int:
        return self.dead_letters.get("late", 0)

    def fields(self) -> dict[str, object]:
        """The log line's fields."""
        return msgspec.structs.asdict(self)


_decode_event = msgspec.json.Decoder(BatchEvent).decode


def is_batch_line(line: str) -> bool:
    """Whether ``line`` is a child's :data:`BATCH_APPLIED` log line (a cheap test)."""
    return _BATCH_MARK in line


def batch_event(line: str) -> BatchEvent | None:
    """The event if ``line`` is a child's :data:`BATCH_APPLIED` log line, else None."""
    if _BATCH_MARK not in line:
        return None
    try:
        return _decode_event(line)
    except msgspec.DecodeError:
        return None
