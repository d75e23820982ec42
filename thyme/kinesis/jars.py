"""The KCL MultiLangDaemon's classpath: the pinned jar set, fetched and checked without Maven.

``kcl-classpath.lock`` (beside this module, shipped in the wheel) lists every jar the daemon
needs by Maven coordinates, sha256 and size; it is written by ``scripts/lock_kcl_jars.py``
from ``pom.xml``'s resolution, and ``tests/test_jars.py`` checks it against the developers'
``.kcl/lib``, so developers, CI, the Docker image and pip users run the same jars.

:func:`install` fetches the missing jars from a Maven repository (Maven Central by default,
``$THYME_MAVEN_REPOSITORY_URL`` for a mirror) into a folder: each one into a ``.part`` file
(resumed from where it stopped when the server allows ranges), checked against its pinned
sha256 and size, then renamed into place; a stamp naming the lock is written last, so a folder
is either complete for this lock or treated as incomplete. Two processes installing into the
same folder take turns (a file lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from thyme.errors import ThymeError

LOCK_FILE: Final = Path(__file__).with_name("kcl-classpath.lock")
ENV_REPOSITORY: Final = "THYME_MAVEN_REPOSITORY_URL"
ENV_CACHE: Final = "THYME_KCL_CACHE"
DEFAULT_REPOSITORY: Final = "https://repo1.maven.org/maven2"
STAMP: Final = "classpath.complete"
ATTEMPTS: Final = 4
TIMEOUT_S: Final = 30.0
_CHUNK: Final = 1 << 16

log = logging.getLogger("thyme.kinesis")


class JarError(ThymeError):
    """A jar cannot be fetched or does not match its pinned hash; the message names it and the fix."""


@dataclass(frozen=True)
class Jar:
    group: str
    artifact: str
    version: str
    classifier: str
    sha256: str
    size: int

    @property
    def coordinates(self) -> str:
        return ":".join([self.group, self.artifact, self.version, *([self.classifier] if self.classifier else [])])

    @property
    def file_name(self) -> str:
        return f"{self.artifact}-{self.version}{'-' + self.classifier if self.classifier else ''}.jar"

    @property
    def path(self) -> str:
        """Its path in a Maven repository."""
        return f"{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.file_name}"


@dataclass(frozen=True)
class Lock:
    jars: tuple[Jar, ...]
    digest: str
    """sha256 of the lock file: names the set (the cache folder, the stamp)."""

    @property
    def kcl_version(self) -> str:
        return next(j.version for j in self.jars if j.artifact == "amazon-kinesis-client-multilang")

    @property
    def size(self) -> int:
        return sum(j.size for j in self.jars)


def read_lock(path: Path = LOCK_FILE) -> Lock:
    text = path.read_text(encoding="utf-8")
    jars = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            coordinates, sha256, size = line.split()
            group, artifact, version, *classifier = coordinates.split(":")
            jars.append(Jar(group, artifact, version, classifier[0] if classifier else "", sha256, int(size)))
        except ValueError:
            raise JarError(f"{path}:{number}: not a lock line: {line!r}") from None
    return Lock(tuple(jars), hashlib.sha256(text.encode()).hexdigest())


def default_folder(lock: Lock, environ: dict[str, str] | None = None) -> Path:
    """``$THYME_KCL_CACHE``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)/thyme-kinesis/kcl-<version>-<lock>."""
    env = os.environ if environ is None else environ
    if env.get(ENV_CACHE):
        return Path(env[ENV_CACHE])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "thyme-kinesis" / f"kcl-{lock.kcl_version}-{lock.digest[:12]}"


def is_complete(folder: Path, lock: Lock) -> bool:
    """The folder was completed for this lock (its stamp), and every jar is there at its size."""
    stamp = folder / STAMP
    if not stamp.is_file() or stamp.read_text().strip() != lock.digest:
        return False
    return all((folder / j.file_name).is_file() and (folder / j.file_name).stat().st_size == j.size for j in lock.jars)


def verify(folder: Path, lock: Lock) -> list[str]:
    """One line per jar that is missing or differs from its pinned hash (empty: all good)."""
    problems = []
    for jar in lock.jars:
        path = folder / jar.file_name
        if not path.is_file():
            problems.append(f"{jar.file_name}: missing")
        elif _sha256(path) != jar.sha256:
            problems.append(f"{jar.file_name}: sha256 differs from the pinned {jar.sha256[:16]}…")
    return problems


def install(
    folder: Path,
    lock: Lock,
    repository: str | None = None,
    *,
    opener: Callable[[urllib.request.Request, float], object] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Make ``folder`` hold exactly the locked jars (fetching what is missing); returns it."""
    base = (repository or os.environ.get(ENV_REPOSITORY) or DEFAULT_REPOSITORY).rstrip("/")
    if not base.startswith(("https://", "http://")):
        raise JarError(f"{ENV_REPOSITORY}: not an http(s) URL (got {base!r}). Use e.g. {DEFAULT_REPOSITORY}.")
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        if is_complete(folder, lock):
            return folder
        (folder / STAMP).unlink(missing_ok=True)
        todo = [j for j in lock.jars if not _good(folder / j.file_name, j)]
        if todo:
            log.info(
                "fetching the KCL classpath",
                extra={
                    "fields": {
                        "jars": len(todo),
                        "bytes": sum(j.size for j in todo),
                        "into": str(folder),
                        "from": base,
                    }
                },
            )
        began = time.monotonic()
        for jar in todo:
            _fetch(jar, folder, base, opener or _open, sleep)
        known = {j.file_name for j in lock.jars}
        for stray in folder.glob("*.jar"):  # a folder reused across locks holds this lock's jars only
            if stray.name not in known:
                stray.unlink()
        (folder / STAMP).write_text(lock.digest + "\n")
        if todo:
            log.info(
                "KCL classpath ready",
                extra={"fields": {"jars": len(lock.jars), "seconds": round(time.monotonic() - began, 1)}},
            )
    return folder


def _good(path: Path, jar: Jar) -> bool:
    return path.is_file() and path.stat().st_size == jar.size and _sha256(path) == jar.sha256


def _fetch(
    jar: Jar,
    folder: Path,
    base: str,
    opener: Callable[[urllib.request.Request, float], object],
    sleep: Callable[[float], None],
) -> None:
    url = f"{base}/{jar.path}"
    part = folder / (jar.file_name + ".part")
    for attempt in range(1, ATTEMPTS + 1):
        have = part.stat().st_size if part.is_file() else 0
        if have > jar.size:
            part.unlink()
            have = 0
        request = urllib.request.Request(url, headers={"User-Agent": "thyme-kinesis"})  # noqa: S310 - http(s) only
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = opener(request, TIMEOUT_S)
            with contextlib.closing(response) as body:  # type: ignore[type-var]
                status = getattr(body, "status", 200)
                mode = "ab" if have and status == 206 else "wb"  # 200: the server ignored the range
                with part.open(mode) as out:
                    while chunk := body.read(_CHUNK):  # type: ignore[attr-defined]
                        out.write(chunk)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # the range starts at the end: the part is whole (or wrong; the hash says)
                pass
            elif exc.code in (404, 403, 401, 410):
                raise JarError(
                    f"cannot fetch {jar.coordinates} from {url} (HTTP {exc.code}): the repository does not serve "
                    f"it. Set {ENV_REPOSITORY} to a Maven repository or mirror that does, or put the jars in a "
                    f"folder named by THYME_KCL_CLASSPATH (thyme kinesis install-jars --into DIR on a machine "
                    f"that can reach one)."
                ) from None
            elif attempt == ATTEMPTS:
                raise _network_error(jar, url, exc) from None
            else:
                sleep(min(8.0, 0.5 * 2**attempt))
                continue
        except (urllib.error.URLError, OSError) as exc:
            if attempt == ATTEMPTS:
                raise _network_error(jar, url, exc) from None
            sleep(min(8.0, 0.5 * 2**attempt))
            continue
        if part.stat().st_size < jar.size and attempt < ATTEMPTS:
            continue  # cut short: resume
        digest = _sha256(part)
        if digest != jar.sha256 or part.stat().st_size != jar.size:
            part.unlink()
            raise JarError(
                f"{jar.coordinates} from {url} does not match its pinned sha256 (got {digest[:16]}…, pinned "
                f"{jar.sha256[:16]}…): the repository or a proxy served another file. Nothing was installed "
                f"from it; check {ENV_REPOSITORY} (now {base}) and try again."
            )
        os.replace(part, folder / jar.file_name)
        return


def _network_error(jar: Jar, url: str, exc: BaseException) -> JarError:
    reason = getattr(exc, "reason", None) or exc
    return JarError(
        f"cannot fetch {jar.coordinates} from {url} ({type(exc).__name__}: {reason}) after {ATTEMPTS} attempts: "
        f"check the network or proxy and run again (what is fetched is kept), set {ENV_REPOSITORY} to a "
        f"reachable mirror, or put the jars in a folder named by THYME_KCL_CLASSPATH."
    )


def _open(request: urllib.request.Request, timeout: float) -> object:
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - https or a mirror the user set


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
