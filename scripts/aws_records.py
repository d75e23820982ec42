"""Records as AWS services put them on Kinesis, built from AWS's documented shapes, for the
tests, the benchmarks and the demo.

* CloudWatch Logs subscription filters: a gzip-compressed JSON envelope (``owner``, ``logGroup``,
  ``logStream``, ``subscriptionFilters``, ``messageType``, ``logEvents`` of ``id``,
  ``timestamp`` in epoch milliseconds and ``message``), and the ``CONTROL_MESSAGE`` CloudWatch
  sends when a subscription is created.
* CloudFront real-time logs: one line per request, the configuration's fields in order,
  tab-separated, ``-`` for an absent value, a newline at the end; ``timestamp`` in epoch
  seconds with milliseconds.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from thyme.connectors.formats import CLOUDFRONT_REALTIME_FIELDS

CONTROL_MESSAGE_TEXT = "CWL CONTROL MESSAGE: Checking health of destination Kinesis stream."


def log_event_id(n: int, at_ms: int) -> str:
    """A 56-digit event id, as CloudWatch Logs gives them (its leading digits grow with time)."""
    return f"{at_ms:016d}{n:040d}"[:56]


def cloudwatch_logs_record(
    messages: Iterable[tuple[int, str]],
    *,
    log_group: str = "/aws/lambda/checkout",
    log_stream: str = "2024/05/01/[$LATEST]0123456789abcdef0123456789abcdef",
    owner: str = "123456789012",
    filters: Sequence[str] = ("to-thyme",),
    first_id: int = 0,
    compress: bool = True,
) -> bytes:
    """A subscription ``DATA_MESSAGE`` holding one event per ``(timestamp ms, message)``."""
    events = [
        {"id": log_event_id(first_id + i, ts), "timestamp": ts, "message": message}
        for i, (ts, message) in enumerate(messages)
    ]
    envelope = {
        "owner": owner,
        "logGroup": log_group,
        "logStream": log_stream,
        "subscriptionFilters": list(filters),
        "messageType": "DATA_MESSAGE",
        "logEvents": events,
    }
    body = json.dumps(envelope, separators=(",", ":")).encode()
    return gzip.compress(body) if compress else body


def cloudwatch_control_record(at_ms: int) -> bytes:
    """The ``CONTROL_MESSAGE`` CloudWatch Logs writes to check it can reach the stream."""
    envelope = {
        "messageType": "CONTROL_MESSAGE",
        "owner": "CloudwatchLogs",
        "logGroup": "",
        "logStream": "",
        "subscriptionFilters": [],
        "logEvents": [{"id": "", "timestamp": at_ms, "message": CONTROL_MESSAGE_TEXT}],
    }
    return gzip.compress(json.dumps(envelope).encode())


CLOUDFRONT_FIELDS: tuple[str, ...] = CLOUDFRONT_REALTIME_FIELDS
"""Every field of a real-time log configuration, in AWS's documented order."""


def cloudfront_request(n: int, at: datetime, *, status: int = 200, path: str = "/index.html") -> dict[str, Any]:
    """Plausible values of every :data:`CLOUDFRONT_FIELDS` field for request ``n`` (None: ``-``)."""
    return {
        "timestamp": f"{at.timestamp():.3f}",
        "c-ip": f"192.0.2.{n % 250 + 1}",
        "time-to-first-byte": "0.002",
        "sc-status": str(status),
        "sc-bytes": str(1000 + n),
        "cs-method": "GET",
        "cs-protocol": "https",
        "cs-host": "d111111abcdef8.cloudfront.net",
        "cs-uri-stem": path,
        "cs-bytes": "120",
        "x-edge-location": "IAD89-P1",
        "x-edge-request-id": f"req-{n:012d}-Example==",
        "x-host-header": "www.example.com",
        "time-taken": "0.004",
        "cs-protocol-version": "HTTP/2.0",
        "c-ip-version": "IPv4",
        "cs-user-agent": "Mozilla/5.0%20(X11;%20Linux%20x86_64)",
        "cs-referer": None,
        "cs-cookie": None,
        "cs-uri-query": None,
        "x-edge-response-result-type": "Hit",
        "x-forwarded-for": None,
        "ssl-protocol": "TLSv1.3",
        "ssl-cipher": "TLS_AES_128_GCM_SHA256",
        "x-edge-result-type": "Hit",
        "fle-encrypted-fields": None,
        "fle-status": None,
        "sc-content-type": "text/html",
        "sc-content-len": str(900 + n),
        "sc-range-start": None,
        "sc-range-end": None,
        "c-port": str(40000 + n % 20000),
        "x-edge-detailed-result-type": "Hit",
        "c-country": "US",
        "cs-accept-encoding": "gzip,%20br",
        "cs-accept": "text/html",
        "cache-behavior-path-pattern": "*",
        "cs-headers": "host:www.example.com%0A",
        "cs-header-names": "host%0A",
        "cs-headers-count": "1",
        "primary-distribution-id": "E1EXAMPLE",
        "primary-distribution-dns-name": "d111111abcdef8.cloudfront.net",
        "origin-fbl": None,
        "origin-lbl": None,
        "asn": "16509",
    }


def cloudfront_line(values: Mapping[str, Any], fields: Sequence[str] = CLOUDFRONT_FIELDS) -> bytes:
    """One real-time log record: ``values`` in the order of ``fields``, ``-`` for None."""
    return ("\t".join("-" if values.get(f) is None else str(values[f]) for f in fields) + "\n").encode()
