"""The bad-input corpus (``tests/badinput/``) through the decoder and through the real child.

Every case becomes exactly one dead letter with its exact reason and its bytes intact (or, for
the boundary cases marked accepted, exactly one row); none fails the batch, and the valid
records around them are applied. The child is driven over pipes exactly as the daemon drives
it (compact JSON lines, ``"action"`` first), against both store backends.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import pytest

from tests.badinput import HERE, STREAM, T0, Case, load_corpus, record_cases, valid_record, write_app
from tests.child import checkpoint, checkpoint_reply, initialize, start_child, status
from tests.factories import b64, feed_of, seq
from thyme.loader import load_dataset
from thyme.records import LatenessPolicy, RecordRules
from thyme.schema import DatasetSchema, dataset_schema
from thyme.store import open_store

REPO = Path(__file__).resolve().parent.parent
ARRIVAL_MS = int(T0.timestamp() * 1000) + 60_000
FAR_US = int((T0 + timedelta(days=1)).timestamp() * 1_000_000)
SHARD = "shardId-000000000007"
CORPUS = load_corpus()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_app(tmp_path_factory.mktemp("badinput-app"))


@pytest.fixture(scope="module")
def schema(app: Path) -> DatasetSchema:
    found = dataset_schema(load_dataset(f"{app}:Sample"))
    assert found is not None
    return found


def test_manifest_lists_every_case_file_once() -> None:
    names = [c.name for c in CORPUS]
    assert len(names) == len(set(names))
    manifest = json.loads((HERE / "manifest.json").read_text(encoding="utf-8"))["cases"]
    listed = sorted(e["file"] for e in manifest if "file" in e)
    assert listed == sorted(f"cases/{p.name}" for p in (HERE / "cases").iterdir())
    for entry in manifest:
        assert len({"file", "generate", "base64"} & set(entry)) == 1, entry
        assert entry["why"], entry
    reasons = {c.reason for c in CORPUS}
    for required in ("invalid_base64", "invalid_utf8", "invalid_json", "not_an_object", "too_deeply_nested", "late"):
        assert required in reasons
    assert "future_timestamp" in reasons
    assert None in reasons  # boundary cases that must stay accepted


@pytest.mark.parametrize("case", record_cases(), ids=lambda c: c.name)
def test_decoder_gives_each_case_its_reason(case: Case, schema: DatasetSchema) -> None:
    """In process, one case at a time (the child test below checks them all in one batch)."""
    assert case.raw is not None
    rules = RecordRules(schema, LatenessPolicy(timedelta(minutes=5), timedelta(hours=1)))
    watermark = int(T0.timestamp() * 1_000_000)  # judged against a watermark at T0, as in the batch
    result = rules.judge(case.raw, ARRIVAL_MS, watermark)
    if isinstance(result, tuple):
        assert (case.name, None) == (case.name, case.reason)
        assert result[0] == case.accepted_key
    else:
        assert (case.name, result) == (case.name, case.reason)


# -- the real child over pipes ----------------------------------------------------------------


def daemon_line(records: list[dict[str, Any]], compact: bool = True) -> str:
    """A ``processRecords`` line as the daemon (Jackson) writes it: compact, ``action`` first."""
    message = {"action": "processRecords", "records": records, "millisBehindLatest": 0}
    return json.dumps(message, separators=(",", ":")) if compact else json.dumps(message)


def message(n: int, data: str, key: str = "pk") -> dict[str, Any]:
    return {
        "action": "record",
        "data": data,
        "partitionKey": key,
        "sequenceNumber": seq(n),
        "subSequenceNumber": 0,
        "approximateArrivalTimestamp": ARRIVAL_MS,
    }


class Child:
    """``python -m record_processor`` for the ``Sample`` dataset, as the daemon starts it."""

    def __init__(self, app: Path, store_url: str, folder: Path) -> None:
        self.stderr = folder / "child.stderr"
        self._lines: queue.Queue[str] | None = None
        self.process = start_child(store_url, self.stderr, "--give-up-after", "5", dataset=f"{app}:Sample")

    def send(self, line: str) -> dict[str, Any]:
        """Write one line; the child's next protocol message (fails at once if the child exits)."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        if self._lines is None:
            self._lines = queue.Queue()
            threading.Thread(target=self._pump, args=(self.process.stdout, self._lines), daemon=True).start()
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                reply = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self._lines.empty():
                    raise AssertionError(
                        f"the child exited ({self.process.returncode}):\n{self.stderr.read_text()[-3000:]}"
                    ) from None
                continue
            if reply.strip():
                return json.loads(reply)  # type: ignore[no-any-return]
        raise AssertionError(f"no reply within 60 s:\n{self.stderr.read_text()[-3000:]}")

    @staticmethod
    def _pump(stdout: IO[str], lines: queue.Queue[str]) -> None:
        for text in iter(stdout.readline, ""):
            lines.put(text)

    def finish(self) -> str:
        """Close stdin (the daemon going away); the child must exit 0. Returns its stderr."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(60)
        rest = [] if self._lines is None else list(self._lines.queue)
        assert "".join(rest).strip() == ""  # nothing unanswered on the protocol stream
        log = self.stderr.read_text()
        assert self.process.returncode == 0, log[-3000:]
        return log

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture
def child(app: Path, store_url: str, tmp_path: Path) -> Iterator[Child]:
    started = Child(app, store_url, tmp_path)
    yield started
    started.kill()


def interleaved(
    cases: list[Case], valid_between: bool = True
) -> tuple[list[dict[str, Any]], dict[int, Case], list[int]]:
    """Ten valid records, then each case followed by a valid one: (messages, case by number,
    valid numbers)."""
    messages: list[dict[str, Any]] = []
    by_number: dict[int, Case] = {}
    valid: list[int] = []

    def add_valid() -> None:
        n = len(messages) + 1
        messages.append(message(n, b64(valid_record(n))))
        valid.append(n)

    for _ in range(10):
        add_valid()
    for case in cases:
        n = len(messages) + 1
        data = b64(case.raw) if case.raw is not None else case.base64
        assert data is not None
        messages.append(message(n, data, key=f"pk-{case.name}"))
        by_number[n] = case
        if valid_between:
            add_valid()
    return messages, by_number, valid


def check_store(store_url: str, schema: DatasetSchema, by_number: dict[int, Case], valid: list[int]) -> None:
    """Each bad case exactly once as a dead letter (reason, bytes, partition key); each valid
    record and each accepted case exactly once as a row."""
    store = open_store(store_url)
    try:
        letters = store.dead_letters(schema, limit=100_000)
        found = {(d.sequence, d.reason, d.raw, d.partition_key, d.shard) for d in letters}
        expected = {
            (seq(n), c.reason, c.stored_bytes, f"pk-{c.name}", SHARD)
            for n, c in by_number.items()
            if c.reason is not None
        }
        assert len(letters) == len(expected)
        missing = {(s, r, pk) for s, r, _, pk, _ in expected - found}
        unexpected = {(s, r, pk) for s, r, _, pk, _ in found - expected}
        assert (missing, unexpected) == (set(), set())
        accepted = [c for c in by_number.values() if c.reason is None]
        assert store.count_rows(schema) == len(valid) + len(accepted)
        for n in valid:
            row = store.lookup(schema, f"v{n}", FAR_US)
            assert row is not None
            assert json.loads(row)["n"] == n
        for case in accepted:
            assert store.lookup(schema, case.accepted_key, FAR_US) is not None, case.name
        state = store.shard_state(feed_of(schema, STREAM), SHARD)
        assert state is not None
        assert state.position is not None
        assert str(state.position) == f"{seq(max([*by_number, *valid]))}/0"
    finally:
        store.close()


def test_corpus_through_the_real_child(child: Child, store_url: str, schema: DatasetSchema) -> None:
    """Every case in one batch, each between valid records: one checkpoint, nothing lost."""
    messages, by_number, valid = interleaved(CORPUS)
    assert child.send(initialize(SHARD)) == status("initialize")
    assert child.send(daemon_line(messages)) == checkpoint(seq(len(messages)), 0)
    assert child.send(checkpoint_reply(seq(len(messages)))) == status("processRecords")
    # the same batch again (a redelivery after a lost checkpoint): all skipped, nothing doubled
    assert child.send(daemon_line(messages)) == checkpoint(seq(len(messages)), 0)
    assert child.send(checkpoint_reply(seq(len(messages)))) == status("processRecords")
    log = child.finish()
    check_store(store_url, schema, by_number, valid)
    entries = [json.loads(line) for line in log.splitlines()]  # every stderr line is a JSON log line
    assert [e["level"] for e in entries if e["level"] not in ("info", "debug")] == []
    applied = [e for e in entries if e["message"] == "batch applied"]
    accepted = sum(1 for c in by_number.values() if c.reason is None)
    assert [(e["received"], e["applied"], e["replayed"]) for e in applied] == [
        (len(messages), len(valid) + accepted, 0),
        (len(messages), 0, len(messages)),
    ]
    counted = sum(applied[0]["dead_letters"].values())
    assert counted == len(by_number) - accepted
    assert not any(reason.startswith("internal_error") for reason in applied[0]["dead_letters"])


BASE64_CASES = [c for c in CORPUS if c.raw is None]
LONE_SURROGATE = Case("base64_lone_surrogate", "invalid_base64", "a lone surrogate escape in data", None, "eyJ\ud800")


@pytest.mark.parametrize("compact", [True, False], ids=["as-the-daemon-writes", "spaced-json"])
def test_invalid_base64_in_any_line_is_a_dead_letter(
    app: Path, store_url: str, schema: DatasetSchema, tmp_path: Path, compact: bool
) -> None:
    """Whatever the daemon's line looks like, bad base64 in ``data`` (even text that is no
    Unicode string, a lone surrogate) dead-letters that record only. A spaced line goes
    through amazon-kclpy's own parser rather than the msgspec one."""
    child = Child(app, store_url, tmp_path)
    try:
        messages, by_number, valid = interleaved([*BASE64_CASES, LONE_SURROGATE])
        assert child.send(initialize(SHARD)) == status("initialize")
        assert child.send(daemon_line(messages, compact)) == checkpoint(seq(len(messages)), 0)
        assert child.send(checkpoint_reply(seq(len(messages)))) == status("processRecords")
        child.finish()
    finally:
        child.kill()
    store = open_store(store_url)
    try:
        letters = {d.sequence: (d.reason, d.raw) for d in store.dead_letters(schema)}
        assert store.count_rows(schema) == len(valid)
    finally:
        store.close()
    lone = next(n for n, c in by_number.items() if c is LONE_SURROGATE)
    # the text as delivered, losslessly (a lone surrogate has no UTF-8 form: kept as "surrogatepass")
    assert letters.pop(seq(lone)) == ("invalid_base64", "eyJ\ud800".encode("utf-8", "surrogatepass"))
    del by_number[lone]
    assert letters == {seq(n): ("invalid_base64", c.stored_bytes) for n, c in by_number.items()}


def test_a_partition_key_with_nul_is_kept_in_a_dead_letter(child: Child, store_url: str, schema: DatasetSchema) -> None:
    """Kinesis partition keys are any Unicode string; the dead letter keeps a NUL in one (a
    PostgreSQL text column cannot hold it) instead of failing the batch over and over."""
    records = [
        message(1, b64(valid_record(1))),
        message(2, b64(b"{not json"), key="pk\u0000nul"),
        message(3, b64(valid_record(3))),
    ]
    assert child.send(initialize(SHARD)) == status("initialize")
    assert child.send(daemon_line(records)) == checkpoint(seq(3), 0)
    assert child.send(checkpoint_reply(seq(3))) == status("processRecords")
    child.finish()
    store = open_store(store_url)
    try:
        assert [(d.sequence, d.reason, d.raw) for d in store.dead_letters(schema)] == [
            (seq(2), "invalid_json", b"{not json")
        ]
        assert store.count_rows(schema) == 2
    finally:
        store.close()
