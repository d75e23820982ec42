"""`thyme kinesis run` without AWS: the rendered properties, the private files, supervision."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from tests.factories import SourcedClick, feed_of, schema_of
from thyme import Secret
from thyme.connectors import KinesisSource
from thyme.errors import ConfigError, SourceError
from thyme.handover import ProcessorConfig
from thyme.kinesis.launcher import LaunchError, Plan, RunOptions, Supervisor, plan
from thyme.kinesis.properties import KclProperties, build_properties, escape

ARN = "arn:aws:kinesis:eu-west-1:111122223333:stream/click-events"
ROLE = "arn:aws:iam::444455556666:role/stream-reader"

# Every key Thyme may write, spelt exactly as KCL 3.x's MultiLangDaemonConfiguration bean
# properties (amazon-kinesis-client-multilang 3.x). KCL ignores unknown keys silently.
KCL_KEYS = {
    "executableName",
    "timeoutInSeconds",
    "skipShardSyncAtWorkerInitializationIfLeasesExist",
    "processingLanguage",
    "streamName",
    "applicationName",
    "tableName",
    "workerId",
    "regionName",
    "initialPositionInStream",
    "initialPositionInStreamExtended",
    "kinesisEndpoint",
    "dynamoDBEndpoint",
    "AwsCredentialsProvider",
    "AwsCredentialsProviderDynamoDB",
    "AwsCredentialsProviderCloudWatch",
    "retrievalMode",
    "maxRecords",
    "idleTimeBetweenReadsInMillis",
    "metricsLevel",
    "shutdownGraceMillis",
    "failoverTimeMillis",
    "shardSyncIntervalMillis",
    "leaseAssignmentIntervalMillis",
    "parentShardPollIntervalMillis",
    "inMemoryWorkerMetricsCaptureFrequencyMillis",
    "workerMetricsReporterFreqInMillis",
    "maxLeasesForWorker",
    "fanoutConfig.consumerName",  # a nested key: the daemon's FanoutConfigBean (tests/e2e/test_fanout_e2e.py)
}


def parse(text: str) -> dict[str, str]:
    pairs = [line.split(" = ", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


# Our entry point's own keys (thyme/kinesis/java/ThymeMultiLangDaemon.java reads them by these names).
ENTRY_KEYS = {
    "thyme.leaderLockLeaseMillis",
    "thyme.leaderLockHeartbeatMillis",
    "thyme.prefetchBatches",
    "thyme.prefetchBytes",
}


def test_every_key_is_a_real_kcl_key_or_our_entry_points() -> None:
    aliases = {f.alias for f in KclProperties.model_fields.values()}
    assert aliases == KCL_KEYS | ENTRY_KEYS
    source = (Path(__file__).parents[1] / "thyme/kinesis/java/ThymeMultiLangDaemon.java").read_text()
    for key in ENTRY_KEYS:
        assert f'"{key}"' in source


def test_the_leader_lock_is_10_s_renewed_every_third_unless_set() -> None:
    connection = KinesisSource(ARN, init_position="latest").resolve()
    keys = parse(build_properties(connection, dataset="ClickEvent", python="/usr/bin/python3").render())
    assert (keys["thyme.leaderLockLeaseMillis"], keys["thyme.leaderLockHeartbeatMillis"]) == ("10000", "3333")
    kcl = parse(
        build_properties(connection, dataset="ClickEvent", python="/usr/bin/python3", leader_lock_s=None).render()
    )
    assert not ENTRY_KEYS & set(kcl)


def test_fan_out_names_its_consumer_and_drops_the_polling_keys() -> None:
    connection = KinesisSource(ARN, init_position="latest").resolve()
    keys = parse(
        build_properties(connection, dataset="ClickEvent", python="/usr/bin/python3", retrieval="fan-out").render()
    )
    assert keys["retrievalMode"] == "FANOUT"
    assert keys["fanoutConfig.consumerName"] == keys["applicationName"] == "thyme-ClickEvent-click-events"
    assert "maxRecords" not in keys
    assert "idleTimeBetweenReadsInMillis" not in keys
    named = build_properties(
        connection, dataset="ClickEvent", python="/usr/bin/python3", retrieval="fan-out", consumer_name="ml-features"
    )
    assert named.consumer_name == "ml-features"
    polling = parse(build_properties(connection, dataset="ClickEvent", python="/usr/bin/python3").render())
    assert polling["retrievalMode"] == "POLLING"
    assert "fanoutConfig.consumerName" not in polling
    with pytest.raises(SourceError, match="consumer name"):
        build_properties(
            connection, dataset="ClickEvent", python="/usr/bin/python3", retrieval="fan-out", consumer_name="a b"
        )


def test_aws_profile_with_role_assumes_it_for_kinesis_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("READER_ROLE", ROLE)
    connection = KinesisSource(ARN, init_position="trim_horizon", role_arn=Secret(env="READER_ROLE")).resolve()
    props = build_properties(connection, dataset="ClickEvent", python="/usr/bin/python3", worker_id="host-1")
    assert parse(props.render()) == {
        "executableName": "/usr/bin/python3 -m record_processor",
        "processingLanguage": "python/3",
        "streamName": "click-events",
        "applicationName": "thyme-ClickEvent-click-events",
        "tableName": "thyme-ClickEvent-click-events",
        "workerId": "host-1",
        "regionName": "eu-west-1",
        "initialPositionInStream": "TRIM_HORIZON",
        "AwsCredentialsProvider": f"StsAssumeRoleCredentialsProvider|{ROLE}|thyme-ClickEvent-click-events|endpointRegion=eu-west-1",
        "AwsCredentialsProviderDynamoDB": "DefaultCredentialsProvider",
        "AwsCredentialsProviderCloudWatch": "DefaultCredentialsProvider",
        "retrievalMode": "POLLING",
        "maxRecords": "10000",
        "idleTimeBetweenReadsInMillis": "250",
        "metricsLevel": "SUMMARY",
        "shutdownGraceMillis": "30000",
        "failoverTimeMillis": "10000",
        "leaseAssignmentIntervalMillis": "2000",
        "skipShardSyncAtWorkerInitializationIfLeasesExist": "true",
        "thyme.leaderLockLeaseMillis": "10000",
        "thyme.leaderLockHeartbeatMillis": "3333",
    }
    printed = props.render(redact_credentials=True)
    assert ROLE not in printed
    assert (
        "AwsCredentialsProvider = StsAssumeRoleCredentialsProvider|<redacted>|thyme-ClickEvent-click-events" in printed
    )


def test_local_profile_and_at_timestamp() -> None:
    connection = KinesisSource(
        ARN, init_position="2024-05-01T12:00:00.750+02:00", endpoint_url="http://127.0.0.1:4567"
    ).resolve()
    props = parse(
        build_properties(
            connection,
            dataset="ClickEvent",
            python="/py",
            application_name="my-app",
            worker_id="w",
            dynamodb_endpoint_url="http://127.0.0.1:5000",
        ).render()
    )
    assert "initialPositionInStream" not in props
    assert props["initialPositionInStreamExtended"] == "1714557600"  # whole seconds: KCL rejects fractions
    assert props["kinesisEndpoint"] == "http://127.0.0.1:4567"
    assert props["dynamoDBEndpoint"] == "http://127.0.0.1:5000"
    assert (props["applicationName"], props["tableName"]) == ("my-app", "my-app")
    assert props["AwsCredentialsProvider"] == "DefaultCredentialsProvider"
    assert props["metricsLevel"] == "NONE"  # KCL has no CloudWatch endpoint key
    assert props["shardSyncIntervalMillis"] == "1"
    assert props["leaseAssignmentIntervalMillis"] == "500"


def test_values_are_escaped_not_pasted() -> None:
    assert escape("a\\b") == "a\\\\b"
    assert escape(" lead") == "\\ lead"
    assert escape("café") == "caf\\u00e9"
    with pytest.raises(ValueError, match="line break"):
        escape("x\nevil = 1")


def test_interpreter_path_with_a_space_is_refused() -> None:
    connection = KinesisSource(ARN).resolve()
    with pytest.raises(SourceError, match="KCL splits executableName on spaces"):
        build_properties(connection, dataset="D", python="/my venv/bin/python")


FAKE_JAVA = """\
#!/bin/sh
# Stands in for java: records how it was called and the properties file's mode, then exits.
for last; do :; done
props="$(echo "$@" | sed 's/.*--properties-file \\([^ ]*\\).*/\\1/')"
echo "props=$props mode=$(stat -c %a "$props") dir_mode=$(stat -c %a "$(dirname "$props")")" >> "{record}"
echo "config=$THYME_PROCESSOR_CONFIG" >> "{record}"
echo "ERROR boom: Reached end of STDIN of child process" >&2
exit 3
"""


def make_plan(tmp_path: Path, record: Path) -> Plan:
    java = tmp_path / "java"
    java.write_text(FAKE_JAVA.format(record=record))
    java.chmod(0o755)
    connection = KinesisSource(ARN, role_arn=ROLE).resolve()
    props = build_properties(connection, dataset="SourcedClick", python=sys.executable, worker_id="w")
    config = ProcessorConfig(dataset=schema_of(SourcedClick), stream=ARN, store_url=f"sqlite:///{tmp_path / 't.db'}")
    return Plan(props, config, str(java), tmp_path, tmp_path / "logback.xml")


def test_supervisor_restarts_then_gives_up_with_the_reason(tmp_path: Path) -> None:
    record = tmp_path / "calls.txt"
    options = RunOptions(max_fast_failures=3, fast_failure_s=60)
    supervisor = Supervisor(make_plan(tmp_path, record), options, err=open(os.devnull, "w"))  # noqa: SIM115
    supervisor._stopping.wait = lambda timeout=None: False  # type: ignore[method-assign]  # no real backoff
    with pytest.raises(LaunchError) as info:
        supervisor.run()
    assert str(info.value).startswith(
        "the KCL daemon exited 3 times in a row within 60s of starting (last exit status 3); giving up. "
        "Last errors: ERROR boom: Reached end of STDIN of child process"
    )
    calls = record.read_text().splitlines()
    assert len(calls) == 6  # three starts, two lines each
    props_path = Path(calls[0].split()[0].removeprefix("props="))
    assert "mode=600 dir_mode=700" in calls[0]
    assert calls[1] == f"config={props_path.parent / 'processor.json'}"
    assert not props_path.parent.exists()  # the private directory is removed on exit


def test_plan_checks_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THYME_KCL_CLASSPATH", str(tmp_path))
    with pytest.raises(LaunchError, match=f"the KCL jars are missing from {tmp_path}"):
        plan(SourcedClick, RunOptions(store_url=f"sqlite:///{tmp_path / 't.db'}"))
    (tmp_path / "amazon-kinesis-client-multilang-3.1.3.jar").write_bytes(b"")
    found = plan(SourcedClick, RunOptions(store_url=f"sqlite:///{tmp_path / 't.db'}", worker_id="w"))
    assert found.properties.stream_name == "clicks"
    assert found.config.lease_table == "thyme-SourcedClick-clicks"
    assert found.command(Path("/p"))[-4:] == ["--properties-file", "/p", "--log-configuration", str(found.logback)]
    # a hung child is detected by default, after longer than a store outage is retried
    assert "timeoutInSeconds = 300\n" in found.properties.render()
    assert "skipShardSyncAtWorkerInitializationIfLeasesExist = true\n" in found.properties.render()
    with pytest.raises(ConfigError) as info:
        plan(SourcedClick, RunOptions(store_url=f"sqlite:///{tmp_path / 't.db'}", child_timeout_s=60))
    assert str(info.value) == (
        "--child-timeout-s: must be at least the store retry bound (120 s, THYME_STORE_GIVE_UP_AFTER_S) plus 75 s, "
        "or a store outage would be taken for a hung processor (got 60). Use at least 195, lower "
        "THYME_STORE_GIVE_UP_AFTER_S, or 0 to never time out."
    )
    monkeypatch.setenv("THYME_STORE_GIVE_UP_AFTER_S", "5")
    quick = plan(SourcedClick, RunOptions(store_url=f"sqlite:///{tmp_path / 't.db'}", child_timeout_s=80))
    assert quick.properties.child_timeout_s == 80
    monkeypatch.setenv("THYME_STORE_GIVE_UP_AFTER_S", "two minutes")
    with pytest.raises(ConfigError, match="THYME_STORE_GIVE_UP_AFTER_S: not a number of seconds"):
        plan(SourcedClick, RunOptions(store_url=f"sqlite:///{tmp_path / 't.db'}"))
    monkeypatch.delenv("THYME_STORE_GIVE_UP_AFTER_S")
    never = plan(SourcedClick, RunOptions(store_url=f"sqlite:///{tmp_path / 't.db'}", child_timeout_s=None))
    assert "timeoutInSeconds" not in never.properties.render()


def test_properties_command_redacts_the_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from thyme.cli import main

    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(f"""
        from datetime import datetime
        from thyme import Field, Secret, dataset, field
        from thyme.connectors import KinesisSource, source

        @source(KinesisSource(stream_arn={ARN!r}, role_arn=Secret(env="APP_ROLE")), max_lateness="1m")
        @dataset(index=True)
        class Clicks:
            user_id: Field[str] = field(key=True)
            timestamp: Field[datetime] = field(timestamp=True)
    """)
    )
    monkeypatch.setenv("APP_ROLE", ROLE)
    assert (
        main(
            ["kinesis", "properties", f"{app}:Clicks", "--store", f"sqlite:///{tmp_path / 't.db'}", "--worker-id", "w"]
        )
        == 0
    )
    out = capsys.readouterr()
    assert ROLE not in out.out + out.err
    assert "StsAssumeRoleCredentialsProvider|<redacted>|" in out.out
    assert "streamName = click-events" in out.out


def test_dead_letters_command_lists_escaped_payloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from thyme.cli import main
    from thyme.store import Batch, DeadLetter, Position, ShardState, open_store

    url = f"sqlite:///{tmp_path / 't.db'}"
    store = open_store(url)
    letters = [
        DeadLetter("shardId-1", "11", 0, "pk", b"\xff\xfe\x1b[31m", "invalid_utf8", 5),
        DeadLetter("shardId-1", "12", 0, "pk", b'{"user_id": "u", "timestamp": 1}', "schema: page: missing", 6),
    ]
    assert store.apply(feed_of(SourcedClick), Batch("shardId-1", ShardState(Position(12)), [], letters), None) is None
    store.close()
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    assert main(["kinesis", "dead-letters", "tests.factories:SourcedClick", "--store", url]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["sequence"], e["reason"], e["payload"]) for e in lines] == [
        ("11", "invalid_utf8", "\\xff\\xfe\x1b[31m"),
        ("12", "schema: page: missing", '{"user_id": "u", "timestamp": 1}'),
    ]
    assert (
        main(["kinesis", "dead-letters", "tests.factories:SourcedClick", "--store", url, "--reason", "invalid_utf8"])
        == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_an_external_id_goes_with_the_role_and_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("READER_ROLE", ROLE)
    monkeypatch.setenv("THYME_KINESIS_EXTERNAL_ID", "ext-7f3a/very-private")
    source_ = KinesisSource(ARN, role_arn=Secret(env="READER_ROLE"))  # external id from the environment
    connection = source_.resolve()
    assert connection.external_id == "ext-7f3a/very-private"
    props = build_properties(connection, dataset="ClickEvent", python="/usr/bin/python3", worker_id="host-1")
    assert parse(props.render())["AwsCredentialsProvider"] == (
        f"StsAssumeRoleCredentialsProvider|{ROLE}|thyme-ClickEvent-click-events|endpointRegion=eu-west-1|"
        "externalId=ext-7f3a/very-private"
    )
    printed = props.render(redact_credentials=True)
    for text in (printed, repr(props), repr(connection), repr(source_)):
        assert "very-private" not in text
    assert "|endpointRegion=eu-west-1|externalId=<redacted>" in printed


def test_an_external_id_needs_a_role_and_a_valid_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THYME_KINESIS_ROLE_ARN", raising=False)
    with pytest.raises(SourceError) as info:
        KinesisSource(ARN, external_id="abc123")
    assert str(info.value) == (
        "KinesisSource(external_id=...): an ExternalId is only sent when assuming a role (got <redacted>). "
        "Set role_arn (the role whose trust policy requires this ExternalId), or remove external_id."
    )
    for value in ("has|pipe", "a=b", "a,b", "日本語"):  # = and , would be cut or logged by KCL's parser
        with pytest.raises(SourceError) as bad:
            KinesisSource(ARN, role_arn=ROLE, external_id=value)
        assert value not in str(bad.value)
        assert str(bad.value).startswith("KinesisSource(external_id=...): not a valid ExternalId (got <redacted>).")
    monkeypatch.setenv("EXT", "x")  # too short for STS: found when the secret is resolved
    with pytest.raises(SourceError, match=r"external_id=Secret\(env='EXT'\)\): not a valid ExternalId"):
        KinesisSource(ARN, role_arn=ROLE, external_id=Secret(env="EXT")).resolve()
