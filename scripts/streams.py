"""Helpers shared by the demo and the end-to-end tests: streams, producers, processes.

Plain boto3 against whatever endpoint ``THYME_KINESIS_ENDPOINT_URL`` names (the local stack,
LocalStack or real AWS).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def kinesis_client() -> Any:
    import boto3

    return boto3.client(
        "kinesis",
        endpoint_url=os.environ.get("THYME_KINESIS_ENDPOINT_URL") or None,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
    )


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def create_stream(client: Any, name: str, shards: int) -> str:
    """Create a stream, wait until it is ACTIVE, return its ARN."""
    client.create_stream(StreamName=name, ShardCount=shards)

    def active() -> str | None:
        summary = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        return str(summary["StreamARN"]) if summary["StreamStatus"] == "ACTIVE" else None

    return str(wait_for(active, 60, f"stream {name} to become ACTIVE"))


def put_payloads(client: Any, stream: str, payloads: Sequence[tuple[str, bytes]]) -> list[str]:
    """Put ``(partition key, data)`` pairs in order (500 per call); return their sequence numbers."""
    sequences: list[str] = []
    for start in range(0, len(payloads), 500):
        chunk = payloads[start : start + 500]
        pending = list(range(len(chunk)))
        results: dict[int, str] = {}
        while pending:
            reply = client.put_records(
                StreamName=stream, Records=[{"PartitionKey": chunk[i][0], "Data": chunk[i][1]} for i in pending]
            )
            retry = []
            for i, entry in zip(pending, reply["Records"], strict=True):
                if "SequenceNumber" in entry:
                    results[i] = entry["SequenceNumber"]
                else:
                    retry.append(i)
            pending = retry
            if pending:
                time.sleep(0.2)
        sequences.extend(results[i] for i in range(len(chunk)))
    return sequences


def json_payloads(events: Iterable[dict[str, Any]], key: str = "user_id") -> list[tuple[str, bytes]]:
    return [(str(e.get(key, "x")), json.dumps(e).encode()) for e in events]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found
