"""The environment's mistakes against the real local stack: a stream that does not exist, a store
that does not, and a stream deleted under a running consumer. One ``thyme: error:`` line each,
in seconds, never a JVM retrying forever. (The half that needs no stack: ``tests/test_environment.py``.)"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import streams

from tests.e2e.harness import THYME, events, produce, unique, wait_for, write_app


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([THYME, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("thyme: error: "), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr
    return lines[0].removeprefix("thyme: error: ")


def test_a_stream_that_does_not_exist_stops_run_and_status_in_seconds(
    kinesis: Any, aws: dict[str, str], tmp_path: Path
) -> None:
    env = {**os.environ, **aws}
    real = streams.create_stream(kinesis, unique("e2e-env"), 1)
    missing = real.rsplit("/", 1)[0] + "/" + unique("e2e-never")
    account, region, name = missing.split(":")[4], missing.split(":")[3], missing.rsplit("/", 1)[1]
    app = write_app(tmp_path, missing)
    expected = (
        f"stream {name} (account {account}, region {region}) does not exist. Check the dataset's stream_arn (and "
        "the account and region it names), or create the stream."
    )
    for command in ("run", "status"):
        started = time.monotonic()
        store = f"sqlite:///{tmp_path / 'x.db'}"
        done = run_cli("kinesis", command, f"{app}:Clicks", "--store", store, env=env, cwd=tmp_path)
        assert (command, one_line(done)) == (command, expected)
        assert time.monotonic() - started < 20


def test_doctor_says_what_run_would_stop_on_and_then_that_all_is_ready(
    kinesis: Any, aws: dict[str, str], tmp_path: Path
) -> None:
    env = {**os.environ, **aws}
    name = unique("e2e-doctor")
    real = streams.create_stream(kinesis, unique("e2e-env"), 1)
    arn = real.rsplit("/", 1)[0] + "/" + name
    app = write_app(tmp_path, arn)
    store = f"sqlite:///{tmp_path / 'thyme.db'}"
    done = run_cli("doctor", f"{app}:Clicks", "--store", store, env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ok    java",
        "ok    classpath",
        "ok    entry point",
        "ok    daemon logging",
        "ok    store",
        "FAIL  aws",
    ]
    assert lines[-1] == (
        f"FAIL  aws: stream {name} (account {arn.split(':')[4]}, region {arn.split(':')[3]}) does not exist. "
        "Check the dataset's stream_arn (and the account and region it names), or create the stream."
    )
    streams.create_stream(kinesis, name, 1)
    done = run_cli("doctor", f"{app}:Clicks", "--store", store, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith(
        f"ok    aws: credentials found; the consumer's own identity can read stream {name}"
    )
    assert not (tmp_path / "thyme.db").exists()  # it created nothing


def test_status_of_a_store_that_does_not_exist(kinesis: Any, aws: dict[str, str], tmp_path: Path) -> None:
    arn = streams.create_stream(kinesis, unique("e2e-env"), 1)
    app = write_app(tmp_path, arn)
    missing = tmp_path / "typo" / "thyme.db"
    env = {**os.environ, **aws}
    done = run_cli("kinesis", "status", f"{app}:Clicks", "--store", f"sqlite:///{missing}", env=env, cwd=tmp_path)
    assert one_line(done).startswith(f"store URL: no SQLite store at {missing}")
    assert not missing.parent.exists()


def test_a_stream_deleted_under_a_running_consumer_ends_the_run(
    kinesis: Any, new_consumer: Any, tmp_path: Path
) -> None:
    stream = unique("e2e-env-del")
    arn = streams.create_stream(kinesis, stream, 1)
    produce(kinesis, stream, events(0, 20))
    consumer = new_consumer(write_app(tmp_path, arn), env={"THYME_ENVIRONMENT_CHECK_S": "2"})
    consumer.start()
    wait_for(lambda: sum(s["applied"] for s in consumer.status()["shards"]) == 20, 120, "the records to be applied")
    kinesis.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)
    deleted = time.monotonic()
    assert consumer.process is not None
    code = consumer.process.wait(120)
    stopped_s = time.monotonic() - deleted
    log = consumer.log_text()
    assert code == 2, log[-3000:]
    last = log.rstrip().splitlines()[-1]
    assert last.startswith(f"thyme: error: stream {stream} "), last
    assert last.endswith(
        "does not exist. Check the dataset's stream_arn (and the account and region it names), or create the stream."
    ), last
    # two failed checks 2 s apart, then the daemon's graceful stop (its shards may not checkpoint)
    assert stopped_s < 60, stopped_s
    print(f"stopped {stopped_s:.1f}s after the stream was deleted")  # noqa: T201
