"""The command line as operators meet it: times, dead-letter reasons, help, versions, endpoints."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.factories import feed_of
from thyme.cli import build_parser, main
from thyme.errors import ConfigError
from thyme.kinesis.launcher import env_endpoint
from thyme.kinesis.status import ShardStatus, as_table, short_position
from thyme.loader import load_dataset
from thyme.schema import dataset_schema
from thyme.serving import lookup
from thyme.store import Batch, DeadLetter, Position, Row, ShardState, open_store
from thyme.times import parse_time

NOW = datetime(2026, 12, 3, 19, 10, tzinfo=UTC)
FIX = (
    'Write an ISO-8601 time with a zone ("2026-12-03T19:10:00Z"), epoch seconds or milliseconds '
    '(1796325000), or a duration back from now ("10m", "2h", "1d").'
)

LATE_FACTS = '{"event_time_us":1796324400000000,"watermark_us":1796325000000000,"max_lateness_us":300000000}'

APP = """\
from datetime import datetime

from thyme import Field, dataset, field
from thyme.connectors import KinesisSource, source


@source(KinesisSource(stream_arn="arn:aws:kinesis:us-east-1:000000000000:stream/telemetry"), max_lateness="5m")
@dataset(index=True)
class Reading:
    device: Field[str] = field(key=True)
    temperature_c: Field[float] = field()
    timestamp: Field[datetime] = field(timestamp=True)
"""


# -- times, wherever one is asked for ------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("2026-12-03T19:10:00Z", NOW),
        ("2026-12-03T20:10:00+01:00", NOW),
        ("1796325000", NOW),  # epoch seconds
        ("1796325000000", NOW),  # epoch milliseconds
        ("1796325000000000", NOW),  # epoch microseconds
        (1796325000, NOW),
        (1796325000.25, NOW + timedelta(milliseconds=250)),
        ("10m", NOW - timedelta(minutes=10)),
        ("1h30m ago", NOW - timedelta(hours=1, minutes=30)),
        ("now", NOW),
        (NOW, NOW),
    ],
)
def test_a_time_is_read_as_users_write_it(written: object, meant: datetime) -> None:
    assert parse_time(written, "--at", now=NOW) == meant


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (
            "2026-12-03T19:10:00",
            "--at: the time has no time zone (got '2026-12-03T19:10:00'). Add \"Z\" for UTC or an "
            'offset such as "+01:00".',
        ),
        ("yesterday", f"--at: not a time (got 'yesterday'). {FIX}"),
        ("10 parsecs", f"--at: not a time (got '10 parsecs'). {FIX}"),
        (True, f"--at: not a time (got True). {FIX}"),
        (-5, f"--at: an epoch time cannot be negative (got -5). {FIX}"),
    ],
)
def test_a_time_that_is_not_one_is_refused_with_the_forms_that_are(written: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_time(written, "--at", now=NOW)
    assert str(info.value) == message


def _reading_store(tmp_path: Path) -> tuple[str, str]:
    app = tmp_path / "telemetry.py"
    app.write_text(APP)
    target = f"{app}:Reading"
    schema = dataset_schema(load_dataset(target))
    assert schema is not None
    url = f"sqlite:///{tmp_path / 'thyme.db'}"
    db = open_store(url)
    at = int(NOW.timestamp() * 1_000_000)
    rows: list[Row] = [
        ("d1", at - 60_000_000, '{"device":"d1","temperature_c":20.5,"timestamp":"2026-12-03T19:09:00Z"}')
    ]
    letters = [
        DeadLetter("shardId-0", "2", 0, "d2", b'{"device":"d2"}', "schema: temperature_c: missing", 1796325000123),
        DeadLetter(
            "shardId-0",
            "3",
            0,
            "d3",
            b'{"device":"d3","temperature_c":"hot"}',
            "schema: temperature_c: expected float, got str",
            1796325000123,
        ),
        DeadLetter(
            "shardId-0", "4", 0, "d4", b'{"device":"d4","timestamp":1}', "late", 1796325000123, detail=LATE_FACTS
        ),
    ]
    assert db.apply(feed_of(schema), Batch("shardId-0", ShardState(Position(4)), rows, letters), None) is None
    db.close()
    return target, url


def test_lookup_takes_iso_epoch_and_relative_times_from_python_and_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, url = _reading_store(tmp_path)
    klass = load_dataset(target)
    found = lookup(klass, "d1", at="2026-12-03T19:10:00Z", store=url)
    assert found is not None
    assert found.temperature_c == 20.5
    assert lookup(klass, "d1", at=1796325000, store=url) == found
    assert lookup(klass, "d1", at="2026-12-03T19:08:00Z", store=url) is None  # before its event time
    assert lookup(klass, "d1", at="1m", store=url) == found  # a minute ago is after 2026-12-03
    with pytest.raises(ConfigError, match=r"^lookup\(at=\.\.\.\): the time has no time zone"):
        lookup(klass, "d1", at="2026-12-03T19:10:00", store=url)

    assert main(["lookup", target, "d1", "--store", url, "--at", "1796325000"]) == 0
    assert json.loads(capsys.readouterr().out)["temperature_c"] == 20.5
    with pytest.raises(SystemExit) as exit_info:
        main(["lookup", target, "d1", "--store", url, "--at", "2026-12-03 19:10"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "thyme lookup: error: argument --at: the time has no time zone (got '2026-12-03 19:10'). "
        'Add "Z" for UTC or an offset such as "+01:00".'
    )


# -- dead letters: times in ISO, reasons findable by their start ----------------------------------


def _listed(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["kinesis", "dead-letters", "list", *argv])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_dead_letters_print_iso_times_beside_the_raw_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, url = _reading_store(tmp_path)
    code, letters, _ = _listed(capsys, target, "--store", url, "--reason", "late")
    assert code == 0
    (late,) = letters
    assert (late["reason"], late["detail"]) == (
        "late",
        "event time 2026-12-03T19:00:00.000Z is 10m behind the shard's watermark 2026-12-03T19:10:00.000Z; "
        "max_lateness is 5m",
    )
    assert late["arrived_at"] == "2026-12-03T19:10:00.123Z"
    assert late["arrival_ms"] == 1796325000123
    assert late["recorded_at"] == parse_time(late["recorded_at_us"], "x").isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )
    assert (late["redriven_at"], late["redriven_at_us"]) == (None, None)
    # recorded just now: --since takes a duration back from now
    assert len(_listed(capsys, target, "--store", url, "--since", "10m")[1]) == 3
    assert _listed(capsys, target, "--store", url, "--until", "10m")[1] == []


@pytest.mark.parametrize(
    ("wanted", "sequences"),
    [
        ("schema", ["2", "3"]),
        ("schema: temperature_c", ["2", "3"]),
        ("schema:temperature_c", ["2", "3"]),  # as typed in a hurry
        ("  late ", ["4"]),
        ("schema: temperature_c: missing", ["2"]),
        ("schema: temperature_c: expected float, got str", ["3"]),
    ],
)
def test_a_reason_finds_the_reasons_that_start_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], wanted: str, sequences: list[str]
) -> None:
    target, url = _reading_store(tmp_path)
    code, letters, err = _listed(capsys, target, "--store", url, "--reason", wanted)
    assert (code, [d["sequence"] for d in letters], err) == (0, sequences, "")


def test_a_reason_held_by_no_dead_letter_says_which_are_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, url = _reading_store(tmp_path)
    for wanted in ("bogus", "schem", "schema: temp"):  # a prefix counts only up to a ": "
        code, letters, err = _listed(capsys, target, "--store", url, "--reason", wanted)
        assert (code, letters) == (1, [])
        assert err == (
            f"thyme: no dead letters with reason {wanted!r} (or starting with it); reasons held: late (1); "
            "schema: temperature_c: expected float, got str (1); schema: temperature_c: missing (1)\n"
        )
    # held, but the other filters leave nothing: an empty answer, not an error
    assert _listed(capsys, target, "--store", url, "--reason", "late", "--shard", "shardId-9")[:2] == (0, [])
    # re-drive says the same
    assert main(["kinesis", "dead-letters", "redrive", target, "--store", url, "--reason", "bogus"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["examined"] == 0
    assert captured.err.startswith("thyme: no dead letters with reason 'bogus' (or starting with it); reasons held: ")


def test_a_reason_filter_is_no_like_pattern(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target, url = _reading_store(tmp_path)
    # "_" and "%" are LIKE wildcards; a field named temperature_c must not match temperatureXc
    for wanted in ("schema: temperature%", "schema: temperature_", "schema: temperature_c_"):
        assert _listed(capsys, target, "--store", url, "--reason", wanted)[:2] == (1, [])


def test_redrive_late_by_name_after_the_prefix_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target, url = _reading_store(tmp_path)
    assert main(["kinesis", "dead-letters", "redrive", target, "--store", url, "--reason", " late", "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["examined"], report["not_redriven"]) == (1, {})  # asked for by name: judged, not held back


# -- help, flags and versions ---------------------------------------------------------------------


def test_version_names_ours_and_the_daemons(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("THYME_KCL_CLASSPATH", str(tmp_path))
    (tmp_path / "amazon-kinesis-client-multilang-3.1.3.jar").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"thyme-kinesis 0.2.0; KCL MultiLangDaemon 3.1.3 ({tmp_path}); Python ")
    (tmp_path / "amazon-kinesis-client-multilang-3.1.3.jar").unlink()
    with pytest.raises(SystemExit):
        main(["--version"])
    assert f"KCL MultiLangDaemon 3.1.3 (pinned; not installed in {tmp_path})" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flag",
    [
        "--idle-ms=300",
        "--shutdown-grace-ms=1",
        "--failover-ms=1",
        "--child-timeout-s=0",
        "--worker-id=w",
        "--profile=local",
    ],
)
def test_status_refuses_the_daemons_flags(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["kinesis", "status", "app:Clicks", flag])
    assert info.value.code == 2
    assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_every_command_and_argument_is_described() -> None:
    def undescribed(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if not sub.description and name != "list":  # `list` is dead-letters' default, described there
                        missing.append(f"{path} {name}: no description")
                    missing += undescribed(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.metavar or action.dest}")
        return missing

    assert undescribed(build_parser(), "thyme") == []


@pytest.mark.parametrize(
    ("checkpoint", "position", "shown"),
    [
        (
            "49590338271490256608559692538361571095921575989136588898",
            "49590338271490256608559692538361571095921575989136588898/0",
            "…989136588898",
        ),
        (
            "49590338271490256608559692538361571095921575989136588898/3",
            "49590338271490256608559692538361571095921575989136588898/3",
            "…989136588898/3",
        ),
        ("7", "7/0", "7"),
    ],
)
def test_status_shortens_the_checkpoint_and_the_store_position_alike(
    checkpoint: str, position: str, shown: str
) -> None:
    assert short_position(checkpoint) == short_position(position) == shown


def test_kcl_sentinels_and_nothing_are_shown_as_they_are() -> None:
    assert [short_position(v) for v in ("TRIM_HORIZON", "SHARD_END", None)] == ["TRIM_HORIZON", "SHARD_END", "-"]


# -- the local stack's environment ----------------------------------------------------------------


def test_endpoints_come_from_ours_then_the_aws_sdks_variables() -> None:
    assert env_endpoint({}, "dynamodb") is None
    assert env_endpoint({"AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:5000"}, "dynamodb") == "http://127.0.0.1:5000"
    both = {"AWS_ENDPOINT_URL_STS": "http://127.0.0.1:5000", "THYME_STS_ENDPOINT_URL": "http://127.0.0.1:5001"}
    assert env_endpoint(both, "sts") == "http://127.0.0.1:5001"
    assert env_endpoint({"THYME_STS_ENDPOINT_URL": ""}, "sts") is None


def test_status_says_when_a_lease_owner_is_gone() -> None:
    def row(owner_gone: bool | None) -> ShardStatus:
        return ShardStatus(
            shard="shardId-000000000000",
            lease_owner="host-a",
            lease_counter=24,
            kcl_checkpoint="7",
            store_position="7/0",
            watermark=None,
            ended=False,
            applied=7,
            dead_lettered=0,
            dead_letters_by_reason={},
            millis_behind_latest=None,
            last_batch_at=None,
            owner_last_seen=None if owner_gone is None else "2026-12-04T14:15:03.000Z",
            owner_gone=owner_gone,
        )

    def owner(status: ShardStatus) -> str:
        return as_table([status], {}).splitlines()[1].split("  ")[1]

    assert owner(row(None)) == "host-a"  # no worker report (KCL 2, a narrower policy): just the owner
    assert owner(row(False)) == "host-a"
    assert owner(row(True)) == "host-a (gone since 2026-12-04T14:15:03Z)"
