"""The amazon-kclpy v3 adapter: the only module that imports ``amazon_kclpy``.

amazon-kclpy catches ordinary exceptions raised by a processor, prints them and still
reports the action done, so a failed batch would be acknowledged. This adapter therefore
never lets a failure pass as success: a batch that cannot be applied ends the process with
a non-zero status (``SystemExit`` goes through kclpy) before any status is written, and the
daemon restarts the shard from its last checkpoint.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Final, TextIO, TypeVar

from amazon_kclpy import kcl
from amazon_kclpy.messages import (
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from amazon_kclpy.v3 import processor as v3

from record_processor.envelope import InputRecord, decode_process_records, from_base64
from record_processor.metrics import EmfMetrics
from record_processor.worker import BatchFailedError, ShardWorker
from thyme.errors import ThymeError
from thyme.handover import BATCH_APPLIED, BatchEvent
from thyme.store.base import Position

log = logging.getLogger("record_processor.kcl")
R = TypeVar("R")

EXIT_STORE_UNAVAILABLE: Final = 75
"""EX_TEMPFAIL: the store could not apply a batch within the retry bound."""
EXIT_INTERNAL: Final = 70
"""EX_SOFTWARE: an unexpected error; the batch was not acknowledged."""
EXIT_CONFIG: Final = 78
"""EX_CONFIG: the store refuses the dataset (e.g. its schema changed at the same version)."""
CHECKPOINT_RETRIES: Final = 5
LEASE_GONE: Final = frozenset({"ShutdownException", "InvalidStateException"})


class _IOHandler(kcl._IOHandler):  # type: ignore[misc]
    """kclpy's line reader/writer, with ``processRecords`` decoded by :mod:`record_processor.envelope`
    (one msgspec pass, base64 included) instead of ``json.loads`` with a ``Record`` per record.
    Every other message goes through kclpy unchanged."""

    _MARK: Final = '"action":"processRecords"'

    def load_action(self, line: str) -> object:
        if self._MARK in line[:64]:  # the daemon (Jackson) writes the action first
            message = decode_process_records(line)
            return ProcessRecordsInput(
                {
                    "action": "processRecords",
                    "records": message.records,
                    "millisBehindLatest": message.millis_behind_latest,
                }
            )
        return super().load_action(line)


def kcl_process(processor: KclProcessor, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> kcl.KCLProcess:
    """kclpy's protocol loop over the given streams, with the fast ``processRecords`` decoder."""
    process = kcl.KCLProcess(processor, input_file=stdin, output_file=stdout, error_file=stderr)
    process.io_handler = _IOHandler(stdin, stdout, stderr)
    process.checkpointer = kcl.Checkpointer(process.io_handler)
    return process


class KclProcessor(v3.RecordProcessorBase):  # type: ignore[misc]
    """Maps the KCL lifecycle onto a :class:`ShardWorker` and takes the checkpoints."""

    def __init__(
        self,
        worker: ShardWorker,
        log_context: dict[str, object] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        metrics: EmfMetrics | None = None,
    ) -> None:
        self.worker = worker
        self.metrics = metrics
        self._log_context = log_context if log_context is not None else {}
        self._sleep = sleep
        self._last: Position | None = None
        self._stopping = False
        """A shutdown was requested: the leaseLost that follows is the hand-over."""

    def initialize(self, initialize_input: InitializeInput) -> None:
        shard = initialize_input.shard_id
        self._log_context["shard"] = shard
        _guard(lambda: self.worker.initialize(shard))
        log.info(
            "initialize",
            extra={"fields": {"kcl_checkpoint": initialize_input.sequence_number}},
        )

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        delivered = process_records_input.records
        if delivered and not isinstance(delivered[0], InputRecord):  # parsed by kclpy itself
            parsed = delivered
            delivered = _guard(
                lambda: [
                    from_base64(r.data, r.partition_key, r.sequence_number, r.sub_sequence_number, r.timestamp_millis)
                    for r in parsed
                ]
            )
        records: list[InputRecord] = delivered
        started = time.perf_counter()
        lag = process_records_input.millis_behind_latest
        outcome = _guard(lambda: self.worker.process(records, lag))
        event = BatchEvent(
            shard=self.worker.shard,
            first=records[0].sequence if records else None,
            last=records[-1].sequence if records else None,
            received=outcome.received,
            applied=outcome.applied,
            replayed=outcome.replayed,
            dead_letters=dict(outcome.dead_letters),
            control_messages=outcome.control_messages,
            attempts=outcome.attempts,
            millis_behind_latest=lag,
            seconds=round(time.perf_counter() - started, 4),
            store_seconds=round(outcome.store_seconds, 4),
        )
        log.info(BATCH_APPLIED, extra={"fields": event.fields()})
        if self.metrics is not None:
            self.metrics.batch(event)
        if outcome.last is not None:
            self._last = outcome.last
            self._checkpoint(process_records_input.checkpointer, str(outcome.last.sequence), outcome.last.sub_sequence)

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        if self._stopping:  # KCL 3 ends every requested shutdown with leaseLost: a hand-over, not a loss
            log.info(
                "shard handed over after a requested shutdown",
                extra={"fields": {"event": "handed_over", "checkpointed_at": _at(self._last)}},
            )
            return
        log.warning(
            "lease lost; another worker took the shard (its last batch is applied; the new owner resumes "
            "from the store's position)",
            extra={"fields": {"event": "lease_lost", "last_applied": _at(self._last)}},
        )

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        _guard(self.worker.shard_ended)
        log.info("shard ended; checkpointing at SHARD_END", extra={"fields": {"event": "shard_ended"}})
        self._checkpoint(shard_ended_input.checkpointer, None, None)

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        # Every delivered batch is already applied (processing is synchronous), so the
        # checkpoint at the last delivered record is safe and speeds up the hand-over.
        self._stopping = True
        if self._last is not None:
            log.info(
                "shutdown requested; checkpointing the last applied record", extra={"fields": {"event": "shutdown"}}
            )
            self._checkpoint(shutdown_requested_input.checkpointer, str(self._last.sequence), self._last.sub_sequence)
        else:
            log.info("shutdown requested; nothing applied here to checkpoint", extra={"fields": {"event": "shutdown"}})

    def _checkpoint(self, checkpointer: kcl.Checkpointer, sequence: str | None, sub: int | None) -> None:
        """Checkpoint; retry throttling; a lost lease is not an error (the store has the data)."""
        for attempt in range(1, CHECKPOINT_RETRIES + 1):
            try:
                checkpointer.checkpoint(sequence, sub)
                return
            except kcl.CheckpointError as exc:
                error = str(exc.value)
                if error in LEASE_GONE:
                    log.info("checkpoint refused: lease no longer held", extra={"fields": {"error": error}})
                    return
                if error == "ThrottlingException" and attempt < CHECKPOINT_RETRIES:
                    self._sleep(0.2 * 2**attempt)
                    continue
                log.warning(
                    "checkpoint failed; the records are applied, a restart will skip them",
                    extra={"fields": {"error": error, "sequence": sequence}},
                )
                return


def _at(position: Position | None) -> str | None:
    return None if position is None else str(position)


def _guard(action: Callable[[], R]) -> R:
    """Run worker code; turn any failure into an exit, so kclpy cannot report it as done."""
    try:
        return action()
    except BatchFailedError as exc:
        log.error(
            "batch not applied; exiting so the daemon restarts the shard",
            extra={"fields": {"event": "store_unavailable_giving_up", "error": str(exc)}},
        )
        raise SystemExit(EXIT_STORE_UNAVAILABLE) from exc
    except ThymeError as exc:
        log.error(str(exc))
        raise SystemExit(EXIT_CONFIG) from exc
    except Exception as exc:
        log.exception("unexpected error; exiting without acknowledging the batch")
        raise SystemExit(EXIT_INTERNAL) from exc


def run(worker: ShardWorker, log_context: dict[str, object] | None = None, metrics: EmfMetrics | None = None) -> None:
    """Serve the MultiLangDaemon protocol on stdin/stdout until the daemon closes stdin.

    ``log_context`` is the dict behind the JSON log lines; the shard id is added to it.
    """
    kcl_process(KclProcessor(worker, log_context, metrics=metrics), sys.stdin, sys.stdout, sys.stderr).run()
