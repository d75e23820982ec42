"""A dead letter's ``detail`` in words.

The record rules store the numbers behind a reason as a small JSON object (they cost a rejected
record a fraction of a microsecond that way); operators read them worded, through :func:`describe`.
"""

from __future__ import annotations

import json
from typing import Any

from thyme.records.lateness import describe_lateness


def describe(detail: str | None) -> str | None:
    """``detail`` in words (None stays None; text that is not one of ours is shown as it is)."""
    if detail is None:
        return None
    try:
        known = json.loads(detail)
    except ValueError:
        return detail
    if not isinstance(known, dict):
        return detail
    parts = [part for part in (describe_lateness(known), _compression(known), _fields(known), _other(known)) if part]
    envelope = _envelope(known)
    if envelope:
        parts.append(envelope)
    return "; ".join(parts) or detail


def _compression(known: dict[str, Any]) -> str | None:
    kind = known.get("compression")
    if kind is None:
        return None
    if "limit_bytes" in known:
        return (
            f"{known.get('compressed_bytes')} bytes of {kind} expand past {known['limit_bytes']} bytes, the most a "
            "record may decompress to"
        )
    if "error" in known:
        return f"{kind} data of {known.get('compressed_bytes')} bytes: {known['error']}"
    return f"the record was {kind}-compressed; this is what it held once decompressed"


def _fields(known: dict[str, Any]) -> str | None:
    if "expected_fields" not in known:
        return None
    return (
        f"{known.get('got_fields')} tab-separated values, but the source lists {known['expected_fields']} fields "
        "(KinesisSource(fields=...) must match the real-time log configuration)"
    )


def _other(known: dict[str, Any]) -> str | None:
    if "messageType" in known and "logGroup" not in known:
        return f"messageType {known['messageType']!r}; a subscription record is DATA_MESSAGE or CONTROL_MESSAGE"
    if "error" in known and "compression" not in known:
        return str(known["error"])
    return None


def _envelope(known: dict[str, Any]) -> str | None:
    if "logGroup" not in known:
        return None
    where = (
        f"log event {known.get('event_index', '?')} from log group {known['logGroup']}, stream {known.get('logStream')}"
    )
    if known.get("owner"):
        where += f", account {known['owner']}"
    return where
