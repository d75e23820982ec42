"""The daemon's classpath without Maven: the pinned lock, fetching over real HTTP, hashes, resuming."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from thyme.kinesis import jars, launcher
from thyme.kinesis.jars import Jar, JarError, Lock

REPO = Path(__file__).resolve().parent.parent


def test_the_lock_is_the_classpath_maven_resolves() -> None:
    """One source of truth: the developers' .kcl/lib (Maven, pom.xml) is exactly the pinned set."""
    lock = jars.read_lock()
    lib = REPO / ".kcl" / "lib"
    assert lib.is_dir(), "run scripts/setup.sh first"
    assert sorted(j.file_name for j in lock.jars) == sorted(p.name for p in lib.glob("*.jar")), (
        "pom.xml's classpath changed: run scripts/lock_kcl_jars.py and commit thyme/kinesis/kcl-classpath.lock"
    )
    assert jars.verify(lib, lock) == []
    assert lock.kcl_version == "3.1.3"
    multilang = next(j for j in lock.jars if j.artifact == "amazon-kinesis-client-multilang")
    assert multilang.path == (
        "software/amazon/kinesis/amazon-kinesis-client-multilang/3.1.3/amazon-kinesis-client-multilang-3.1.3.jar"
    )


class Repository(http.server.BaseHTTPRequestHandler):
    """A Maven repository over HTTP that honours ranges; ``files`` maps paths to bytes."""

    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[tuple[str, str | None]]] = []
    cut_after: ClassVar[int | None] = None  # serve only this many bytes of a whole file once (a dropped connection)

    def do_GET(self) -> None:
        path = self.path.removeprefix("/maven2/")
        type(self).requests.append((path, self.headers.get("Range")))
        body = self.files.get(path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
        else:
            self.send_response(200)
        chunk = body[start:]
        if type(self).cut_after is not None and start == 0:
            chunk = chunk[: type(self).cut_after]
            type(self).cut_after = None
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        self.wfile.write(chunk)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@pytest.fixture
def repository() -> Iterator[tuple[str, type[Repository]]]:
    handler = type("Served", (Repository,), {"files": {}, "requests": [], "cut_after": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/maven2", handler
    finally:
        server.shutdown()
        server.server_close()


def fake_lock(handler: type[Repository], sizes: tuple[int, ...] = (1000, 250_000, 7)) -> Lock:
    found = []
    for n, size in enumerate(sizes):
        body = bytes((n * 31 + i) % 251 for i in range(size))
        jar = Jar("org.example", f"part{n}", "1.0", "", hashlib.sha256(body).hexdigest(), size)
        handler.files[jar.path] = body
        found.append(jar)
    daemon = Jar(
        "software.amazon.kinesis", "amazon-kinesis-client-multilang", "3.1.3", "", hashlib.sha256().hexdigest(), 0
    )
    handler.files[daemon.path] = b""
    return Lock((*found, daemon), "f" * 64)


def test_install_fetches_checks_and_keeps_a_complete_folder(
    tmp_path: Path, repository: tuple[str, type[Repository]]
) -> None:
    url, served = repository
    lock = fake_lock(served)
    folder = tmp_path / "kcl"
    (folder).mkdir()
    (folder / "stale-0.1.jar").write_bytes(b"from another lock")
    assert jars.install(folder, lock, url) == folder
    assert jars.is_complete(folder, lock)
    assert jars.verify(folder, lock) == []
    assert sorted(p.name for p in folder.glob("*.jar")) == sorted(j.file_name for j in lock.jars)
    assert not list(folder.glob("*.part"))
    fetched = len(served.requests)
    assert fetched == len(lock.jars)
    jars.install(folder, lock, url)  # complete: nothing fetched again
    assert len(served.requests) == fetched
    (folder / lock.jars[1].file_name).write_bytes(b"tampered")
    assert jars.verify(folder, lock) == [
        f"{lock.jars[1].file_name}: sha256 differs from the pinned {lock.jars[1].sha256[:16]}…"
    ]
    assert not jars.is_complete(folder, lock)  # sizes are checked at every start
    jars.install(folder, lock, url)
    assert jars.verify(folder, lock) == []


def test_a_dropped_download_resumes_where_it_stopped(tmp_path: Path, repository: tuple[str, type[Repository]]) -> None:
    url, served = repository
    lock = fake_lock(served, sizes=(250_000,))
    served.cut_after = 100_000
    jars.install(tmp_path, lock, url, sleep=lambda s: None)
    assert jars.verify(tmp_path, lock) == []
    assert (lock.jars[0].path, "bytes=100000-") in served.requests


def test_a_file_that_is_not_the_pinned_one_is_refused(tmp_path: Path, repository: tuple[str, type[Repository]]) -> None:
    url, served = repository
    lock = fake_lock(served)
    bad = lock.jars[0]
    served.files[bad.path] = b"x" * bad.size
    with pytest.raises(JarError) as info:
        jars.install(tmp_path, lock, url)
    assert str(info.value).startswith(
        f"org.example:part0:1.0 from {url}/{bad.path} does not match its pinned sha256 (got "
    )
    assert not (tmp_path / bad.file_name).exists()
    assert not (tmp_path / jars.STAMP).exists()


def test_a_repository_without_the_jar_says_what_to_do(tmp_path: Path, repository: tuple[str, type[Repository]]) -> None:
    url, served = repository
    lock = fake_lock(served)
    del served.files[lock.jars[2].path]
    with pytest.raises(JarError) as info:
        jars.install(tmp_path, lock, url)
    assert str(info.value) == (
        f"cannot fetch org.example:part2:1.0 from {url}/{lock.jars[2].path} (HTTP 404): the repository does not "
        "serve it. Set THYME_MAVEN_REPOSITORY_URL to a Maven repository or mirror that does, or put the jars in a "
        "folder named by THYME_KCL_CLASSPATH (thyme kinesis install-jars --into DIR on a machine that can reach one)."
    )
    with pytest.raises(JarError, match=r"^cannot fetch org\.example:part0:1\.0 from http://127\.0\.0\.1:9/m/"):
        jars.install(tmp_path / "unreachable", lock, "http://127.0.0.1:9/m", sleep=lambda s: None)
    with pytest.raises(JarError, match="not an http"):
        jars.install(tmp_path, lock, "file:///etc")


def test_run_fetches_the_pinned_set_on_first_use_unless_told_not_to(
    tmp_path: Path, repository: tuple[str, type[Repository]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, served = repository
    lock = fake_lock(served)
    monkeypatch.setattr(launcher, "REPO_ROOT", tmp_path / "not-a-checkout")
    monkeypatch.setattr(jars, "read_lock", lambda: lock)
    monkeypatch.delenv("THYME_KCL_CLASSPATH", raising=False)
    monkeypatch.setenv("THYME_KCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("THYME_MAVEN_REPOSITORY_URL", url)
    monkeypatch.setenv("THYME_KCL_AUTO_INSTALL", "0")
    with pytest.raises(launcher.LaunchError) as info:
        launcher._classpath()
    assert str(info.value) == (
        f"the KCL jars are not installed in {tmp_path / 'cache'}: run thyme kinesis install-jars (4 jars, 0 MB "
        "from Maven Central or $THYME_MAVEN_REPOSITORY_URL), or set THYME_KCL_CLASSPATH to a folder holding them."
    )
    assert served.requests == []
    monkeypatch.delenv("THYME_KCL_AUTO_INSTALL")
    assert launcher._classpath() == tmp_path / "cache"
    assert jars.is_complete(tmp_path / "cache", lock)
    assert launcher.kcl_version() == ("3.1.3", tmp_path / "cache")


def test_a_folder_installed_for_another_release_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "opt-kcl-lib"
    folder.mkdir()
    (folder / "amazon-kinesis-client-multilang-3.1.3.jar").write_bytes(b"jar")
    (folder / jars.STAMP).write_text("the digest of an older lock\n")
    monkeypatch.setenv("THYME_KCL_CLASSPATH", str(folder))
    with pytest.raises(launcher.LaunchError) as info:
        launcher._classpath()
    assert str(info.value).startswith(f"the KCL jars in {folder} were installed for another release")
    assert f"run thyme kinesis install-jars --into {folder} (it fetches what changed)" in str(info.value)
    (folder / jars.STAMP).unlink()  # a folder someone filled by hand: trusted, as before
    assert launcher._classpath() == folder
