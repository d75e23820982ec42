"""The daemon's entry point (thyme/kinesis/java/ThymeMultiLangDaemon.java): compiled with the JDK
here against the pinned classpath, its settings checked by the JVM before any AWS call, and the
launcher's fallback to the stock daemon when no compiler is at hand."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from thyme.kinesis import entry, jars, launcher

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / ".kcl" / "lib"


def test_kcl_core_is_the_one_with_the_lock_settings_under_the_3_1_3_daemon() -> None:
    versions = {j.artifact: j.version for j in jars.read_lock().jars}
    assert versions["amazon-kinesis-client-multilang"] == "3.1.3"
    assert versions["amazon-kinesis-client"] == "3.3.0"  # 3.2.0+: the lock's lease and heartbeat settable


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    javac = entry.find_javac(launcher.find_java())
    assert javac is not None, "the developers' machine has a JDK (scripts/setup.sh needs Maven and a JDK)"
    return entry.compile_into(tmp_path_factory.mktemp("entry") / entry.folder_name(), LIB, javac)


def run_daemon(compiled: Path, tmp_path: Path, properties: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "app.properties"
    path.write_text(properties)
    return subprocess.run(
        [launcher.find_java(), "-cp", f"{LIB}/*:{compiled}", entry.MAIN_CLASS, "--properties-file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_it_compiles_against_the_pinned_classpath(compiled: Path) -> None:
    assert (compiled / "thyme" / "kinesis" / "ThymeMultiLangDaemon.class").is_file()
    assert entry.compiled(compiled.parent) == compiled  # found beside the jars it was compiled for


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        (
            "thyme.leaderLockLeaseMillis = 15000\nthyme.leaderLockHeartbeatMillis = 15000\n",
            "thyme.leaderLockHeartbeatMillis (15000) must be less than thyme.leaderLockLeaseMillis (15000)",
        ),
        ("thyme.leaderLockLeaseMillis = soon\n", "thyme.leaderLockLeaseMillis: expected a positive number"),
        ("thyme.prefetchBatches = 0\n", "thyme.prefetchBatches: expected a positive number of batches, got 0"),
        ("thyme.prefetchBytes = 4GiB\n", "thyme.prefetchBytes: expected a positive number of bytes, got 4GiB"),
        ("thyme.prefetchBytes = 4294967296\n", "thyme.prefetchBytes: at most 2147483647, got 4294967296"),
    ],
)
def test_bad_settings_stop_the_jvm_with_one_line_before_any_aws_call(
    compiled: Path, tmp_path: Path, lines: str, said: str
) -> None:
    done = run_daemon(compiled, tmp_path, "executableName = python3\nstreamName = s\napplicationName = a\n" + lines)
    assert done.returncode == 1
    assert said in done.stderr


def test_usage_without_a_properties_file(compiled: Path) -> None:
    done = subprocess.run(
        [launcher.find_java(), "-cp", f"{LIB}/*:{compiled}", entry.MAIN_CLASS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "usage: ThymeMultiLangDaemon --properties-file FILE" in done.stderr


def test_without_a_compiler_the_stock_daemon_runs_and_one_line_says_what_that_costs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("THYME_KCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(entry, "find_javac", lambda java=None: None)
    with caplog.at_level(logging.WARNING, logger="thyme.kinesis"):
        assert entry.ensure(tmp_path / "jre-only") is None
    [record] = caplog.records
    assert "no Java compiler (javac) here" in record.getMessage()
    assert "~2 minutes" in record.getMessage()


def test_jars_it_cannot_compile_against_fall_back_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("THYME_KCL_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "no-jars"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="thyme.kinesis"):
        assert entry.ensure(empty, launcher.find_java()) is None
    [record] = caplog.records
    assert "could not compile the daemon's entry point" in record.getMessage()
    assert not (empty / entry.folder_name()).exists()


def test_the_daemon_command_names_the_entry_point_or_the_stock_daemon(compiled: Path) -> None:
    from thyme.connectors import KinesisSource
    from thyme.kinesis.properties import build_properties

    connection = KinesisSource("arn:aws:kinesis:eu-west-1:111122223333:stream/s", init_position="latest").resolve()
    properties = build_properties(connection, dataset="D", python="/usr/bin/python3")
    ours = launcher.Plan(properties, None, "java", LIB, Path("logback.xml"), entry=compiled)  # type: ignore[arg-type]
    command = ours.command(Path("app.properties"))
    assert command[command.index("-cp") + 1] == f"{LIB}/*:{compiled}"
    assert entry.MAIN_CLASS in command
    assert "MultiLangDaemon" in entry.MAIN_CLASS  # the images' health checks grep for it
    assert ours.leader_lock_s == 10
    stock = launcher.Plan(properties, None, "java", LIB, Path("logback.xml"))  # type: ignore[arg-type]
    assert entry.STOCK_MAIN_CLASS in stock.command(Path("app.properties"))
    assert stock.leader_lock_s == 120  # the stock daemon does not read our keys
