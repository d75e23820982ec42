"""Prefilled stores for the benchmarks, cached on disk so that re-runs do not prefill again.

* SQLite: ``<cache>/sqlite-runtables-<rows>.db`` is filled once through the store's own ``apply`` (as
  months of ingestion would leave it) and never written again; each benchmark invocation
  works on one copy of it.
* PostgreSQL: a cluster in ``<cache>/pg`` (``initdb`` once, run as the ``postgres`` OS user
  when we are root, listening on 127.0.0.1 only, durable settings: ``fsync`` and
  ``synchronous_commit`` on), with one database ``prefill_<rows>`` per size, used as the
  template of a working copy per invocation. The server is stopped by ``pg_ctl`` (its PID file).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Final
from urllib.parse import quote

from processor import prefill

PREFILL_SEED: Final = 20240502
SQLITE_LAYOUT: Final = "feeds"
"""Part of the cached file's name: a store written by an older layout is prefilled again, not upgraded."""
PG_USER: Final = "bench"
PG_PASSWORD: Final = "bench-only-on-127.0.0.1"
PG_AS: Final = "postgres"


def _log(text: str) -> None:
    print(f"  {text}", flush=True)


def _done_marker(path: Path) -> Path:
    return path.with_name(path.name + ".complete")


def prefilled_sqlite(cache: Path, rows: int) -> Path:
    """The pristine prefilled SQLite file with ``rows`` rows (made on first use)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"sqlite-{SQLITE_LAYOUT}-{rows}.db"
    if _done_marker(path).exists():
        return path
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    _log(f"prefilling {rows:,} rows into {path} (once; cached) ...")
    done = prefill(f"sqlite:///{path}", rows, PREFILL_SEED)
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    _done_marker(path).write_text(f"{done.seconds:.1f}\n")
    _log(f"prefilled {rows:,} rows in {done.seconds:.0f} s")
    return path


def with_peer_table(path: Path) -> None:
    """Add the peer's plain table to a pristine file once: the same rows, indexed on (key, ts)."""
    marker = path.with_name(path.name + ".peer")
    if marker.exists():
        return
    _log(f"adding the peer's plain table to {path.name} (once; cached) ...")
    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.execute("DROP TABLE IF EXISTS peer_clicks")
    db.execute(
        "CREATE TABLE peer_clicks (rid INTEGER PRIMARY KEY, user_id TEXT NOT NULL, ts INTEGER NOT NULL, "
        "row TEXT NOT NULL)"
    )
    for (run,) in db.execute("SELECT run FROM ds_SourcedClick_v1_runs").fetchall():
        db.execute(  # an entry is in two runs while a merge copies it: the first one wins
            "INSERT OR IGNORE INTO peer_clicks (rid, user_id, ts, row) SELECT i.rid, i.key, i.ts, r.row "
            f"FROM ds_SourcedClick_v1_run{run} AS i JOIN ds_SourcedClick_v1 AS r ON r.rid = i.rid"
        )
    db.execute("CREATE INDEX peer_clicks_by_key ON peer_clicks (user_id, ts)")
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    marker.write_text(f"{time.perf_counter() - started:.1f}\n")
    _log(f"peer table added in {time.perf_counter() - started:.0f} s")


def working_sqlite(pristine: Path, work: Path, name: str | None = None) -> str:
    """A copy of the pristine file in ``work`` (replacing an earlier copy of that name); its URL."""
    target = work / (name or pristine.name)
    for stale in (target, target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(pristine, target)
    os.sync()  # the copy's dirty pages must not be written back during a timed run
    return f"sqlite:///{target}"


def file_mib(url: str) -> float:
    path = Path(url.removeprefix("sqlite:///"))
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} was not found (scripts/setup.sh installs it)")
    return str(candidates[-1])


class CachedPostgres:
    """A PostgreSQL cluster whose data directory persists in the cache between invocations."""

    def __init__(self, cache: Path) -> None:
        self.base = cache / "pg"
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = 0
        self.prefix = ["runuser", "-u", PG_AS, "--"] if os.geteuid() == 0 else []
        self.working: list[str] = []

    def _chown(self, path: Path) -> None:
        if self.prefix:
            shutil.chown(path, PG_AS, PG_AS)

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self.prefix, *argv], capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stdout}{done.stderr}\n{tail}")

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            shutil.rmtree(self.base, ignore_errors=True)
            self.base.mkdir(parents=True)
            self._chown(self.base)
            self.base.chmod(0o700)
            pwfile = self.base / "pwfile"
            pwfile.write_text(PG_PASSWORD + "\n")
            self._chown(pwfile)
            self._run(
                _find_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                PG_USER,
                f"--pwfile={pwfile}",
                "-A",
                "scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--no-locale",
            )
            pwfile.unlink()
        self.port = _free_port()
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.base} -c shared_buffers=256MB -c max_wal_size=4GB "
            "-c max_connections=50"
        )
        self._run(
            _find_bin("pg_ctl"), "start", "-w", "-t", "120", "-D", str(self.data), "-l", str(self.log), "-o", options
        )
        _log(f"PostgreSQL on 127.0.0.1:{self.port} (data in {self.data})")
        for name in self._databases():
            if name.startswith("work_"):
                self._admin(f'DROP DATABASE IF EXISTS "{name}"')

    def stop(self) -> None:
        for name in self.working:
            try:
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                _log(f"could not drop {name}: {exc}")
        self.working.clear()
        if (self.data / "postmaster.pid").exists():
            self._run(_find_bin("pg_ctl"), "stop", "-w", "-t", "120", "-m", "fast", "-D", str(self.data))

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}:{quote(PG_PASSWORD, safe='')}@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(f"host={self.base} port={self.port} user={PG_USER} dbname=postgres", autocommit=True) as c:
            c.execute(statement)

    def _databases(self) -> list[str]:
        import psycopg

        with psycopg.connect(f"host={self.base} port={self.port} user={PG_USER} dbname=postgres", autocommit=True) as c:
            return [str(r[0]) for r in c.execute("SELECT datname FROM pg_database").fetchall()]

    def prefilled(self, rows: int) -> str:
        """The name of the template database holding ``rows`` prefilled rows (made on first use)."""
        name = f"prefill_{rows}"
        marker = self.base / f"{name}.complete"
        if marker.exists() and name in self._databases():
            return name
        self._admin(f'DROP DATABASE IF EXISTS "{name}"')
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        _log(f"prefilling {rows:,} rows into PostgreSQL database {name} (once; cached) ...")
        done = prefill(self.url(name), rows, PREFILL_SEED)
        import psycopg

        with psycopg.connect(self.url(name), autocommit=True) as c:
            c.execute("VACUUM (ANALYZE)")
            c.execute("CHECKPOINT")
        marker.write_text(f"{done.seconds:.1f}\n")
        _log(f"prefilled {rows:,} rows in {done.seconds:.0f} s")
        return name

    def working_copy(self, rows: int, replaces: str | None = None) -> str:
        """A new database copied from the prefilled template; ``replaces`` (a URL from here) is dropped."""
        if replaces is not None:
            old = replaces.rsplit("/", 1)[1]
            self._admin(f'DROP DATABASE IF EXISTS "{old}" WITH (FORCE)')
            self.working.remove(old)
        template = self.prefilled(rows)
        name = f"work_{rows}_{os.getpid()}_{len(self.working)}_{time.monotonic_ns()}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY file_copy')
        self.working.append(name)
        self._admin("CHECKPOINT")
        os.sync()
        return self.url(name)
