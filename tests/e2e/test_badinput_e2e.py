"""End to end: every byte-level case of the bad-input corpus on a real stream, through the real
KCL daemon, mixed with valid records.

Each valid record (and each boundary case that must be accepted) lands exactly once; each bad
record lands exactly once as a dead letter with its exact reason and its bytes intact; no batch
fails and the consumer keeps running. (The invalid-base64 cases cannot travel through Kinesis:
``tests/test_badinput.py`` feeds those to the child over pipes.)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import streams

from tests.badinput import Case, record_cases, valid_record, write_app
from tests.e2e.harness import Consumer, StoreView, unique, wait_for

MAX_REQUEST_BYTES = 3 * 1024 * 1024
"""PutRecords takes at most 5 MiB per call: the ~1 MiB cases go a few at a time."""


class SampleConsumer(Consumer):
    """``thyme kinesis run <app>:Sample`` (the harness' consumer runs ``:Clicks``)."""

    def command(self) -> list[str]:
        return [f"{self.app}:Sample" if arg == f"{self.app}:Clicks" else arg for arg in super().command()]


def put_in_order(client: Any, stream: str, payloads: list[tuple[str, bytes]]) -> list[str]:
    """Put the payloads in order in requests of at most :data:`MAX_REQUEST_BYTES`; their sequence numbers."""
    sequences: list[str] = []
    chunk: list[tuple[str, bytes]] = []
    for payload in payloads:
        if chunk and sum(len(d) for _, d in chunk) + len(payload[1]) > MAX_REQUEST_BYTES:
            sequences += streams.put_payloads(client, stream, chunk)
            chunk = []
        chunk.append(payload)
    sequences += streams.put_payloads(client, stream, chunk)
    return sequences


def test_every_bad_record_is_one_dead_letter_and_every_valid_one_a_row(
    kinesis: Any, aws: dict[str, str], consumers: list[Consumer], tmp_path: Path
) -> None:
    stream = unique("e2e-badinput")
    arn = streams.create_stream(kinesis, stream, 1)  # one shard: "late" needs the watermark of the records before it
    cases = record_cases()
    payloads: list[tuple[str, bytes]] = []
    kinds: list[Case | int] = []

    def add_valid() -> None:
        n = len(payloads)
        payloads.append(("pk", valid_record(n)))
        kinds.append(n)

    for _ in range(10):
        add_valid()
    for case in cases:
        assert case.raw is not None
        payloads.append((f"pk-{case.name}"[:256], case.raw))
        kinds.append(case)
        add_valid()
    sequences = put_in_order(kinesis, stream, payloads)
    assert len(set(sequences)) == len(payloads)

    valid = {kind for kind in kinds if isinstance(kind, int)}
    accepted = [kind for kind in kinds if isinstance(kind, Case) and kind.reason is None]
    expected_letters = {
        sequence: (kind.reason, kind.raw, f"pk-{kind.name}")
        for sequence, kind in zip(sequences, kinds, strict=True)
        if isinstance(kind, Case) and kind.reason is not None
    }
    total = len(valid) + len(accepted) + len(expected_letters)

    store = tmp_path / "thyme.db"
    consumer = SampleConsumer(
        write_app(tmp_path, arn),
        store,
        unique("e2e-badinput"),
        "w1",
        {**os.environ, **aws},
        tmp_path / "consumer.log",
    )
    consumers.append(consumer)
    consumer.start()

    def landed() -> bool:
        if not consumer.alive():
            raise AssertionError(f"the consumer exited:\n{consumer.log_text()[-4000:]}")
        rows = StoreView(store).query("SELECT count(*) FROM ds_Sample_v1")
        letters = StoreView(store).query("SELECT count(*) FROM thyme_dead_letters")
        return bool(rows and letters) and rows[0][0] + letters[0][0] >= total

    wait_for(landed, 180, f"{total} records in the store", interval=0.5)

    letters = StoreView(store).query("SELECT sequence, reason, raw, partition_key FROM thyme_dead_letters")
    found = {sequence: (reason, bytes(raw), key) for sequence, reason, raw, key in letters}
    assert len(letters) == len(found) == len(expected_letters)  # each exactly once
    wrong: dict[str, tuple[str | None, str | None]] = {}
    for sequence, want in expected_letters.items():
        got = found.get(sequence)
        if got != want:
            kind = kinds[sequences.index(sequence)]
            assert isinstance(kind, Case)
            wrong[kind.name] = (None if got is None else got[0], want[0])
    assert wrong == {}, "case: (found, expected)"

    rows = StoreView(store).query("SELECT json_extract(row, '$.user_id'), json_extract(row, '$.n') FROM ds_Sample_v1")
    keys = Counter(str(key) for key, _ in rows)
    assert keys == Counter([f"v{n}" for n in valid] + [case.accepted_key for case in accepted])
    assert all(n == int(key[1:]) for key, n in rows if str(key).startswith("v"))

    log = consumer.log_text()
    assert "internal_error" not in log
    assert "unexpected error" not in log
    assert consumer.stop() == 0
    dead = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"batch applied"' in line]
    assert sum(sum(entry["dead_letters"].values()) for entry in dead) == len(expected_letters)
