"""Small factories for datasets, records and multilang messages used across the tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from thyme import Field, dataset, field
from thyme.connectors import KinesisSource, source
from thyme.schema import DatasetSchema, dataset_schema
from thyme.store import Feed

SEQ_BASE = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898


@dataset(index=True)
class ClickEvent:
    user_id: Field[str] = field(key=True)
    page: Field[str] = field()
    timestamp: Field[datetime] = field(timestamp=True)


@dataset(index=True)
class Purchase:
    order_id: Field[int] = field(key=True)
    ts: Field[datetime] = field(timestamp=True)
    amount: Field[float] = field()
    paid: Field[bool] = field()
    day: Field[date] = field()
    coupon: Field[str | None] = field()
    items: Field[list[str]] = field()
    attrs: Field[dict[str, int]] = field()
    seen: Field[list[datetime]] = field()


STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
"""The stream the store tests' feeds read (SourcedClick's)."""


def schema_of(klass: type) -> DatasetSchema:
    schema = dataset_schema(klass)
    assert schema is not None
    return schema


def feed_of(dataset: type | DatasetSchema, stream: str = STREAM) -> Feed:
    """The feed of a dataset (class or schema) from ``stream``."""
    return Feed(dataset if isinstance(dataset, DatasetSchema) else schema_of(dataset), stream)


def seq(n: int) -> str:
    """A realistic 56-digit Kinesis sequence number, increasing with ``n``."""
    return str(SEQ_BASE + n * 10)


def b64(payload: bytes | str | dict[str, Any]) -> str:
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    return base64.b64encode(payload).decode()


def record_message(
    n: int, payload: bytes | str | dict[str, Any], arrival_ms: int, sub: int = 0, key: str = "pk"
) -> dict[str, Any]:
    """One ``record`` object of a ``processRecords`` message, as the daemon writes it."""
    return {
        "action": "record",
        "data": b64(payload),
        "partitionKey": key,
        "sequenceNumber": seq(n),
        "subSequenceNumber": sub,
        "approximateArrivalTimestamp": arrival_ms,
    }


def process_records(records: Iterable[dict[str, Any]], millis_behind: int = 0) -> str:
    return json.dumps({"action": "processRecords", "records": list(records), "millisBehindLatest": millis_behind})


@source(
    KinesisSource(stream_arn=STREAM, init_position="trim_horizon"),
    max_lateness="5m",
)
@dataset(index=True)
class SourcedClick:
    user_id: Field[str] = field(key=True)
    page: Field[str] = field()
    timestamp: Field[datetime] = field(timestamp=True)
