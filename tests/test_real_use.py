"""Correct under real use: lookups from threads and forked processes, dataset versions and their
shapes, and a dataset's state belonging to the stream it was read from."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Optional

import pytest

from record_processor.envelope import InputRecord
from record_processor.worker import ShardWorker
from tests.factories import ClickEvent, feed_of, schema_of
from thyme import Field, dataset, field, lookup, lookup_many
from thyme.connectors.source import source_spec
from thyme.errors import ConfigError, SchemaChangedError
from thyme.kinesis.properties import build_properties, default_application_name
from thyme.loader import load_dataset
from thyme.records.lateness import LatenessPolicy
from thyme.schema import DatasetSchema, compare_shapes, dataset_schema
from thyme.store import Batch, Position, Row, ShardState, Store, open_store

SCHEMA = schema_of(ClickEvent)
STREAM_A = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
STREAM_B = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks-eu"
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def click_row(key: str, n: int, moment: datetime) -> Row:
    data = {"user_id": key, "page": f"/p{n}", "timestamp": moment.isoformat().replace("+00:00", "Z")}
    return (key, us(moment), json.dumps(data))


def shape(**fields: str) -> DatasetSchema:
    """A ``Clicks`` schema with a str key ``user_id``, a timestamp ``ts`` and ``fields`` (name → type
    as written in Python, e.g. ``"Optional[list[int]]"``)."""
    types = {"Optional": Optional, "str": str, "int": int, "list": list, "datetime": datetime}
    annotations: dict[str, Any] = {"user_id": Field[str], "ts": Field[datetime]}
    annotations |= {name: Annotated[eval(spelling, types), "field"] for name, spelling in fields.items()}
    klass = type(
        "Clicks", (), {"__annotations__": annotations, "user_id": field(key=True), "ts": field(timestamp=True)}
    )
    found = dataset_schema(dataset(klass))
    assert found is not None
    return found


# -- shapes: what a store can follow at the same version --------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"page": "str"}, {"page": "str"}, "same"),
        ({"page": "str", "n": "int"}, {"n": "int", "page": "str"}, "same"),  # order does not matter
        ({"page": "str"}, {"page": "Optional[str]"}, "widens"),
        ({"page": "str"}, {"page": "str", "referrer": "Optional[str]"}, "widens"),
        ({"page": "Optional[str]"}, {"page": "str"}, "narrows"),  # an older copy of the code
        ({"page": "str", "referrer": "Optional[str]"}, {"page": "str"}, "narrows"),
        ({"page": "str"}, {"page": "int"}, "field page: type str became int"),
        ({"page": "str"}, {"page": "str", "n": "int"}, "field n: a new required field (the rows stored lack it)"),
        ({"page": "str", "n": "int"}, {"page": "str"}, "field n: a required field was removed"),
        (
            {"page": "list[int]"},
            {"page": "list[Optional[int]]"},
            "field page: type list[int] became list[Optional[int]]",
        ),
        (
            {"page": "Optional[str]", "n": "int"},
            {"page": "str", "n": "Optional[int]"},
            "some fields were widened and others narrowed at once",
        ),
    ],
)
def test_shape_changes(before: dict[str, str], after: dict[str, str], expected: str) -> None:
    assert compare_shapes(shape(**before), shape(**after)) == expected


def test_the_store_widens_in_place_and_refuses_what_rows_cannot_follow(store: Store) -> None:
    v1 = shape(page="str")
    feed = feed_of(v1)
    assert (
        store.apply(
            feed,
            Batch(
                "s",
                ShardState(Position(1)),
                [("u1", us(T0), '{"user_id":"u1","ts":"2024-05-01T12:00:00Z","page":"/a"}')],
            ),
            None,
        )
        is None
    )
    widened = shape(page="str", referrer="Optional[str]")
    store.ensure_dataset(widened)  # a new optional field: same table, same state
    assert store.lookup(widened, "u1", us(T0)) is not None
    store.ensure_dataset(v1)  # the old code still runs beside it (a rolling deploy)
    with pytest.raises(SchemaChangedError) as info:
        store.ensure_dataset(shape(page="int"))
    assert str(info.value) == (
        f"dataset Clicks version 1: its fields differ from the ones the store {store.url} holds for that version "
        "(field page: type str became int). Increase the version (@dataset(version=2)): a new version is a "
        "dataset of its own, fed from the source's init_position"
    )
    with pytest.raises(SchemaChangedError, match=r"field referrer: type Optional\[str\] became Optional\[int\]"):
        store.lookup(shape(page="str", referrer="Optional[int]"), "u1", us(T0))  # reads check it too
    # and a new version has nothing of version 1: rows, shard state, dead letters
    v2 = shape(page="int").replace(version=2)
    store.ensure_dataset(v2)
    assert store.lookup(v2, "u1", us(T0)) is None
    assert store.shard_state(feed_of(v2), "s") is None


def test_lookups_refuse_a_dataset_not_served_by_key(tmp_path: Path) -> None:
    @dataset
    class Unindexed:
        user_id: Field[str] = field(key=True)
        timestamp: Field[datetime] = field(timestamp=True)

    with pytest.raises(ConfigError) as info:
        lookup(Unindexed, "u1", store=f"sqlite:///{tmp_path / 'x.db'}")
    assert str(info.value) == (
        "lookup(Unindexed): the dataset is not served by key. "
        "Declare it @dataset(index=True, ...) to serve lookups (no new version needed)."
    )


def test_each_version_is_its_own_kcl_application() -> None:
    assert default_application_name("ClickEvent", "clicks") == "thyme-ClickEvent-clicks"  # as before versions
    assert default_application_name("ClickEvent", "clicks", 2) == "thyme-ClickEvent-v2-clicks"
    from tests.factories import SourcedClick

    spec = SourcedClick.__thyme_source__  # type: ignore[attr-defined]
    props = build_properties(spec.connector.resolve(), dataset="SourcedClick", version=3, python="/p", worker_id="w")
    assert (props.application_name, props.table_name) == ("thyme-SourcedClick-v3-clicks",) * 2


# -- a dataset's state belongs to its stream -----------------------------------------------------


def records(start: int, moments: list[datetime], shard_key: str = "pk") -> list[InputRecord]:
    return [
        InputRecord(
            json.dumps({"user_id": f"u{n}", "page": "/", "timestamp": m.isoformat()}).encode(),
            shard_key,
            str(1000 + n),
            0,
            int(m.timestamp() * 1000),
        )
        for n, m in enumerate(moments, start)
    ]


def test_another_stream_never_inherits_positions_or_watermarks(store: Store) -> None:
    """The same dataset and store pointed at a second stream: shard ids repeat, state must not."""
    policy = LatenessPolicy(timedelta(minutes=5), timedelta(hours=1))
    first = ShardWorker(feed_of(SCHEMA, STREAM_A), policy, store)
    first.initialize("shardId-000000000000")
    done = first.process(records(0, [T0 + timedelta(hours=2)] * 10))
    assert done.applied == 10
    # the second stream's records are an hour older and their sequence numbers lower: on the
    # first stream's state they would be late, or skipped as replays
    second = ShardWorker(feed_of(SCHEMA, STREAM_B), policy, store)
    second.initialize("shardId-000000000000")
    outcome = second.process(records(0, [T0 + timedelta(seconds=i) for i in range(20)]))
    assert (outcome.applied, dict(outcome.dead_letters), outcome.replayed) == (20, {}, 0)
    a, b = store.shards(feed_of(SCHEMA, STREAM_A)), store.shards(feed_of(SCHEMA, STREAM_B))
    assert [(s.shard, s.applied) for s in a] == [("shardId-000000000000", 10)]
    assert [(s.shard, s.applied) for s in b] == [("shardId-000000000000", 20)]
    assert b[0].state.watermark_us == us(T0 + timedelta(seconds=19))


# -- lookups from threads and processes ----------------------------------------------------------

WRITER_BATCHES = 40
KEYS = [f"u{i}" for i in range(50)]


def _write(url: str, stream: str) -> None:
    """A writer process: WRITER_BATCHES batches, each a new version (page /p<batch>) of every key."""
    db = open_store(url)
    feed = feed_of(SCHEMA, stream)
    expect = None
    for batch in range(1, WRITER_BATCHES + 1):
        rows = [click_row(k, batch, T0 + timedelta(seconds=batch)) for k in KEYS]
        state = ShardState(Position(batch), us(T0 + timedelta(seconds=batch)))
        assert db.apply(feed, Batch("shardId-0", state, rows), expect) is None
        expect = state
    db.close()


class Readers:
    """``threads`` reader threads, each calling ``read(me)`` (which returns ``(key, n)`` pairs it
    saw) until a writer process has applied every batch and each reader has read ``least`` times.
    Records the failures and whether any reader saw a key go back in time."""

    def __init__(self, url: str, read: Callable[[int, int], list[tuple[str, int]]], least: int) -> None:
        self.url, self.read, self.least = url, read, least
        self.errors: list[BaseException] = []
        self.counts = [0] * 8
        self._stop = threading.Event()

    def _run(self, me: int) -> None:
        newest: dict[str, int] = {}
        try:
            while not self._stop.is_set() or self.counts[me] < self.least:
                for key, n in self.read(me, self.counts[me]):
                    assert n >= newest.get(key, 0), f"a lookup of {key} went back in time"
                    newest[key] = n
                self.counts[me] += 1
        except BaseException as exc:
            self.errors.append(exc)

    def run_while_writing(self) -> None:
        writer = multiprocessing.get_context("spawn").Process(target=_write, args=(self.url, STREAM_A))
        readers = [threading.Thread(target=self._run, args=(i,)) for i in range(len(self.counts))]
        for t in readers:
            t.start()
        writer.start()
        writer.join(120)
        self._stop.set()
        for t in readers:
            t.join(120)
        assert writer.exitcode == 0
        assert self.errors == []
        assert min(self.counts) >= self.least


@pytest.fixture
def seeded(store_url: str) -> Iterator[str]:
    db = open_store(store_url)
    rows = [click_row(k, 0, T0) for k in KEYS]
    assert db.apply(feed_of(SCHEMA), Batch("shardId-seed", ShardState(Position(1)), rows), None) is None
    db.close()
    yield store_url


@pytest.mark.parametrize("how", ["url", "shared store", "environment"])
def test_lookups_from_many_threads_while_a_child_writes(seeded: str, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a threaded model server does: 8 threads, single and batched lookups, as a writer
    process applies batch after batch. Every lookup answers; none goes back in time."""
    shared = open_store(seeded) if how == "shared store" else None
    target: Store | str | None = shared if shared is not None else seeded if how == "url" else None
    if how == "environment":
        monkeypatch.setenv("THYME_STORE_URL", seeded)

    def read(me: int, count: int) -> list[tuple[str, int]]:
        if count % 2:
            found = [lookup(ClickEvent, KEYS[(me * 7 + count) % len(KEYS)], store=target)]
        else:
            found = lookup_many(ClickEvent, KEYS[me : me + 5], store=target)
        assert all(row is not None for row in found)
        return [(row.user_id, int(row.page.removeprefix("/p"))) for row in found if row is not None]

    Readers(seeded, read, least=200).run_while_writing()
    if shared is not None:
        shared.close()
    final = lookup_many(ClickEvent, [*KEYS, "nobody"], store=seeded)
    assert [None if r is None else r.page for r in final] == [f"/p{WRITER_BATCHES}"] * len(KEYS) + [None]


def _lookup_in_child(store: Store, queue: Any) -> None:
    found = lookup(ClickEvent, "u1", store=store)
    queue.put(None if found is None else found.page)


def test_a_store_opened_before_fork_works_in_the_child(seeded: str) -> None:
    """A pre-forking server (gunicorn --preload) opens the store, then forks its workers."""
    db = open_store(seeded)
    assert lookup(ClickEvent, "u1", store=db) is not None  # the parent's connection is open
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_lookup_in_child, args=(db, queue))
    child.start()
    child.join(60)
    assert (child.exitcode, queue.get(timeout=10)) == (0, "/p0")
    assert lookup(ClickEvent, "u1", store=db) is not None  # and the parent's still works
    db.close()


def test_lookup_many_answers_in_order_from_one_snapshot(store: Store) -> None:
    rows = [click_row("u1", 1, T0), click_row("u2", 2, T0), click_row("u1", 3, T0 + timedelta(minutes=1))]
    assert store.apply(feed_of(SCHEMA), Batch("s", ShardState(Position(1)), rows), None) is None
    found = lookup_many(ClickEvent, ["u2", "nobody", "u1", "u1"], store=store)
    assert [None if r is None else r.page for r in found] == ["/p2", None, "/p3", "/p3"]
    earlier = ClickEvent.lookup_many(["u1", "u2"], at=T0, store=store)  # type: ignore[attr-defined]
    assert [r.page for r in earlier] == ["/p1", "/p2"]
    assert lookup_many(ClickEvent, [], store=store) == []
    with pytest.raises(ConfigError, match=r"lookup_many\(ClickEvent, keys\): expects a list of keys"):
        lookup_many(ClickEvent, "u1", store=store)


# -- the README's serving example: a threaded WSGI service, without the stream's settings --------

SERVING = Path(__file__).resolve().parent.parent / "examples" / "serving"


def test_the_serving_example_answers_many_clients_while_a_child_writes(
    seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the consumer's module attaches the stream to the dataset the service imports alone
    monkeypatch.setenv("MY_KINESIS_STREAM_ARN", STREAM_A)
    monkeypatch.delitem(sys.modules, "clicks", raising=False)  # imported afresh, as by a new consumer
    consumer = load_dataset(f"{SERVING / 'consumer.py'}:ClickEvent")
    assert dataset_schema(consumer) == SCHEMA
    spec = source_spec(consumer)
    assert spec is not None and spec.connector.stream_arn == STREAM_A

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MY_KINESIS_", "THYME_KINESIS_"))}
    env["THYME_STORE_URL"] = seeded
    service = subprocess.Popen(
        [sys.executable, str(SERVING / "serve.py"), "--port", "0"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert service.stderr is not None
        banner = service.stderr.readline()
        assert banner.startswith("serving lookups on http://127.0.0.1:"), banner
        base = banner.split()[-1]

        def get(query: str) -> tuple[int, Any]:
            try:
                with urllib.request.urlopen(f"{base}?{query}", timeout=30) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        def client(me: int, count: int) -> list[tuple[str, int]]:
            keys = KEYS[(me + count) % 45 :][:5]
            status, body = get("&".join(f"user_id={k}" for k in keys))
            assert status == 200, body
            assert list(body) == keys
            assert all(row["user_id"] == key for key, row in body.items())
            return [(key, int(row["page"].removeprefix("/p"))) for key, row in body.items()]

        Readers(seeded, client, least=50).run_while_writing()
        status, body = get("user_id=u1&user_id=nobody&at=2024-05-01T12:00:05Z")
        assert (status, body) == (
            200,
            {"u1": {"user_id": "u1", "page": "/p5", "timestamp": "2024-05-01 12:00:05+00:00"}, "nobody": None},
        )
        status, body = get("user_id=u1&at=yesterday")
        assert (status, body) == (400, {"error": "Invalid isoformat string: 'yesterday'"})
    finally:
        service.terminate()
        service.wait(30)


def open_connections(store_url: str) -> int:
    """Connections this process holds to the store: open files of the SQLite database, or
    PostgreSQL sessions of this database named ``thyme`` (ours)."""
    if store_url.startswith("sqlite:"):
        path = store_url.removeprefix("sqlite:///").split("?")[0]
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == os.path.realpath(path))
    import psycopg

    with psycopg.connect(store_url.replace("application_name=thyme", ""), autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'thyme'"
        ).fetchone()
    assert found is not None
    return int(found[0])


def test_threads_that_come_and_go_share_a_few_connections(seeded: str) -> None:
    """A server that starts a thread per request: 300 threads, 6 at a time, one lookup each."""
    db = open_store(seeded)
    failures: list[BaseException] = []

    def one(key: str) -> None:
        try:
            assert lookup(ClickEvent, key, store=db) is not None
        except BaseException as exc:
            failures.append(exc)

    for start in range(0, 300, 6):
        wave = [threading.Thread(target=one, args=(KEYS[(start + i) % len(KEYS)],)) for i in range(6)]
        for t in wave:
            t.start()
        for t in wave:
            t.join(30)
    assert failures == []
    assert 1 <= open_connections(seeded) <= 6
    db.close()
    # a closed connection's server process leaves pg_stat_activity a moment after the client hangs up
    deadline = time.monotonic() + 10
    while open_connections(seeded) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_connections(seeded) == 0
