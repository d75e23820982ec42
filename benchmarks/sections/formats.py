"""Section: the record formats, per child, beside plain JSON in the same run and on the same store.

The throughput workload (10,000 click events per batch, 20% repeated keys, ~10% late, a few
invalid) re-packed as each format carries it, event for event, so every format must give the same
rows and dead letters: gzip-compressed JSON (one record per event), CloudWatch Logs subscription
records (20 events per gzip envelope: 500 records per batch) and CloudFront real-time log lines
(all 45 fields, and a dozen as a dashboard's configuration would; the event's key as
``x-edge-request-id``). JSON, gzip and CloudWatch Logs
write into the 5M-row SourcedClick tables; CloudFront into its own dataset's tables in the same
5M-row store file, which start empty (no prefilled CloudFront rows exist): its figure is the
decoding cost beside an emptier index. Figures are events/s (rows + dead letters).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import sys
from datetime import UTC, datetime
from typing import Any

from context import BENCH, FIVE_M, REPO, Context, Series
from processor import Run, Workload, drive, log

sys.path.insert(0, str(REPO / "scripts"))
from aws_records import CLOUDFRONT_FIELDS, cloudfront_line, cloudfront_request, log_event_id
from format_datasets import TYPICAL_FIELDS

EVENTS_PER_ENVELOPE = 20
FORMATS = ("json", "gzip json", "cloudwatch_logs", "cloudfront_realtime", "cloudfront_realtime (12 fields)")
DATASETS = {
    "json": "tests.factories:SourcedClick",
    "gzip json": "tests.factories:SourcedClick",
    "cloudwatch_logs": f"{BENCH / 'format_datasets.py'}:SourcedClick",
    "cloudfront_realtime": f"{BENCH / 'format_datasets.py'}:EdgeRequest",
    "cloudfront_realtime (12 fields)": f"{BENCH / 'format_datasets.py'}:EdgeRequestTypical",
}


def _records(line: bytes) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(line)["records"]
    return records


def _message(records: list[dict[str, Any]]) -> bytes:
    body = {"action": "processRecords", "records": records, "millisBehindLatest": 0}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def repack(workload: Workload, fmt: str) -> Workload:
    """The workload's events as ``fmt`` carries them (built before any timing)."""
    if fmt == "json":
        return workload
    lines: list[bytes] = []
    checkpoints: list[tuple[str, int]] = []
    for line in workload.lines:
        records = _records(line)
        out: list[dict[str, Any]] = []
        if fmt == "cloudwatch_logs":
            for start in range(0, len(records), EVENTS_PER_ENVELOPE):
                group = records[start : start + EVENTS_PER_ENVELOPE]
                events = []
                for i, r in enumerate(group):
                    message = base64.b64decode(r["data"]).decode()
                    try:
                        at_ms = _ms(json.loads(message)["timestamp"])
                    except (ValueError, KeyError, TypeError):
                        at_ms = r["approximateArrivalTimestamp"]
                    events.append({"id": log_event_id(start + i, at_ms), "timestamp": at_ms, "message": message})
                envelope = {
                    "owner": "123456789012",
                    "logGroup": "/aws/lambda/clicks",
                    "logStream": "2024/05/01/[$LATEST]0123456789abcdef",
                    "subscriptionFilters": ["to-thyme"],
                    "messageType": "DATA_MESSAGE",
                    "logEvents": events,
                }
                data = gzip.compress(json.dumps(envelope, separators=(",", ":")).encode(), 6)
                out.append({**group[-1], "data": base64.b64encode(data).decode()})
        else:
            for r in records:
                payload = base64.b64decode(r["data"])
                data = gzip.compress(payload, 6) if fmt == "gzip json" else _cloudfront(payload, fmt)
                out.append({**r, "data": base64.b64encode(data).decode()})
        lines.append(_message(out))
        checkpoints.append((out[-1]["sequenceNumber"], 0))
    return Workload(
        lines,
        checkpoints,
        workload.records,
        workload.accepted,
        workload.dead_letters,
        workload.repeated_keys,
        workload.mean_event_bytes,
        sum(map(len, lines)) / len(lines),
        0.0,
    )


def _cloudfront(payload: bytes, fmt: str) -> bytes:
    """A CloudFront line for one click event (all 45 fields, or the dozen of ``TYPICAL_FIELDS``);
    an invalid event becomes a line that fails alike (invalid JSON: a field missing; a wrong type:
    a status that is not a number)."""
    fields = TYPICAL_FIELDS if "12" in fmt else CLOUDFRONT_FIELDS
    try:
        event = json.loads(payload)
    except ValueError:
        values = cloudfront_request(0, datetime.now(UTC))
        return b"\t".join(cloudfront_line(values, fields).split(b"\t")[:-1]) + b"\n"
    at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    values = cloudfront_request(len(payload), at, path=str(event["page"])[:200])
    values["x-edge-request-id"] = str(event["user_id"])
    if not isinstance(event["user_id"], str):
        values["sc-status"] = "two hundred"
    return cloudfront_line(values, fields)


def _command(dataset: str, url: str) -> list[str]:
    return [sys.executable, "-m", "record_processor", "--dataset", dataset, "--store", url]


def formats(ctx: Context) -> None:
    log("\n== formats: events/s per child, each format beside plain JSON (SQLite, 5M rows)")
    base = ctx.workload()
    packed = {fmt: repack(base, fmt) for fmt in FORMATS}
    series = {fmt: Series(fmt, "events/s") for fmt in FORMATS}
    bytes_per_record = {fmt: packed[fmt].mean_line_bytes / len(_records(packed[fmt].lines[0])) for fmt in FORMATS}
    for i in range(ctx.args.repeat):
        url = ctx.fresh("sqlite", FIVE_M)
        line = f"  run {i + 1}/{ctx.args.repeat}:"
        for fmt in FORMATS:
            shard = ctx.shard("fmt-" + re.sub(r"[^a-z0-9]+", "-", fmt).strip("-"))
            run: Run = drive(_command(DATASETS[fmt], url), packed[fmt], ctx.work / f"{shard}.stderr.log", shard=shard)
            series[fmt].values.append(run.rate)
            line += f" {fmt} {run.rate:,.0f}"
        log(line + " events/s")
    plain = series["json"].median
    for fmt in FORMATS:
        s = series[fmt]
        label = "plain JSON" if fmt == "json" else fmt
        ratio = "" if fmt == "json" else f" ({s.median / plain:.2f}x plain JSON)"
        ctx.row(
            "formats",
            f"child events/s, {label}, SQLite 5M rows{ratio}",
            f"{s.median:,.0f}",
            "≥ 50,000",
            s.median >= 50_000,
        )
    ctx.results["formats"] = {
        "events_per_run": base.records,
        "events_per_cloudwatch_record": EVENTS_PER_ENVELOPE,
        "mean_record_bytes_base64": bytes_per_record,
        **{fmt: series[fmt].as_json() for fmt in FORMATS},
    }
