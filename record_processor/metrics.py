"""Per-batch metrics as CloudWatch Embedded Metric Format (EMF) lines on stderr.

One JSON line per applied batch, per shard. CloudWatch Logs turns such lines into metrics
when they reach a log group (the ECS ``awslogs`` driver, Fluent Bit / FireLens, or the
CloudWatch agent carry stderr there), so no agent or API call is needed in the child. The
same line is readable as a log line. ``thyme kinesis run`` also reads these lines to show
progress on a terminal (:mod:`thyme.kinesis.progress`).

Metrics (namespace ``Thyme/KinesisSource`` unless configured; dimensions ``Dataset, Shard``
and ``Dataset``):

============================  ============  ==================================================
``RecordsReceived``           Count         records delivered in the batch
``RecordsApplied``            Count         rows written to the store
``RecordsReplayed``           Count         skipped: already in the store (a redelivery)
``RecordsLate``               Count         dead-lettered as ``late``
``RecordsInvalid``            Count         dead-lettered for any other reason
``BatchDuration``             Milliseconds  decode + judge + store transaction, retries included
``StoreWriteLatency``         Milliseconds  time in the store's transaction (all attempts)
``MillisBehindLatest``        Milliseconds  KCL's lag of the shard's reader behind the tip
============================  ============  ==================================================
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

import msgspec

from record_processor.processor import BatchOutcome

DEFAULT_NAMESPACE: Final = "Thyme/KinesisSource"
EMF_MARK: Final = '{"_aws":'
"""Every EMF line starts with this (the launcher recognises metric lines by it)."""

_COUNTS: Final = ("RecordsReceived", "RecordsApplied", "RecordsReplayed", "RecordsLate", "RecordsInvalid")
_TIMES: Final = ("BatchDuration", "StoreWriteLatency", "MillisBehindLatest")
METRIC_NAMES: Final = _COUNTS + _TIMES


class EmfMetrics:
    """Writes one EMF line per batch. ``stream`` is stderr: stdout belongs to the KCL protocol."""

    def __init__(
        self,
        dataset: str,
        namespace: str = DEFAULT_NAMESPACE,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dataset = dataset
        self.namespace = namespace
        self._stream = stream
        self._clock = clock
        # The directive names only metrics the line has a value for (two variants: with and
        # without the lag, which KCL does not always report).
        self._definitions = {
            with_lag: [
                {
                    "Namespace": namespace,
                    "Dimensions": [["Dataset", "Shard"], ["Dataset"]],
                    "Metrics": [{"Name": n, "Unit": "Count"} for n in _COUNTS]
                    + [{"Name": n, "Unit": "Milliseconds"} for n in _TIMES if with_lag or n != "MillisBehindLatest"],
                }
            ]
            for with_lag in (True, False)
        }
        self._encode = msgspec.json.Encoder().encode

    def batch(self, shard: str, outcome: BatchOutcome, seconds: float, millis_behind_latest: int | None) -> None:
        late = outcome.dead_letters.get("late", 0)
        entry: dict[str, object] = {
            "_aws": {
                "Timestamp": int(self._clock() * 1000),
                "CloudWatchMetrics": self._definitions[millis_behind_latest is not None],
            },
            "Dataset": self.dataset,
            "Shard": shard,
            "RecordsReceived": outcome.received,
            "RecordsApplied": outcome.applied,
            "RecordsReplayed": outcome.replayed,
            "RecordsLate": late,
            "RecordsInvalid": sum(outcome.dead_letters.values()) - late,
            "BatchDuration": round(seconds * 1000, 3),
            "StoreWriteLatency": round(outcome.store_seconds * 1000, 3),
        }
        if millis_behind_latest is not None:  # left out, not zero, when KCL did not report it
            entry["MillisBehindLatest"] = millis_behind_latest
        stream = self._stream or sys.stderr
        stream.write(self._encode(entry).decode() + "\n")
        stream.flush()
