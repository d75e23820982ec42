"""The environment's mistakes, command by command: no credentials, denied or expired credentials,
an unreachable endpoint, a missing or unreadable store. Each is one ``thyme: error:`` line, exit
status 2, no traceback, no secret. (The half that needs the local stack — a missing stream, a
stream deleted under a running consumer — is in ``tests/e2e/test_environment_e2e.py``.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from thyme.kinesis import aws
from thyme.kinesis.aws import AwsError, explain
from thyme.kinesis.preflight import FAILURES_TO_STOP, StreamWatch

THYME = str(Path(sys.executable).with_name("thyme"))
ROLE_NAME = "env-matrix-reader-7c1f"
ROLE = f"arn:aws:iam::222233334444:role/{ROLE_NAME}"
APP = """\
from datetime import datetime

from thyme import Field, Secret, dataset, field
from thyme.connectors import KinesisSource, source


@source(KinesisSource(stream_arn="arn:aws:kinesis:us-east-1:123456789012:stream/env-matrix",
                      role_arn=Secret(env="MATRIX_ROLE")), max_lateness="5m")
@dataset(index=True)
class Clicks:
    user_id: Field[str] = field(key=True)
    timestamp: Field[datetime] = field(timestamp=True)
"""
COMMANDS: dict[str, list[str]] = {
    "run": ["kinesis", "run", "{app}:Clicks", "--store", "{store}"],
    "status": ["kinesis", "status", "{app}:Clicks", "--store", "{store}"],
    "dead-letters list": ["kinesis", "dead-letters", "list", "{app}:Clicks", "--store", "{store}"],
    "dead-letters redrive": ["kinesis", "dead-letters", "redrive", "{app}:Clicks", "--store", "{store}"],
    "lookup": ["lookup", "{app}:Clicks", "u1", "--store", "{store}"],
    "store migrate": ["store", "migrate", "{app}:Clicks", "--store", "{store}"],
    "properties": ["kinesis", "properties", "{app}:Clicks", "--store", "{store}"],
}


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "matrix_app.py"
    path.write_text(APP)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment with no AWS identity at all (no keys, files, metadata service)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "THYME_"))}
    env |= {
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
        "AWS_CONFIG_FILE": "/nonexistent/config",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": "us-east-1",
        "MATRIX_ROLE": ROLE,
    }
    return env | extra


KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def thyme(command: str, app: Path, store: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    args = [a.format(app=app, store=store) for a in COMMANDS[command]]
    return subprocess.run([THYME, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The whole of a failed command's stderr, checked to be one error line without a secret."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("thyme: error: "), done.stderr[-2000:]
    for secret in (ROLE, ROLE_NAME):
        assert secret not in done.stderr + done.stdout
    return lines[0].removeprefix("thyme: error: ")


def sqlite_store(tmp_path: Path) -> str:
    """A store the consumer made (with the dataset's tables), so store commands have one to read."""
    url = f"sqlite:///{tmp_path / 'made.db'}"
    done = subprocess.run(
        [THYME, "store", "migrate", f"{tmp_path / 'matrix_app.py'}:Clicks", "--store", url],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return url


# -- the matrix --------------------------------------------------------------------------------

NEEDS_AWS = ("run", "status")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_credentials(command: str, app: Path, tmp_path: Path) -> None:
    done = thyme(command, app, sqlite_store(tmp_path), clean_env(), tmp_path)
    if command not in NEEDS_AWS:  # the store commands and properties need no AWS identity
        assert done.returncode in (0, 1), done.stderr  # lookup: 1 = the key has no version
        assert "Traceback" not in done.stderr
        return
    message = one_line(done)
    if command == "run":
        assert message.startswith("no AWS credentials for the consumer's own identity (it reads and writes the lease")
    else:  # status assumes the role to describe the stream, as run would
        assert message.startswith(
            "no AWS credentials for the consumer's own identity (needed for sts:AssumeRole): give the consumer"
        )


@pytest.mark.parametrize("command", NEEDS_AWS)
def test_unreachable_endpoint(command: str, app: Path, tmp_path: Path) -> None:
    env = clean_env(
        **KEYS, THYME_KINESIS_ENDPOINT_URL="http://127.0.0.1:9", THYME_STS_ENDPOINT_URL="http://127.0.0.1:9"
    )
    message = one_line(thyme(command, app, sqlite_store(tmp_path), env, tmp_path))
    assert message.startswith("cannot reach the AWS endpoint at http://127.0.0.1:9 for sts:AssumeRole ("), message
    assert message.endswith("check the endpoint URL (endpoint_url, THYME_*_ENDPOINT_URL) and the network, or try again")


@pytest.mark.parametrize("command", ["dead-letters list", "dead-letters redrive", "lookup"])
def test_a_missing_store_is_an_error_never_created(command: str, app: Path, tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "thyme.db"
    message = one_line(thyme(command, app, f"sqlite:///{missing}", clean_env(), tmp_path))
    assert message == (
        f"store URL: no SQLite store at {missing} (got 'sqlite:///{missing}'). Check the path; a store is "
        "created by the consumer (thyme kinesis run) or thyme store migrate."
    )
    assert not missing.parent.exists()


@pytest.mark.parametrize("command", ["run", "dead-letters list", "dead-letters redrive", "lookup", "store migrate"])
def test_an_unreadable_store_file(command: str, app: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-store.db"
    garbage.write_bytes(b"this is not an SQLite file" * 100)
    message = one_line(thyme(command, app, f"sqlite:///{garbage}", clean_env(MATRIX_ROLE=ROLE), tmp_path))
    assert f"cannot open the SQLite store {garbage}: file is not a database" in message, message


def test_properties_needs_neither_aws_nor_a_store(app: Path, tmp_path: Path) -> None:
    missing = tmp_path / "never.db"
    done = thyme("properties", app, f"sqlite:///{missing}", clean_env(), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "streamName = env-matrix" in done.stdout
    assert not missing.exists()


# -- denied and expired credentials (a stub: the local stack does not enforce IAM) ----------------


def client_error(code: str, operation: str, status: int = 400) -> botocore.exceptions.ClientError:
    response: Any = {"Error": {"Code": code, "Message": f"User {ROLE} is not allowed"}}
    response["ResponseMetadata"] = {"HTTPStatusCode": status}
    return botocore.exceptions.ClientError(response, operation)


class DeniedKinesis:
    def __init__(self, code: str) -> None:
        self.code = code

    def describe_stream_summary(self, **_: Any) -> dict[str, Any]:
        raise client_error(self.code, "DescribeStreamSummary")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            "AccessDeniedException",
            "the role in Secret(env='MATRIX_ROLE') (account 222233334444) may not call kinesis:DescribeStreamSummary "
            "on stream env-matrix (account 123456789012, region us-east-1) (AccessDeniedException): grant it "
            "kinesis:DescribeStreamSummary",
        ),
        (
            "ExpiredTokenException",
            "the credentials of the role in Secret(env='MATRIX_ROLE') (account 222233334444) have expired "
            "(ExpiredTokenException): refresh them, or restart with new ones",
        ),
    ],
)
@pytest.mark.parametrize("command", NEEDS_AWS)
def test_denied_or_expired_credentials(
    command: str,
    code: str,
    expected: str,
    app: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from thyme.cli import main

    for key, value in clean_env(**KEYS).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(aws, "kinesis_client", lambda *args: DeniedKinesis(code))
    args = [a.format(app=app, store=sqlite_store(tmp_path)) for a in COMMANDS[command]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"thyme: error: {expected}\n"
    assert ROLE_NAME not in err


def test_every_kind_of_botocore_failure_becomes_one_line() -> None:
    who, action, what = "the consumer's own identity", "dynamodb:DescribeTable", "lease table t (region r)"
    cases: list[tuple[BaseException, str, bool]] = [
        (botocore.exceptions.NoCredentialsError(), "no AWS credentials for the consumer's own identity", True),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"),
            "cannot reach the AWS endpoint at http://e for dynamodb:DescribeTable",
            False,
        ),
        (client_error("AccessDeniedException", "DescribeTable"), "may not call dynamodb:DescribeTable", True),
        (client_error("UnrecognizedClientException", "DescribeTable"), "AWS does not recognise the credentials", True),
        (client_error("ThrottlingException", "DescribeTable"), "kept failing (ThrottlingException)", False),
        (client_error("InternalFailure", "DescribeTable", 500), "kept failing (InternalFailure)", False),
        (client_error("ValidationException", "DescribeTable"), "failed (ValidationException)", False),
    ]
    for exc, start, fatal in cases:
        error = explain(exc, who, action, what, "http://e")
        assert start in str(error), (start, str(error))
        assert "\n" not in str(error) and ROLE not in str(error)
        assert error.fatal is fatal, (start, error.fatal)


# -- while running: a stream that goes away -----------------------------------------------------


def test_the_running_check_stops_after_fatal_failures_in_a_row_only() -> None:
    outcomes: list[Callable[[], object]] = []

    def check() -> object:
        return outcomes.pop(0)() if outcomes else "ACTIVE"

    def fails(fatal: bool) -> Callable[[], object]:
        def go() -> object:
            raise AwsError("stream s does not exist", fatal=fatal)

        return go

    stopped: list[AwsError] = []
    # a fatal failure, a recovery, a transient one, then fatal ones until it stops
    outcomes += [fails(True), lambda: "ACTIVE", fails(False), *[fails(True)] * FAILURES_TO_STOP]
    target: Any = None
    watch = StreamWatch(target, 0.01, stopped.append, check=check).start()
    for _ in range(500):
        if stopped:
            break
        watch._done.wait(0.01)
    watch.close()
    assert [str(e) for e in stopped] == ["stream s does not exist"]
    assert outcomes == []  # it needed every one of them
