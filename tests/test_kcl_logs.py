"""One log format: the KCL's lines (through the real logback and ``thyme/kinesis/logback.xml``), the
children's and anything else the daemon's stream carries, as Thyme's JSON lines, by level."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import SourcedClick, schema_of
from thyme.cli import main
from thyme.connectors import KinesisSource
from thyme.handover import ProcessorConfig
from thyme.kinesis.kcl_logs import MAX_FRAMES, convert
from thyme.kinesis.launcher import LaunchError, Plan, RunOptions, Supervisor
from thyme.kinesis.properties import build_properties

REPO = Path(__file__).resolve().parent.parent
LOGBACK = REPO / "thyme" / "kinesis" / "logback.xml"
KCL_LIB = REPO / ".kcl" / "lib"
ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"

LOGS_LIKE_KCL = """\
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.slf4j.MDC;

public class LogsLikeKcl {
  public static void main(String[] args) {
    Logger lam = LoggerFactory.getLogger("software.amazon.kinesis.coordinator.assignment.LeaseAssignmentManager");
    Logger consumer = LoggerFactory.getLogger("software.amazon.kinesis.lifecycle.ShardConsumer");
    MDC.put("ShardId", "shardId-000000000001");
    lam.info("Total number of leases : {}, assigned to {} workers", 4, "2");
    consumer.warn("Lease {} lost", "shardId-000000000001");
    try {
      throw new IllegalStateException("dispatch", new java.io.IOException("Stream no longer exists"));
    } catch (Exception e) {
      consumer.error("Exception occurred while dispatching incoming data.  The incoming data has been skipped", e);
    }
  }
}
"""


@pytest.fixture(scope="module")
def kcl_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class logging through the daemon's own logback and SLF4J jars, compiled once."""
    javac = shutil.which("javac")
    assert javac is not None, "javac is needed (the JDK scripts/setup.sh requires)"
    assert any(KCL_LIB.glob("logback-classic-*.jar")), f"run scripts/setup.sh: no logback in {KCL_LIB}"
    work = tmp_path_factory.mktemp("kcl-like")
    (work / "LogsLikeKcl.java").write_text(LOGS_LIKE_KCL)
    subprocess.run([javac, "-cp", f"{KCL_LIB}/*", "-d", str(work), str(work / "LogsLikeKcl.java")], check=True)
    return work


def kcl_lines(kcl_like: Path, level: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "THYME_KCL_LOG_LEVEL"}
    if level is not None:
        env["THYME_KCL_LOG_LEVEL"] = level
    done = subprocess.run(
        ["java", f"-Dlogback.configurationFile={LOGBACK}", "-cp", f"{KCL_LIB}/*:{kcl_like}", "LogsLikeKcl"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == ""  # the daemon's stdout stays empty
    return done.stderr.splitlines(keepends=True)


def test_kcl_lines_become_thyme_lines_at_the_level_asked_for(kcl_like: Path) -> None:
    quiet = kcl_lines(kcl_like, None)  # the file's own default: WARN
    assert len(quiet) == 2
    lines = [json.loads(convert(line, {"dataset": "Clicks"}).text) for line in kcl_lines(kcl_like, "INFO")]
    for entry in lines:
        assert list(entry)[:4] == ["time", "level", "logger", "message"]  # the fields of Thyme's own lines
        assert entry["time"].endswith("Z")
        assert (entry["component"], entry["dataset"], entry["shard"]) == ("kcl", "Clicks", "shardId-000000000001")
    assert [(e["level"], e["message"]) for e in lines] == [
        ("info", "Total number of leases : 4, assigned to 2 workers"),
        ("warning", "Lease shardId-000000000001 lost"),
        ("error", "Exception occurred while dispatching incoming data.  The incoming data has been skipped"),
    ]
    assert lines[2]["error"] == "IllegalStateException: dispatch <- IOException: Stream no longer exists"
    assert lines[2]["traceback"].splitlines()[0] == "java.lang.IllegalStateException: dispatch"
    assert "Caused by: java.io.IOException: Stream no longer exists" in lines[2]["traceback"]
    assert "error" not in lines[0]


def test_child_lines_pass_unchanged_and_other_text_is_wrapped() -> None:
    child = '{"time": "2026-12-03T19:10:00.000Z", "level": "info", "logger": "x", "message": "batch applied"}\n'
    assert convert(child, {"dataset": "D"}).text == child
    emf = '{"_aws": {"Timestamp": 1}, "RecordsApplied": 3}\n'
    assert (convert(emf, {}).text, convert(emf, {}).level) == (emf, None)  # no level: always written
    raw = convert("Exception in thread main java.lang.OutOfMemoryError: Java heap space\n", {"dataset": "D"}, now=0.5)
    assert json.loads(raw.text) == {
        "time": "1970-01-01T00:00:00.500Z",
        "level": "error",
        "logger": "stderr",
        "message": "Exception in thread main java.lang.OutOfMemoryError: Java heap space",
        "component": "kcl",
        "dataset": "D",
    }
    assert json.loads(convert("Picked up JAVA_TOOL_OPTIONS: -Xmx1g", {}).text)["level"] == "warning"
    broken = '{"sequenceNumber": truncated'
    assert json.loads(convert(broken, {}).text)["message"] == broken


def test_a_long_java_trace_is_cut_to_its_top_frames() -> None:
    frames = [{"className": "C", "methodName": f"m{i}", "fileName": "C.java", "lineNumber": i} for i in range(60)]
    event = {
        "sequenceNumber": 0,
        "timestamp": 0,
        "level": "ERROR",
        "loggerName": "software.amazon.kinesis.coordinator.Scheduler",
        "message": "Worker.run caught exception",
        "throwable": {"className": "java.lang.RuntimeException", "message": "x", "stepArray": frames},
    }
    entry = json.loads(convert(json.dumps(event, separators=(",", ":")), {}).text)
    trace = entry["traceback"].splitlines()
    assert len(trace) == 1 + MAX_FRAMES + 1
    assert trace[-1] == f"\t... {60 - MAX_FRAMES} more"


FAKE_JAVA = """\
#!/bin/sh
echo "kcl_level=$THYME_KCL_LOG_LEVEL child_level=$THYME_LOG_LEVEL" >> "{record}"
echo '{{"sequenceNumber":0,"timestamp":0,"level":"WARN","loggerName":"a.B","message":"kcl {{}}","arguments":["warn"]}}' >&2
echo '{{"time": "t", "level": "info", "logger": "record_processor", "message": "batch applied", "shard": "s"}}' >&2
echo '{{"time": "t", "level": "warning", "logger": "record_processor", "message": "store_unavailable"}}' >&2
echo '{{"_aws": {{}}, "RecordsApplied": 1}}' >&2
exit 3
"""


def fake_plan(tmp_path: Path) -> Plan:
    record = tmp_path / "calls.txt"
    java = tmp_path / "java"
    java.write_text(FAKE_JAVA.format(record=record))
    java.chmod(0o755)
    connection = KinesisSource(ARN).resolve()
    props = build_properties(connection, dataset="SourcedClick", python=sys.executable, worker_id="w")
    config = ProcessorConfig(dataset=schema_of(SourcedClick), stream=ARN, store_url=f"sqlite:///{tmp_path / 't.db'}")
    return Plan(props, config, str(java), tmp_path, tmp_path / "logback.xml")


@pytest.mark.parametrize(
    ("level", "written"),
    [
        ("info", ["kcl warn", "batch applied", "store_unavailable", None]),
        ("warning", ["kcl warn", "store_unavailable", None]),
        ("error", [None]),  # a metrics line has no level: always written
    ],
)
def test_the_launcher_writes_lines_at_or_above_the_level(tmp_path: Path, level: str, written: list[str | None]) -> None:
    err = io.StringIO()
    supervisor = Supervisor(fake_plan(tmp_path), RunOptions(log_level=level), err=err)  # type: ignore[arg-type]
    assert supervisor._run_once([str(tmp_path / "java")], {**os.environ}) == 3
    assert [json.loads(line).get("message") for line in err.getvalue().splitlines()] == written
    assert supervisor._progressed  # a batch line left out still counts as progress (and for Prometheus)


def test_run_passes_the_levels_to_the_daemon_and_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = fake_plan(tmp_path)
    monkeypatch.delenv("THYME_KCL_LOG_LEVEL", raising=False)

    def started_with(options: RunOptions) -> str:
        with pytest.raises(LaunchError, match="giving up"):
            Supervisor(plan, options, err=io.StringIO()).run()
        return (tmp_path / "calls.txt").read_text().splitlines()[-1]

    assert started_with(RunOptions(log_level="debug", max_fast_failures=1)) == "kcl_level=INFO child_level=debug"
    assert started_with(RunOptions(log_level="info", max_fast_failures=1)) == "kcl_level=WARN child_level=info"
    assert started_with(RunOptions(log_level="error", max_fast_failures=1)) == "kcl_level=ERROR child_level=error"
    monkeypatch.setenv("THYME_KCL_LOG_LEVEL", "DEBUG")  # the KCL's level alone, for a support case
    assert started_with(RunOptions(max_fast_failures=1)) == "kcl_level=DEBUG child_level=info"


def test_a_wrong_log_level_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THYME_LOG_LEVEL", "verbose")
    assert main(["kinesis", "run", "tests.factories:SourcedClick"]) == 2
    assert capsys.readouterr().err == (
        "thyme: error: THYME_LOG_LEVEL: not a log level (got 'verbose'). Use one of debug, info, warning, error.\n"
    )
    with pytest.raises(SystemExit):
        main(["kinesis", "run", "tests.factories:SourcedClick", "--log-level", "verbose"])
    assert "invalid choice: 'verbose'" in capsys.readouterr().err
