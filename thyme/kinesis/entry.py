"""The daemon's entry point: ``ThymeMultiLangDaemon`` (the leader lock's timing set), compiled once.

``java/ThymeMultiLangDaemon.java`` (shipped in the wheel) starts KCL's MultiLangDaemon the way its own
``main`` does and sets the leader lock's lease and heartbeat, which KCL core 3.2+ can take but
the daemon's properties file cannot express (see the Java file). It is compiled with ``javac``
against the daemon's classpath into a folder named by the source's hash: inside the classpath
folder when that is writable (``thyme kinesis install-jars``, a Docker build stage), else in the
per-user cache. A host with a Java runtime but no compiler (a JRE-only image that skipped
``install-jars``) runs the stock MultiLangDaemon instead, with KCL's 120 s lock, and the
launcher says so in one line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

from thyme.kinesis import jars

log = logging.getLogger("thyme.kinesis")

SOURCE: Final = Path(__file__).with_name("java") / "ThymeMultiLangDaemon.java"
MAIN_CLASS: Final = "thyme.kinesis.ThymeMultiLangDaemon"
STOCK_MAIN_CLASS: Final = "software.amazon.kinesis.multilang.MultiLangDaemon"
_STAMP: Final = "compiled.ok"
COMPILE_TIMEOUT_S: Final = 120.0
KCL_LEADER_LOCK_S: Final = 120
"""The leader lock's lease in KCL 3 (``LeaseManagementConfig``), renewed every 30 s."""
DEFAULT_LEADER_LOCK_S: Final = 10
"""Ours, renewed every 3.3 s: a dead leader's lock changes hands in ~10 s instead of ~2 minutes."""
MIN_LEADER_LOCK_S: Final = 6


class CompileError(Exception):
    """javac failed; the message holds its output."""


def folder_name() -> str:
    return f"thyme-kcl-daemon-{hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]}"


def candidates(classpath: Path) -> list[Path]:
    """Where the compiled class may be: beside the jars, then the per-user cache."""
    cache = jars.default_folder(jars.read_lock())
    return [classpath / folder_name(), cache / folder_name()]


def compiled(classpath: Path) -> Path | None:
    """The folder holding the compiled entry point for this source, if one is complete."""
    for folder in candidates(classpath):
        if (folder / _STAMP).is_file():
            return folder
    return None


def find_javac(java: str | None = None) -> str | None:
    """``javac`` beside ``java`` (a JDK), else under ``$JAVA_HOME``, else on ``PATH``."""
    options = []
    if java:
        options.append(Path(java).resolve().with_name("javac"))
    if os.environ.get("JAVA_HOME"):
        options.append(Path(os.environ["JAVA_HOME"], "bin", "javac"))
    for option in options:
        if os.access(option, os.X_OK):
            return str(option)
    return shutil.which("javac")


def compile_into(folder: Path, classpath: Path, javac: str) -> Path:
    """Compile the entry point against ``classpath``'s jars into ``folder`` (replaced whole:
    built beside it, then renamed, so a reader never sees half of it)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        done = subprocess.run(  # noqa: S603 - javac, our source, our classpath
            [javac, "-nowarn", "-encoding", "UTF-8", "-cp", f"{classpath}/*", "-d", str(build), str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise CompileError((done.stdout + done.stderr).strip()[-2000:])
        (build / _STAMP).write_text(SOURCE.name + "\n")
        try:
            os.replace(build, folder)
        except OSError:
            if not (folder / _STAMP).is_file():  # not another process's finished copy: a real failure
                raise
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return folder


def ensure(classpath: Path, java: str | None = None) -> Path | None:
    """The compiled entry point for ``classpath``, compiling it when a JDK is here; None (after
    one warning line) when it cannot be had: the stock daemon runs, with KCL's lock timing."""
    found = compiled(classpath)
    if found is not None:
        return found
    javac = find_javac(java)
    if javac is None:
        log.warning(
            "no Java compiler (javac) here, so the daemon runs with KCL's own leader lock (120 s): if the host "
            "holding it dies, its shards wait ~2 minutes for another host; install a JDK, or run "
            "thyme kinesis install-jars where one is and ship that folder (THYME_KCL_CLASSPATH)",
            extra={"fields": {"event": "leader_lock_default", "classpath": str(classpath)}},
        )
        return None
    errors = []
    for folder in candidates(classpath):
        try:
            return compile_into(folder, classpath, javac)
        except OSError as exc:  # a read-only classpath folder: try the cache
            errors.append(f"{folder}: {exc}")
        except (CompileError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{folder}: {exc}")
            break  # the jars, not the place: another folder fails the same way
    log.warning(
        "could not compile the daemon's entry point, so it runs with KCL's own leader lock (120 s): if the host "
        "holding it dies, its shards wait ~2 minutes for another host",
        extra={"fields": {"event": "leader_lock_default", "errors": errors}},
    )
    return None
