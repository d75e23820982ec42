"""The datasets the formats benchmark feeds (``sections/formats.py``).

``SourcedClick`` here is ``tests.factories.SourcedClick`` (same name, version and fields, so the
same tables, prefilled with 5M rows) read from CloudWatch Logs subscription records; ``EdgeRequest``
reads CloudFront real-time logs with every documented field, ``EdgeRequestTypical`` with a dozen.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from aws_records import CLOUDFRONT_FIELDS

from thyme import Field, dataset, field
from thyme.connectors import KinesisSource, source

STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"


@source(KinesisSource(stream_arn=STREAM, init_position="trim_horizon", format="cloudwatch_logs"), max_lateness="5m")
@dataset(index=True)
class SourcedClick:
    user_id: Field[str] = field(key=True)
    page: Field[str] = field()
    timestamp: Field[datetime] = field(timestamp=True)


TYPICAL_FIELDS = [
    "timestamp",
    "c-ip",
    "time-to-first-byte",
    "sc-status",
    "sc-bytes",
    "cs-method",
    "cs-host",
    "cs-uri-stem",
    "x-edge-location",
    "x-edge-request-id",
    "cs-referer",
    "x-edge-result-type",
]
"""A real-time log configuration of the dozen fields a traffic dashboard reads."""


@source(
    KinesisSource(
        stream_arn="arn:aws:kinesis:us-east-1:123456789012:stream/edge12",
        init_position="trim_horizon",
        format="cloudfront_realtime",
        fields=TYPICAL_FIELDS,
    ),
    max_lateness="5m",
)
@dataset(index=True)
class EdgeRequestTypical:
    x_edge_request_id: Field[str] = field(key=True)
    timestamp: Field[datetime] = field(timestamp=True)
    c_ip: Field[str] = field()
    sc_status: Field[int] = field()
    sc_bytes: Field[int] = field()
    time_to_first_byte: Field[float] = field()
    cs_method: Field[str] = field()
    cs_uri_stem: Field[str] = field()
    cs_referer: Field[str | None] = field()
    x_edge_location: Field[str] = field()


@source(
    KinesisSource(
        stream_arn="arn:aws:kinesis:us-east-1:123456789012:stream/edge",
        init_position="trim_horizon",
        format="cloudfront_realtime",
        fields=list(CLOUDFRONT_FIELDS),
    ),
    max_lateness="5m",
)
@dataset(index=True)
class EdgeRequest:
    x_edge_request_id: Field[str] = field(key=True)
    timestamp: Field[datetime] = field(timestamp=True)
    c_ip: Field[str] = field()
    sc_status: Field[int] = field()
    sc_bytes: Field[int] = field()
    time_to_first_byte: Field[float] = field()
    cs_method: Field[str] = field()
    cs_uri_stem: Field[str] = field()
    cs_referer: Field[str | None] = field()
    x_edge_location: Field[str] = field()
