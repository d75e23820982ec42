"""``thyme doctor``: is this host ready to run a consumer? One line per check, what to fix.

Checks, without starting anything or creating anything: Java (found, version), the daemon's
classpath (the pinned jars present and matching their hashes), the daemon's logging
configuration, the store (reachable, Thyme's tables current), and, given a dataset, what ``run``
checks before the daemon starts (credentials, the stream with the source's identity, the lease
table with the consumer's own) — no secret is printed, as everywhere.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from thyme.errors import ThymeError
from thyme.kinesis import entry, jars, launcher
from thyme.kinesis.launcher import RunOptions

MIN_JAVA: Final = 11
_JAVA_VERSION: Final = re.compile(r'version "(?P<version>[^"]+)"')


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    says: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.check}: {self.says}"


def diagnose(klass: type | None, options: RunOptions) -> list[Finding]:
    findings = [java(), classpath(), entry_point(), logging_configuration(), store(options.store_url)]
    if klass is not None:
        findings.append(aws(klass, options))
    return findings


def java() -> Finding:
    try:
        path = launcher.find_java()
        shown = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    except (ThymeError, OSError, subprocess.TimeoutExpired) as exc:
        return Finding("java", False, str(exc))
    match = _JAVA_VERSION.search(shown.stderr + shown.stdout)
    if match is None:
        return Finding("java", False, f"{path} -version printed no version; is it a Java runtime?")
    version = match["version"]
    if _major(version) < MIN_JAVA:
        return Finding(
            "java",
            False,
            f"{path} is Java {version}; the KCL daemon needs {MIN_JAVA} or newer: install one "
            "(e.g. apt-get install default-jre-headless) or set JAVA_HOME",
        )
    return Finding("java", True, f"Java {version} ({path})")


def classpath() -> Finding:
    lock = jars.read_lock()
    folder = launcher.classpath_folder()
    chosen = launcher.ENV_CLASSPATH if folder == _configured() else "the per-user cache"
    if folder == launcher.REPO_ROOT / ".kcl" / "lib":
        chosen = "this checkout's .kcl/lib"
    if chosen == "the per-user cache" and not jars.is_complete(folder, lock):
        if _auto_install_off():
            return Finding(
                "classpath",
                False,
                f"the KCL jars are not installed in {folder} and {launcher.ENV_AUTO_INSTALL}=0: "
                "run thyme kinesis install-jars",
            )
        return Finding(
            "classpath",
            True,
            f"not fetched yet into {folder}: the first run fetches the pinned {len(lock.jars)} jars "
            f"({lock.size / 1e6:.0f} MB), or run thyme kinesis install-jars now",
        )
    if not folder.is_dir():
        return Finding(
            "classpath", False, f"{folder} ({chosen}) does not exist: run thyme kinesis install-jars --into {folder}"
        )
    problems = jars.verify(folder, lock)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        return Finding(
            "classpath",
            False,
            f"{folder} ({chosen}) is not the pinned KCL {lock.kcl_version} classpath: {shown}. "
            f"Run thyme kinesis install-jars --into {folder}",
        )
    return Finding("classpath", True, f"KCL {lock.kcl_version}, {len(lock.jars)} jars match their hashes ({folder})")


def entry_point() -> Finding:
    """The daemon's entry point (``thyme.kinesis.entry``): compiled, or compilable here."""
    folder = launcher.classpath_folder()
    found = entry.compiled(folder)
    if found is not None:
        return Finding("entry point", True, f"compiled ({found}): the leader lock's timing is set")
    try:
        javac = entry.find_javac(launcher.find_java())
    except ThymeError:
        javac = entry.find_javac()
    if javac is not None:
        return Finding("entry point", True, f"not compiled yet: the first run compiles it with {javac} (~3 s)")
    return Finding(
        "entry point",
        False,
        f"not compiled in {folder} and no javac here: the stock daemon would run with KCL's 120 s leader lock "
        "(a dead leader's shards wait ~2 minutes); run thyme kinesis install-jars where a JDK is and ship that "
        "folder, or install a JDK",
    )


def logging_configuration() -> Finding:
    try:
        return Finding("daemon logging", True, str(launcher.logback_file()))
    except ThymeError as exc:
        return Finding("daemon logging", False, str(exc))


def store(url: str | None) -> Finding:
    from thyme.store import open_store, redact_url, sqlite_file, store_url

    resolved = store_url(url)
    shown = redact_url(resolved)
    path = sqlite_file(resolved)
    if path is not None and not path.exists():
        if path.parent.is_dir():
            return Finding("store", True, f"{shown} does not exist yet: the first run creates it")
        return Finding("store", False, f"{shown}: the folder {path.parent} does not exist; create it or fix the URL")
    try:
        open_store(resolved, create=False).close()
    except ThymeError as exc:
        return Finding("store", False, str(exc))
    return Finding("store", True, f"{shown} is reachable and its tables are current")


def aws(klass: type, options: RunOptions) -> Finding:
    from thyme.kinesis.preflight import Target, check_environment

    try:
        the_plan = launcher.plan(klass, options, open_the_store=False)
        if the_plan.connection is None:
            return Finding("aws", True, "no Kinesis connection to check")
        check_environment(Target(the_plan.connection, the_plan.properties, the_plan.sts_endpoint_url))
    except ThymeError as exc:
        return Finding("aws", False, str(exc))
    return Finding(
        "aws",
        True,
        f"credentials found; {the_plan.connection.kinesis_identity} can read stream "
        f"{the_plan.connection.stream_name} ({the_plan.connection.region}); lease table "
        f"{the_plan.properties.table_name} usable",
    )


def _major(version: str) -> int:
    """17 for "17.0.15", 8 for "1.8.0_392", 21 for "21-ea"."""
    first, _, rest = version.partition(".")
    if first == "1":
        first = rest.partition(".")[0]
    digits = re.match(r"\d+", first)
    return int(digits.group()) if digits else 0


def _configured() -> Path | None:
    value = os.environ.get(launcher.ENV_CLASSPATH)
    return Path(value) if value else None


def _auto_install_off() -> bool:
    return os.environ.get(launcher.ENV_AUTO_INSTALL, "").strip() == "0"
