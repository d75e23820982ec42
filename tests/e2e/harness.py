"""Running the real consumer (`thyme kinesis run`, the Java daemon, its children) in tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import streams  # noqa: E402

wait_for = streams.wait_for
THYME = str(Path(sys.executable).with_name("thyme"))

APP = """\
from datetime import datetime

from thyme import Field, Secret, dataset, field
from thyme.connectors import KinesisSource, source


@source(KinesisSource(stream_arn={arn!r}, init_position={position!r}{role}), max_lateness="5m")
@dataset(index=True)
class Clicks:
    user_id: Field[str] = field(key=True)
    n: Field[int] = field()
    page: Field[str] = field()
    timestamp: Field[datetime] = field(timestamp=True)
"""


def json_lines(text: str) -> Iterator[dict[str, Any]]:
    """The JSON log lines (the children's and the launcher's) in a consumer's log ``text``."""
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry


def logged(text: str, message: str) -> list[dict[str, Any]]:
    """The JSON log entries in ``text`` whose message is ``message``."""
    return [e for e in json_lines(text) if e.get("message") == message]


def log_per_start(consumer: Consumer) -> list[str]:
    """A consumer's log split per start (``Consumer.start`` writes a marker line each time)."""
    return consumer.log_text().split("\n===== start ")[1:]


def wait_active(client: Any, stream: str) -> None:
    """Until the stream is ACTIVE again (after a create, split or merge)."""
    wait_for(
        lambda: (
            client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE"
        ),
        60,
        f"stream {stream} to be ACTIVE",
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_app(folder: Path, arn: str, position: str = "trim_horizon", role_env: str | None = None) -> Path:
    """A user's module with the ``Clicks`` dataset on ``arn``; returns its path."""
    role = "" if role_env is None else f", role_arn=Secret(env={role_env!r})"
    path = folder / f"app_{uuid.uuid4().hex[:6]}.py"
    path.write_text(APP.format(arn=arn, position=position, role=role))
    return path


def click(n: int, user: str, at: datetime, page: str | None = None) -> dict[str, Any]:
    return {"user_id": user, "n": n, "page": page or f"/p{n}", "timestamp": at.isoformat()}


def now() -> datetime:
    return datetime.now(UTC)


class Consumer:
    """One ``thyme kinesis run`` process, as a user starts it."""

    def __init__(
        self,
        app: Path,
        store: Path,
        application: str,
        worker_id: str,
        env: Mapping[str, str],
        log: Path,
        store_url: str | None = None,
    ) -> None:
        self.app, self.store, self.application, self.worker_id = app, store, application, worker_id
        self.store_url = store_url or f"sqlite:///{store}"
        self.env = dict(env)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.extra_args: list[str] = []
        """More ``thyme kinesis run`` options, e.g. ``["--metrics", "emf"]``."""
        self.dataset = "Clicks"
        """The dataset class in ``app`` to run."""

    def command(self) -> list[str]:
        return [
            THYME,
            "kinesis",
            "run",
            f"{self.app}:{self.dataset}",
            "--store",
            self.store_url,
            "--application-name",
            self.application,
            "--worker-id",
            self.worker_id,
            *self.extra_args,
        ]

    def start(self) -> Consumer:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts} at {now().isoformat()}\n".encode())
            self.process = subprocess.Popen(self.command(), env=self.env, stdout=out, stderr=out, cwd=self.app.parent)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM, as a container stop or Ctrl-C does; wait for the graceful exit."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill9(self) -> list[int]:
        """kill -9 the launcher, the JVM and every child at once (a crashed host)."""
        assert self.process is not None
        victims = [self.process.pid, *streams.descendants(self.process.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(30)
        return victims

    def children(self) -> list[int]:
        """PIDs of the record processor children (python -m record_processor)."""
        assert self.process is not None
        found = []
        for pid in streams.descendants(self.process.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"record_processor" in cmd:
                found.append(pid)
        return found

    def status(self) -> dict[str, Any]:
        """``thyme kinesis status --json`` for this consumer's dataset, store and application."""
        out = subprocess.run(
            [
                THYME,
                "kinesis",
                "status",
                f"{self.app}:{self.dataset}",
                "--store",
                self.store_url,
                "--application-name",
                self.application,
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=self.env,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.alive():
            assert self.process is not None
            # Read the tree first: once the launcher is dead, its JVM is re-parented to init and
            # no longer found under it (it would be left running, with its children).
            tree = [self.process.pid, *streams.descendants(self.process.pid)]
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait(30)


class Ledger:
    """What the test produced, and what the store must hold: each valid record once, each
    rejected record once as a dead letter with its reason."""

    def __init__(self) -> None:
        self.valid: set[int] = set()
        self.rejected: Counter[str] = Counter()

    def expect_valid(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.valid.update(int(e["n"]) for e in events)
        return events

    def expect_rejected(self, reason: str, count: int = 1) -> None:
        self.rejected[reason] += count

    @property
    def total(self) -> int:
        return len(self.valid) + sum(self.rejected.values())


class StoreView:
    """Read-only queries on the consumer's SQLite store file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql``; none while the file or the table does not exist yet."""
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            db.close()

    def applied(self) -> Counter[int]:
        """How many times each ``n`` was applied."""
        return Counter(int(n) for (n,) in self.query("SELECT json_extract(row, '$.n') FROM ds_Clicks_v1"))

    def dead_letters(self) -> Counter[str]:
        return Counter(
            {r: int(c) for r, c in self.query("SELECT reason, count(*) FROM thyme_dead_letters GROUP BY reason")}
        )

    def total(self) -> int:
        return sum(self.applied().values()) + sum(self.dead_letters().values())

    def shards(self) -> dict[str, dict[str, Any]]:
        rows = self.query("SELECT shard, sequence, watermark_us, ended, applied, dead_lettered FROM thyme_shards")
        return {
            s: {"sequence": q, "watermark_us": w, "ended": bool(e), "applied": a, "dead": d}
            for s, q, w, e, a, d in rows
        }

    def wait_total(self, expected: int, timeout: float, consumer: Consumer | None = None) -> None:
        def done() -> bool:
            if consumer is not None and consumer.process is not None and consumer.process.poll() is not None:
                raise AssertionError(
                    f"the consumer exited ({consumer.process.returncode}):\n{consumer.log_text()[-4000:]}"
                )
            return self.total() >= expected

        try:
            wait_for(done, timeout, f"{expected} records in the store", interval=0.5)
        except TimeoutError as exc:
            log = consumer.log_text()[-4000:] if consumer is not None else ""
            raise AssertionError(f"{exc}: store holds {self.total()}\n{log}") from exc

    def check(self, ledger: Ledger) -> None:
        """Every valid record exactly once, every rejected one exactly once as a dead letter."""
        applied = self.applied()
        duplicates = {n: c for n, c in applied.items() if c > 1}
        assert duplicates == {}, f"applied more than once: {duplicates}"
        assert set(applied) == ledger.valid, (
            f"lost: {sorted(ledger.valid - set(applied))[:20]}, unexpected: {sorted(set(applied) - ledger.valid)[:20]}"
        )
        assert self.dead_letters() == ledger.rejected


def check_lookups(app: Path, store_path: Path, valid: list[dict[str, Any]], base: datetime) -> None:
    """Lookups of ``Clicks`` in ``app`` from the store: the newest version per user is the highest
    ``n`` of that user, as of now and as of 100 ms after ``base``; an unknown key is None."""
    from thyme.loader import load_dataset
    from thyme.serving import lookup

    klass = load_dataset(f"{app}:Clicks")
    url = f"sqlite:///{store_path}"
    for user in ("u0", "u7", "u19"):
        found = lookup(klass, user, store=url)
        assert found is not None
        assert found.n == max(e["n"] for e in valid if e["user_id"] == user)
        older = lookup(klass, user, at=base + timedelta(milliseconds=100), store=url)
        assert older is not None
        assert older.n == max(e["n"] for e in valid if e["user_id"] == user and e["n"] <= 100)
    assert lookup(klass, "nobody", store=url) is None


def events(start: int, count: int, users: int = 10, at: datetime | None = None) -> list[dict[str, Any]]:
    """``count`` valid click events numbered from ``start``, a millisecond apart in event time."""
    base = at or now()
    return [click(n, f"u{n % users}", base + timedelta(milliseconds=n - start)) for n in range(start, start + count)]


def produce(client: Any, stream: str, items: list[dict[str, Any]] | list[tuple[str, bytes]]) -> list[str]:
    payloads = [i if isinstance(i, tuple) else (str(i["user_id"]), json.dumps(i).encode()) for i in items]
    return streams.put_payloads(client, stream, payloads)


def produce_slowly(
    client: Any, stream: str, items: list[dict[str, Any]], per_second: float, stop: Callable[[], bool]
) -> None:
    for start in range(0, len(items), 10):
        if stop():
            return
        produce(client, stream, items[start : start + 10])
        time.sleep(10 / per_second)
