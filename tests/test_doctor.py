"""``thyme doctor`` without a stack: Java, the classpath, the store, each one line with the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from thyme.cli import main
from thyme.kinesis import doctor, jars, launcher

REPO = Path(__file__).resolve().parent.parent


def test_a_ready_host_is_all_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("THYME_KCL_CLASSPATH", raising=False)
    assert main(["doctor", "--store", f"sqlite:///{tmp_path / 'thyme.db'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ok    java",
        "ok    classpath",
        "ok    entry point",
        "ok    daemon logging",
        "ok    store",
    ]
    assert lines[1] == f"ok    classpath: KCL 3.1.3, 132 jars match their hashes ({REPO / '.kcl' / 'lib'})"
    assert lines[4] == f"ok    store: sqlite:///{tmp_path / 'thyme.db'} does not exist yet: the first run creates it"
    assert not (tmp_path / "thyme.db").exists()


def test_without_the_entry_point_or_a_compiler_it_says_what_failover_costs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thyme.kinesis import entry

    monkeypatch.setenv("THYME_KCL_CLASSPATH", str(tmp_path))
    monkeypatch.setenv("THYME_KCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(entry, "find_javac", lambda java=None: None)
    finding = doctor.entry_point()
    assert not finding.ok
    assert "KCL's 120 s leader lock (a dead leader's shards wait ~2 minutes)" in finding.says


@pytest.mark.parametrize(
    ("printed", "verdict"),
    [
        ('openjdk version "17.0.15" 2025-04-15', "ok    java: Java 17.0.15 ({java})"),
        ('openjdk version "21-ea" 2023-09-19', "ok    java: Java 21-ea ({java})"),
        (
            'java version "1.8.0_392"',
            "FAIL  java: {java} is Java 1.8.0_392; the KCL daemon needs 11 or newer: install one "
            "(e.g. apt-get install default-jre-headless) or set JAVA_HOME",
        ),
        ("Segmentation fault", "FAIL  java: {java} -version printed no version; is it a Java runtime?"),
    ],
)
def test_java_is_found_and_new_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, printed: str, verdict: str
) -> None:
    java = tmp_path / "java"
    java.write_text(f"#!/bin/sh\necho '{printed}' >&2\n")
    java.chmod(0o755)
    monkeypatch.setattr(launcher, "find_java", lambda: str(java))
    assert doctor.java().line() == verdict.format(java=java)


def test_a_classpath_that_is_not_the_pinned_one_says_which_jars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "kcl"
    folder.mkdir()
    lock = jars.read_lock()
    for jar in lock.jars[:-2]:
        shutil.copyfile(REPO / ".kcl" / "lib" / jar.file_name, folder / jar.file_name)
    (folder / lock.jars[0].file_name).write_bytes(b"not the jar")
    monkeypatch.setenv("THYME_KCL_CLASSPATH", str(folder))
    first, *_, before_last, last = lock.jars
    assert doctor.classpath().line() == (
        f"FAIL  classpath: {folder} (THYME_KCL_CLASSPATH) is not the pinned KCL 3.1.3 classpath: "
        f"{first.file_name}: sha256 differs from the pinned {first.sha256[:16]}…; {before_last.file_name}: missing; "
        f"{last.file_name}: missing. Run thyme kinesis install-jars --into {folder}"
    )


def test_a_cache_not_yet_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "REPO_ROOT", tmp_path / "not-a-checkout")
    monkeypatch.delenv("THYME_KCL_CLASSPATH", raising=False)
    monkeypatch.setenv("THYME_KCL_CACHE", str(tmp_path / "cache"))
    assert doctor.classpath().line() == (
        f"ok    classpath: not fetched yet into {tmp_path / 'cache'}: the first run fetches the pinned 132 jars "
        "(79 MB), or run thyme kinesis install-jars now"
    )
    monkeypatch.setenv("THYME_KCL_AUTO_INSTALL", "0")
    assert doctor.classpath().line() == (
        f"FAIL  classpath: the KCL jars are not installed in {tmp_path / 'cache'} and THYME_KCL_AUTO_INSTALL=0: run "
        "thyme kinesis install-jars"
    )


def test_a_store_that_cannot_be_opened(tmp_path: Path) -> None:
    assert doctor.store(f"sqlite:///{tmp_path / 'typo' / 'x.db'}").line() == (
        f"FAIL  store: sqlite:///{tmp_path / 'typo' / 'x.db'}: the folder {tmp_path / 'typo'} does not exist; create "
        "it or fix the URL"
    )
    found = doctor.store("postgresql://thyme:s3cret@127.0.0.1:9/none")
    assert not found.ok
    assert "s3cret" not in found.line()
    assert found.line().startswith("FAIL  store: ")
