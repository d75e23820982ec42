"""Per-batch metrics as CloudWatch Embedded Metric Format (EMF) lines on stderr.

One JSON line per applied batch, per shard. CloudWatch Logs turns such lines into metrics
when they reach a log group (the ECS ``awslogs`` driver, Fluent Bit / FireLens, or the
CloudWatch agent carry stderr there), so no agent or API call is needed in the child. Each
line is derived from the batch's :class:`~thyme.handover.BatchEvent`, the same event the
child's ``batch applied`` log line carries and the launcher counts.

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

from thyme.handover import DEFAULT_NAMESPACE, BatchEvent

_COUNTS: Final = ("RecordsReceived", "RecordsApplied", "RecordsReplayed", "RecordsLate", "RecordsInvalid")
_TIMES: Final = ("BatchDuration", "StoreWriteLatency", "MillisBehindLatest")
EMITTED: Final = frozenset(_COUNTS + _TIMES)
"""Every metric name the children emit (the alarm definitions in ``deploy/alerts`` are checked against it)."""
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

    def batch(self, event: BatchEvent) -> None:
        """The EMF line of one batch, derived from the event the child logs."""
        lag = event.millis_behind_latest
        entry: dict[str, object] = {
            "_aws": {
                "Timestamp": int(self._clock() * 1000),
                "CloudWatchMetrics": self._definitions[lag is not None],
            },
            "Dataset": self.dataset,
            "Shard": event.shard,
            "RecordsReceived": event.received,
            "RecordsApplied": event.applied,
            "RecordsReplayed": event.replayed,
            "RecordsLate": event.late,
            "RecordsInvalid": sum(event.dead_letters.values()) - event.late,
            "BatchDuration": round(event.seconds * 1000, 3),
            "StoreWriteLatency": round(event.store_seconds * 1000, 3),
        }
        if lag is not None:  # left out, not zero, when KCL did not report it
            entry["MillisBehindLatest"] = lag
        stream = self._stream or sys.stderr
        stream.write(self._encode(entry).decode() + "\n")
        stream.flush()
