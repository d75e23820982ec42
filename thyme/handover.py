"""What a child process needs to know, handed over by ``thyme kinesis run`` or the command line.

Either ``--config FILE`` (``THYME_PROCESSOR_CONFIG``): a JSON :class:`ProcessorConfig` that
``thyme kinesis run`` writes into its private directory, so the child never imports user
code nor sees secrets; or ``--dataset MODULE:CLASS`` (``THYME_DATASET``) with
``--store URL`` (``THYME_STORE_URL``), handy for running the child by hand.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from record_processor.metrics import DEFAULT_NAMESPACE
from thyme.connectors.source import source_spec
from thyme.dataset import DatasetSchema, dataset_schema
from thyme.errors import ConfigError, LoadError
from thyme.store.base import Feed


class ProcessorConfig(BaseModel):
    """The child's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DatasetSchema
    """The dataset the shard's records are written to."""
    stream: str
    """The stream's ARN: shard state and dead letters are kept per dataset version and stream."""
    max_lateness_ms: int | None = None
    """``@source(max_lateness=...)`` in milliseconds; None: nothing is late."""
    max_future_skew_ms: int = 3_600_000
    """``@source(max_future_skew=...)`` in milliseconds."""
    store_url: str | None = Field(None, repr=False)
    """The store; None: ``THYME_STORE_URL`` or the default SQLite file."""
    retry_give_up_after_s: float = 120.0
    """How long a batch is retried against an unavailable store before the child exits."""
    lease_table: str | None = None
    """The KCL lease table, where a new shard's parents are found (their watermark is inherited)."""
    region: str | None = None
    """Region of the lease table."""
    dynamodb_endpoint_url: str | None = None
    """DynamoDB endpoint override (local stacks)."""
    metrics: Literal["emf", "off"] = "off"
    """``emf``: one CloudWatch Embedded Metric Format line per batch on stderr."""
    metrics_namespace: str = DEFAULT_NAMESPACE

    @property
    def feed(self) -> Feed:
        return Feed(self.dataset, self.stream)

    @property
    def max_lateness(self) -> timedelta | None:
        return None if self.max_lateness_ms is None else timedelta(milliseconds=self.max_lateness_ms)

    @property
    def max_future_skew(self) -> timedelta:
        return timedelta(milliseconds=self.max_future_skew_ms)

    @classmethod
    def from_file(cls, path: str | Path) -> ProcessorConfig:
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError("processor config", f"cannot read {path}: {exc.strerror}", value=str(path)) from exc
        except ValidationError as exc:
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
            store_url=store_url,
        )
