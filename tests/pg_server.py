"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary directory, ``postgres``
on 127.0.0.1 on a free port, stopped by ``pg_ctl stop -m fast`` (the PID in its data directory).

PostgreSQL refuses to run as root; CI and the development machines run as root, so the server
runs as the ``postgres`` OS user (``runuser``) with the directory owned by it. Host connections
need a password (scram-sha-256), so the URLs the tests use carry one and its redaction is
exercised; the unix socket (in the temporary directory) trusts the local superuser for admin.

When the binaries are missing this fails loudly (never skips): ``scripts/setup.sh`` installs them.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Final
from urllib.parse import quote

USER: Final = "thyme"
PASSWORD: Final = "pg-t3st:p@ss/w0rd"
"""Has characters that must be percent-encoded in a URL, so both forms can be looked for."""
RUN_AS: Final = "postgres"


class PostgresMissingError(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def find_bin(name: str) -> str:
    """``name`` (``initdb``, ``pg_ctl``) on PATH or under ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    if candidates:
        return candidates[-1]
    raise PostgresMissingError(
        f"PostgreSQL's {name} was not found on PATH or under /usr/lib/postgresql/*/bin: the PostgreSQL "
        "store tests need a local server. Run scripts/setup.sh (it installs PostgreSQL from Debian)."
    )


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory. ``start``/``stop`` may be repeated."""

    def __init__(self) -> None:
        self.initdb = find_bin("initdb")
        self.pg_ctl = find_bin("pg_ctl")
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                import pwd

                pwd.getpwnam(RUN_AS)
            except KeyError:
                raise PostgresMissingError(
                    f"running as root, the test server must run as the {RUN_AS!r} OS user, which does not exist. "
                    "Run scripts/setup.sh (it installs PostgreSQL from Debian, which creates it)."
                ) from None
            self._prefix = ["runuser", "-u", RUN_AS, "--"]
        self.base = Path(tempfile.mkdtemp(prefix="thyme-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = 0
        self._dbs = itertools.count(1)
        self._chown(self.base)
        self.base.chmod(0o700)
        pwfile = self.base / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        self._chown(pwfile)
        self._run(
            self.initdb,
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "-A",
            "scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        pwfile.unlink()

    def _chown(self, path: Path) -> None:
        if self._prefix:
            shutil.chown(path, RUN_AS, RUN_AS)

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._prefix, *argv], cwd=self.base, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{log[-3000:]}"
            )

    def start(self) -> None:
        """Start (or restart) the server; on the same port as before if it ran already."""
        for attempt in range(5):
            port = self.port or _free_port()
            options = (
                f"-p {port} -h 127.0.0.1 -k {self.base} -c fsync=off -c full_page_writes=off "
                "-c synchronous_commit=off -c max_connections=200 -c shared_buffers=64MB"
            )
            try:
                self._run(
                    self.pg_ctl, "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options
                )
            except RuntimeError:
                if self.port or attempt == 4:
                    raise
                continue  # the free port was taken meanwhile: try another
            self.port = port
            return

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are ended); no-op if it is not running."""
        if (self.data / "postmaster.pid").exists():
            self._run(self.pg_ctl, "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))

    def __enter__(self) -> PgServer:
        """Start the server; on exit it is stopped and its files removed (even if the start failed)."""
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        """A TCP URL with the user and (percent-encoded) password."""
        return f"postgresql://{USER}:{quote(password, safe='')}@127.0.0.1:{self.port}/{database}"

    def admin_conninfo(self, database: str = "postgres") -> str:
        """Over the unix socket, trusted: for creating databases."""
        return f"host={self.base} port={self.port} user={USER} dbname={database}"

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t{next(self._dbs)}"
        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY file_copy')
        return self.url(name)
