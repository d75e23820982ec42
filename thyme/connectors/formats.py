"""Record formats a :class:`~thyme.KinesisSource` reads, as a user declares them.

* ``"json"``: one JSON object per record; a record compressed with gzip or zlib (a producer's
  choice, told by its first bytes) is decompressed first.
* ``"cloudwatch_logs"``: what a CloudWatch Logs subscription filter puts on the stream: a
  gzip-compressed envelope of log events, one row per event, its ``message`` a JSON object.
* ``"cloudfront_realtime"``: CloudFront real-time logs, one tab-separated line per record, in
  the order of the real-time log configuration's fields (``fields=[...]``).

This module holds the names, the rules that map them onto a dataset, and the checks that run
when the source is declared; ``thyme/records/formats.py`` decodes the bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from thyme.errors import SourceError
from thyme.schema import DatasetSchema

JSON: Final = "json"
CLOUDWATCH_LOGS: Final = "cloudwatch_logs"
CLOUDFRONT_REALTIME: Final = "cloudfront_realtime"
FORMATS: Final = (JSON, CLOUDWATCH_LOGS, CLOUDFRONT_REALTIME)


@dataclass(frozen=True)
class FormatSpec:
    """A source's record format: its name and, for ``cloudfront_realtime``, the configuration's
    fields in order."""

    name: str = "json"
    fields: tuple[str, ...] | None = None

    def __str__(self) -> str:
        return self.name if self.fields is None else f"{self.name} ({len(self.fields)} fields)"


CLOUDWATCH_ENVELOPE_FIELDS: Final = {
    "log_group": "logGroup",
    "log_stream": "logStream",
    "log_event_id": "id",
    "log_owner": "owner",
}
"""Dataset fields a ``cloudwatch_logs`` source fills from the envelope (dataset name → the
subscription record's name). Declared as ``str`` (or ``Optional[str]``); the envelope's value
wins over a key of the same name in the message."""

CLOUDFRONT_REALTIME_FIELDS: Final = (
    "timestamp",
    "c-ip",
    "time-to-first-byte",
    "sc-status",
    "sc-bytes",
    "cs-method",
    "cs-protocol",
    "cs-host",
    "cs-uri-stem",
    "cs-bytes",
    "x-edge-location",
    "x-edge-request-id",
    "x-host-header",
    "time-taken",
    "cs-protocol-version",
    "c-ip-version",
    "cs-user-agent",
    "cs-referer",
    "cs-cookie",
    "cs-uri-query",
    "x-edge-response-result-type",
    "x-forwarded-for",
    "ssl-protocol",
    "ssl-cipher",
    "x-edge-result-type",
    "fle-encrypted-fields",
    "fle-status",
    "sc-content-type",
    "sc-content-len",
    "sc-range-start",
    "sc-range-end",
    "c-port",
    "x-edge-detailed-result-type",
    "c-country",
    "cs-accept-encoding",
    "cs-accept",
    "cache-behavior-path-pattern",
    "cs-headers",
    "cs-header-names",
    "cs-headers-count",
    "primary-distribution-id",
    "primary-distribution-dns-name",
    "origin-fbl",
    "origin-lbl",
    "asn",
)
"""The fields of a CloudFront real-time log configuration, in AWS's documented order (a
configuration sends the ones it selects, in this order). Names CloudFront adds later are
accepted too: any lowercase name of letters, digits, ``-`` and ``()``."""

_CLOUDFRONT_NAME: Final = re.compile(r"[a-z][a-z0-9()-]*")
_NOT_WORD: Final = re.compile(r"[^a-z0-9]+")
_SCALARS: Final = frozenset({"str", "int", "float", "bool", "date", "datetime"})
_FIELDS_FIX: Final = (
    "Pass the Fields of the distribution's real-time log configuration, in order "
    "(`aws cloudfront get-realtime-log-config --name NAME` prints them)"
)


def dataset_field_name(cloudfront_field: str) -> str:
    """The dataset field a CloudFront real-time log field fills: lowercase, every run of
    characters other than letters and digits made one ``_``, none at the ends
    (``cs-uri-stem`` → ``cs_uri_stem``, ``timestamp(ms)`` → ``timestamp_ms``)."""
    return _NOT_WORD.sub("_", cloudfront_field.lower()).strip("_")


def check_format(format: object, fields: object) -> tuple[str, tuple[str, ...] | None]:  # noqa: A002
    """``KinesisSource(format=..., fields=...)`` checked: the format's name and, for
    ``cloudfront_realtime``, its fields as a tuple. Raises :class:`SourceError`."""
    if format not in FORMATS:
        raise SourceError(
            "KinesisSource(format=...)",
            "unsupported format",
            f"Supported formats: {', '.join(repr(f) for f in FORMATS)}.",
            value=format,
        )
    assert isinstance(format, str)
    if format != CLOUDFRONT_REALTIME:
        if fields is not None:
            raise SourceError(
                "KinesisSource(fields=...)",
                f"fields are the columns of a CloudFront real-time log line; format {format!r} has none",
                'Remove fields, or set format="cloudfront_realtime".',
            )
        return format, None
    if fields is None:
        raise SourceError(
            "KinesisSource(fields=...)",
            "format 'cloudfront_realtime' needs the ordered list of fields the distribution sends",
            _FIELDS_FIX + ', for example fields=["timestamp", "c-ip", "sc-status", "cs-uri-stem"].',
        )
    if isinstance(fields, str) or not isinstance(fields, Sequence) or not fields:
        raise SourceError(
            "KinesisSource(fields=...)",
            "not a non-empty list of CloudFront field names",
            _FIELDS_FIX + ".",
            value=fields,
        )
    seen: dict[str, str] = {}
    for name in fields:
        if not isinstance(name, str) or not _CLOUDFRONT_NAME.fullmatch(name):
            hint = (
                f' CloudFront names use hyphens: "{name.replace("_", "-")}".'
                if isinstance(name, str) and "_" in name
                else ""
            )
            raise SourceError(
                "KinesisSource(fields=...)",
                "not a CloudFront real-time log field name",
                _FIELDS_FIX + "." + hint,
                value=name,
            )
        column = dataset_field_name(name)
        if column in seen:
            raise SourceError(
                "KinesisSource(fields=...)",
                f"{name!r} is listed twice"
                if seen[column] == name
                else f"{seen[column]!r} and {name!r} both fill the dataset field {column!r}",
                _FIELDS_FIX + ", each once.",
            )
        seen[column] = name
    return format, tuple(fields)


def check_dataset(format: str, fields: tuple[str, ...] | None, schema: DatasetSchema) -> None:  # noqa: A002
    """Refuse a dataset its source's format could never fill (``@source`` calls it): a required
    field no CloudFront column fills, a CloudFront column into a list or dict field, an envelope
    field of a CloudWatch Logs source that is not a string."""
    where = f"@source on {schema.name}"
    if format == CLOUDWATCH_LOGS:
        for f in schema.fields:
            if f.name in CLOUDWATCH_ENVELOPE_FIELDS and f.type.kind != "str":
                raise SourceError(
                    where,
                    f"field {f.name!r} is filled from the CloudWatch Logs envelope "
                    f"({CLOUDWATCH_ENVELOPE_FIELDS[f.name]}), a string, but is declared {f.type.describe()}",
                    f"Declare {f.name}: str (or Optional[str]), or rename the field.",
                )
        return
    if format != CLOUDFRONT_REALTIME:
        return
    assert fields is not None
    sent = {dataset_field_name(name): name for name in fields}
    for f in schema.fields:
        column = sent.get(f.name)
        if column is None:
            if not f.type.optional:
                raise SourceError(
                    where,
                    f"required field {f.name!r} is not among the CloudFront fields the source lists",
                    f"Add the CloudFront field whose name maps to it ({f.name.replace('_', '-')!r}, hyphens for "
                    "underscores) to fields=[...] and to the real-time log configuration, or make the field "
                    "Optional.",
                )
        elif f.type.kind not in _SCALARS:
            raise SourceError(
                where,
                f"field {f.name!r} is {f.type.describe()}, but CloudFront sends {column!r} as one text value",
                "Declare it str, int, float, bool, date or datetime.",
            )
