"""Every validation rule of the SDK, with its whole message."""

import os
import runpy
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import pytest

from thyme import Field, Secret, dataset, field
from thyme.connectors import KinesisSource, source
from thyme.connectors.kinesis import InitialPosition
from thyme.connectors.source import source_spec
from thyme.duration import format_duration, parse_duration
from thyme.errors import ConfigError, DatasetError, SecretError, SourceError, ThymeError
from thyme.schema import dataset_schema

ARN = "arn:aws:kinesis:us-east-1:111122223333:stream/click-events"
ROLE = "arn:aws:iam::111122223333:role/reader"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "app.py"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "THYME_KINESIS_ROLE_ARN",
        "THYME_KINESIS_REGION",
        "THYME_KINESIS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_KINESIS",
    ):
        monkeypatch.delenv(name, raising=False)


def test_the_documentation_example_imports_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KINESIS_STREAM_ARN", ARN)
    namespace = runpy.run_path(str(EXAMPLE))
    klass = namespace["ClickEvent"]
    schema = dataset_schema(klass)
    assert schema is not None
    assert schema.name == "ClickEvent"
    assert schema.index is True
    assert [(f.name, f.type.kind, f.key, f.timestamp) for f in schema.fields] == [
        ("user_id", "str", True, False),
        ("page", "str", False, False),
        ("timestamp", "datetime", False, True),
    ]
    spec = source_spec(klass)
    assert spec is not None
    assert spec.max_lateness == timedelta(minutes=5)
    assert spec.connector.init_position == InitialPosition("TRIM_HORIZON")
    assert spec.connector.role_arn == Secret(env="MY_KINESIS_ROLE_ARN")
    assert spec.connector.region == "us-east-1"
    row = klass(user_id="u1", page="/", timestamp=datetime(2024, 1, 1, tzinfo=UTC))
    assert row.as_dict() == {"user_id": "u1", "page": "/", "timestamp": datetime(2024, 1, 1, tzinfo=UTC)}


# -- @dataset ----------------------------------------------------------------------------


def test_dataset_accepts_every_supported_type_plain_or_field() -> None:
    @dataset(version=3)
    class Everything:
        k: int = field(key=True)
        ts: datetime = field(timestamp=True)
        s: str
        f: Field[float]
        b: Field[bool] = field()
        d: date
        o: Optional[str]  # noqa: UP045 - both spellings are supported
        o2: int | None
        tags: list[str]
        attrs: dict[str, list[Optional[float]]]  # noqa: UP045

    schema = dataset_schema(Everything)
    assert schema is not None
    assert schema.version == 3
    assert schema.index is False
    assert {f.name: f.type.describe() for f in schema.fields} == {
        "k": "int",
        "ts": "datetime",
        "s": "str",
        "f": "float",
        "b": "bool",
        "d": "date",
        "o": "Optional[str]",
        "o2": "Optional[int]",
        "tags": "list[str]",
        "attrs": "dict[str, list[Optional[float]]]",
    }
    assert schema.key_field.name == "k"
    assert schema.timestamp_field.name == "ts"


def _bad_dataset(body: dict[str, Any], annotations: dict[str, Any], **options: Any) -> DatasetError:
    klass = type("Bad", (), {"__annotations__": annotations, "__module__": __name__, **body})
    with pytest.raises(DatasetError) as info:
        dataset(**options)(klass)
    return info.value


def test_unsupported_type_names_the_field() -> None:
    error = _bad_dataset(
        {"k": field(key=True), "ts": field(timestamp=True)},
        {"k": str, "ts": datetime, "amount": bytes},
    )
    assert str(error) == (
        "Bad.amount: unsupported field type (got 'bytes'). Use one of str, int, float, bool, "
        "datetime, date, Optional[T], list[T] or dict[str, T]."
    )
    assert isinstance(error, ValueError)
    assert isinstance(error, ThymeError)


def test_dict_keys_must_be_strings() -> None:
    error = _bad_dataset(
        {"k": field(key=True), "ts": field(timestamp=True)}, {"k": str, "ts": datetime, "m": dict[int, str]}
    )
    assert str(error).startswith("Bad.m: unsupported field type (got 'dict')")


@pytest.mark.parametrize(
    ("annotations", "body", "message"),
    [
        (
            {"k": str, "ts": datetime},
            {"ts": field(timestamp=True)},
            "@dataset on Bad: a dataset needs exactly one key field, found none. "
            "Mark one field, for example `user_id: Field[str] = field(key=True)`.",
        ),
        (
            {"a": str, "b": str, "ts": datetime},
            {"a": field(key=True), "b": field(key=True), "ts": field(timestamp=True)},
            "@dataset on Bad: a dataset needs exactly one key field, found 2: a, b. "
            "Mark one field, for example `user_id: Field[str] = field(key=True)`.",
        ),
        (
            {"k": str, "ts": datetime},
            {"k": field(key=True)},
            "@dataset on Bad: a dataset needs exactly one timestamp field, found none. "
            "Mark one field, for example `timestamp: Field[datetime] = field(timestamp=True)`.",
        ),
        (
            {"k": Optional[str], "ts": datetime},  # noqa: UP045
            {"k": field(key=True), "ts": field(timestamp=True)},
            "Bad.k: the key field must be a non-optional str or int (got 'Optional[str]'). "
            "Declare it as Field[str] or Field[int].",
        ),
        (
            {"k": float, "ts": datetime},
            {"k": field(key=True), "ts": field(timestamp=True)},
            "Bad.k: the key field must be a non-optional str or int (got 'float'). "
            "Declare it as Field[str] or Field[int].",
        ),
        (
            {"k": str, "ts": date},
            {"k": field(key=True), "ts": field(timestamp=True)},
            "Bad.ts: the timestamp field must be a non-optional datetime (got 'date'). Declare it as Field[datetime].",
        ),
        (
            {"k": str, "ts": datetime | None},
            {"k": field(key=True), "ts": field(timestamp=True)},
            "Bad.ts: the timestamp field must be a non-optional datetime (got 'Optional[datetime]'). "
            "Declare it as Field[datetime].",
        ),
        (
            {"k": str, "ts": datetime},
            {"k": field(key=True, timestamp=True)},
            "Bad.k: a field cannot be both the key and the timestamp. "
            "Use separate fields for key=True and timestamp=True.",
        ),
        (
            {"k": str, "ts": datetime, "x": int},
            {"k": field(key=True), "ts": field(timestamp=True), "x": 3},
            "Bad.x: dataset fields take no default values (got 3). Write `= field()` or nothing.",
        ),
        (
            {"k": str, "ts": datetime, "x": str | int},
            {"k": field(key=True), "ts": field(timestamp=True)},
            "Bad.x: unsupported field type (got 'str | int'). Use one of str, int, float, bool, "
            "datetime, date, Optional[T], list[T] or dict[str, T].",
        ),
    ],
)
def test_dataset_rules(annotations: dict[str, Any], body: dict[str, Any], message: str) -> None:
    assert str(_bad_dataset(body, annotations)) == message


def test_dataset_version_must_be_positive() -> None:
    error = _bad_dataset({"k": field(key=True), "ts": field(timestamp=True)}, {"k": str, "ts": datetime}, version=0)
    assert str(error) == (
        "@dataset(version=...) on Bad: version must be a whole number ≥ 1 (got 0). "
        "Start at version=1 and increase it when the fields change."
    )


# -- @source -----------------------------------------------------------------------------


def _dataset() -> type:
    @dataset(index=True)
    class Clicks:
        user_id: Field[str] = field(key=True)
        timestamp: Field[datetime] = field(timestamp=True)

    return Clicks


@pytest.mark.parametrize("option", ["cursor", "every"])
def test_streaming_source_rejects_polling_options(option: str) -> None:
    with pytest.raises(SourceError) as info:
        source(KinesisSource(ARN), **{option: "5m"})  # type: ignore[arg-type]
    assert str(info.value) == (
        f"@source(KinesisSource(...), {option}=...): KinesisSource is a streaming connector: it consumes "
        f"continuously and does not poll, so `{option}` cannot be set (got '5m'). Remove `{option}=...`."
    )


def test_backfill_is_not_supported() -> None:
    with pytest.raises(SourceError) as info:
        source(KinesisSource(ARN), backfill=True)
    assert str(info.value) == (
        "@source(KinesisSource(...), backfill=...): backfilling a KinesisSource-sourced dataset on commit is "
        "not supported (got True). Rely on the live ingestion path; to re-read retained records, start a "
        'new application with init_position="trim_horizon" or a timestamp.'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("0s", timedelta(0)),
        (timedelta(seconds=7), timedelta(seconds=7)),
    ],
)
def test_durations(text: str | timedelta, expected: timedelta) -> None:
    assert parse_duration(text, "x") == expected
    assert parse_duration(format_duration(expected), "x") == expected


@pytest.mark.parametrize("bad", ["5", "five minutes", "-5m", "5M", "", 5])
def test_bad_duration(bad: object) -> None:
    with pytest.raises(SourceError) as info:
        source(KinesisSource(ARN), max_lateness=bad)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"@source(max_lateness=...): not a duration (got {bad!r}). Write it as a number and a unit "
        '(ms, s, m, h, d, w), for example "30s", "5m", "1h30m" or "1d".'
    )


def test_source_settings_and_cdc() -> None:
    klass = source(KinesisSource(ARN), max_lateness="30s", cdc="upsert", max_future_skew="10m")(_dataset())
    spec = source_spec(klass)
    assert spec is not None
    assert (spec.max_lateness, spec.max_future_skew, spec.cdc) == (
        timedelta(seconds=30),
        timedelta(minutes=10),
        "upsert",
    )
    assert source_spec(source(KinesisSource(ARN))(_dataset())).max_lateness is None  # type: ignore[union-attr]
    with pytest.raises(SourceError) as info:
        source(KinesisSource(ARN), cdc="merge")
    assert (
        str(info.value)
        == '@source(cdc=...): unknown change-data-capture mode (got \'merge\'). Use "append" or "upsert".'
    )


def test_source_must_sit_above_dataset() -> None:
    class Plain:
        user_id: str

    with pytest.raises(SourceError) as info:
        source(KinesisSource(ARN))(Plain)
    assert str(info.value) == (
        "@source on Plain: decorates a @dataset class. Put @source(...) above @dataset(...), as in the "
        "documentation example."
    )
    klass = source(KinesisSource(ARN))(_dataset())
    with pytest.raises(SourceError, match="a dataset takes one Kinesis source"):
        source(KinesisSource(ARN))(klass)


# -- KinesisSource -----------------------------------------------------------------------

STREAM_ARN_FIX = (
    "Pass the stream's ARN, arn:<partition>:kinesis:<region>:<12-digit account>:stream/<name>, with "
    "partition aws, aws-cn or aws-us-gov (`aws kinesis describe-stream-summary --stream-name NAME` prints it)."
)


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:kinesis:us-east-1:111122223333:stream/click-events",
        "arn:aws-cn:kinesis:cn-north-1:111122223333:stream/a.b_c-d",
        "arn:aws-us-gov:kinesis:us-gov-west-1:111122223333:stream/s",
    ],
)
def test_stream_arn_partitions(arn: str) -> None:
    source_ = KinesisSource(arn)
    assert source_.stream_arn == arn
    assert source_.region == arn.split(":")[3]


@pytest.mark.parametrize(
    "arn",
    [
        "click-events",
        "arn:aws:kinesis:us-east-1:111122223333:stream/",
        "arn:aws:sqs:us-east-1:111122223333:queue",
        "arn:aws:kinesis:us-east-1:1111:stream/x",
        "arn:aws-iso:kinesis:us-iso-east-1:111122223333:stream/x",
        " arn:aws:kinesis:us-east-1:111122223333:stream/x",
    ],
)
def test_bad_stream_arn(arn: str) -> None:
    with pytest.raises(SourceError) as info:
        KinesisSource(arn)
    assert str(info.value) == f"KinesisSource(stream_arn=...): not a Kinesis stream ARN (got {arn!r}). {STREAM_ARN_FIX}"


def test_stream_arn_region_must_belong_to_partition() -> None:
    arn = "arn:aws-cn:kinesis:us-east-1:111122223333:stream/x"
    with pytest.raises(SourceError) as info:
        KinesisSource(arn)
    assert str(info.value) == (
        f"KinesisSource(stream_arn=...): region us-east-1 is not in partition aws-cn (got {arn!r}). {STREAM_ARN_FIX}"
    )


def test_stream_arn_is_never_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THYME_KINESIS_STREAM_ARN", ARN)
    with pytest.raises(TypeError):
        KinesisSource()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("latest", InitialPosition("LATEST")),
        ("trim_horizon", InitialPosition("TRIM_HORIZON")),
        ("TRIM_HORIZON", InitialPosition("TRIM_HORIZON")),
        ("2024-05-01T12:00:00Z", InitialPosition("AT_TIMESTAMP", datetime(2024, 5, 1, 12, tzinfo=UTC))),
        ("2024-05-01T14:00:00+02:00", InitialPosition("AT_TIMESTAMP", datetime(2024, 5, 1, 12, tzinfo=UTC))),
    ],
)
def test_init_position(value: str, expected: InitialPosition) -> None:
    assert KinesisSource(ARN, init_position=value).init_position == expected


def test_init_position_default_is_latest_and_not_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THYME_KINESIS_INIT_POSITION", "trim_horizon")
    assert KinesisSource(ARN).init_position == InitialPosition("LATEST")


def test_naive_init_position_is_rejected() -> None:
    with pytest.raises(SourceError) as info:
        KinesisSource(ARN, init_position="2024-05-01T12:00:00")
    assert str(info.value) == (
        "KinesisSource(init_position=...): the timestamp has no time zone (got '2024-05-01T12:00:00'). "
        'Add "Z" (UTC) or an offset such as "+02:00", for example "2024-05-01T12:00:00Z".'
    )


def test_bad_init_position() -> None:
    with pytest.raises(SourceError) as info:
        KinesisSource(ARN, init_position="earliest")
    assert str(info.value) == (
        "KinesisSource(init_position=...): not a start position (got 'earliest'). Use \"latest\", "
        '"trim_horizon", or an ISO-8601 timestamp with a zone such as "2024-05-01T12:00:00Z".'
    )


def test_format() -> None:
    assert KinesisSource(ARN, format="json").format == "json"
    with pytest.raises(SourceError) as info:
        KinesisSource(ARN, format="avro")
    assert str(info.value) == (
        "KinesisSource(format=...): unsupported format (got 'avro'). "
        "Supported formats: 'json', 'cloudwatch_logs', 'cloudfront_realtime'."
    )


def test_region_default_env_and_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KinesisSource(ARN).region == "us-east-1"
    eu = "arn:aws:kinesis:eu-west-1:111122223333:stream/s"
    assert KinesisSource(eu).region == "eu-west-1"
    monkeypatch.setenv("THYME_KINESIS_REGION", "us-east-1")
    assert KinesisSource(ARN).region == "us-east-1"
    # an explicit argument beats the environment
    assert KinesisSource(eu, region="eu-west-1").region == "eu-west-1"
    with pytest.raises(SourceError) as info:
        KinesisSource(eu)
    assert str(info.value) == (
        "THYME_KINESIS_REGION (environment): region us-east-1 differs from the region in stream_arn, "
        "eu-west-1. A stream is read in its own region: set the region to eu-west-1 or leave it unset, "
        "or correct stream_arn."
    )


def test_region_mismatch_names_both() -> None:
    with pytest.raises(SourceError) as info:
        KinesisSource(ARN, region="eu-west-1")
    assert str(info.value) == (
        "KinesisSource(region=...): region eu-west-1 differs from the region in stream_arn, us-east-1. "
        "A stream is read in its own region: set the region to us-east-1 or leave it unset, or correct stream_arn."
    )
    with pytest.raises(SourceError) as info:
        KinesisSource(ARN, region="Virginia")
    assert str(info.value) == (
        "KinesisSource(region=...): not an AWS region name (got 'Virginia'). Use a name such as \"us-east-1\"."
    )


def test_endpoint_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KinesisSource(ARN).endpoint_url is None
    monkeypatch.setenv("THYME_KINESIS_ENDPOINT_URL", "http://127.0.0.1:4566/")
    assert KinesisSource(ARN).endpoint_url == "http://127.0.0.1:4566"
    assert KinesisSource(ARN, endpoint_url="https://kinesis.example:443").endpoint_url == "https://kinesis.example:443"
    # the AWS SDKs' own variable, after ours: one export serves `aws`, boto3 and the consumer
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4567")
    assert KinesisSource(ARN).endpoint_url == "http://127.0.0.1:4566"
    monkeypatch.delenv("THYME_KINESIS_ENDPOINT_URL")
    assert KinesisSource(ARN).endpoint_url == "http://127.0.0.1:4567"
    monkeypatch.delenv("AWS_ENDPOINT_URL_KINESIS")
    with pytest.raises(SourceError) as info:
        KinesisSource(ARN, endpoint_url="localhost:4566")
    assert str(info.value) == (
        "KinesisSource(endpoint_url=...): not an endpoint URL (got 'localhost:4566'). Use http(s)://host[:port] "
        'without credentials, for example "http://127.0.0.1:4566".'
    )
    with pytest.raises(SourceError) as info:
        KinesisSource(ARN, endpoint_url="http://user:hunter2@host:1")
    assert "hunter2" not in str(info.value)
    assert "(got <redacted>)" in str(info.value)


def test_role_arn_plain_secret_env_and_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KinesisSource(ARN).role_arn is None
    assert KinesisSource(ARN).resolve().role_arn is None
    assert KinesisSource(ARN, role_arn=ROLE).resolve().role_arn == ROLE
    monkeypatch.setenv("MY_ROLE", ROLE)
    assert KinesisSource(ARN, role_arn=Secret(env="MY_ROLE")).resolve().role_arn == ROLE
    other = "arn:aws:iam::444455556666:role/fallback"
    monkeypatch.setenv("THYME_KINESIS_ROLE_ARN", other)
    assert KinesisSource(ARN).resolve().role_arn == other
    assert KinesisSource(ARN, role_arn=ROLE).resolve().role_arn == ROLE


def test_role_arn_is_validated() -> None:
    with pytest.raises(SourceError) as info:
        KinesisSource(ARN, role_arn="arn:aws:iam::111122223333:user/bob")
    assert str(info.value) == (
        "KinesisSource(role_arn=...): not an IAM role ARN (got 'arn:aws:iam::111122223333:user/bob'). Use "
        "arn:<partition>:iam::<12-digit account>:role/<name>, the role the consumer assumes to read the stream."
    )


def test_secret_role_is_resolved_late_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    source_ = KinesisSource(ARN, role_arn=Secret(env="MY_ROLE"))  # unset: fine until start
    with pytest.raises(SecretError) as info:
        source_.resolve()
    assert str(info.value) == (
        "Secret(env='MY_ROLE'): environment variable MY_ROLE is not set. Set MY_ROLE in the consumer's "
        "environment (for example from your secret manager) before starting it."
    )
    monkeypatch.setenv("MY_ROLE", "not-a-role-but-very-secret")
    with pytest.raises(SourceError) as err:
        source_.resolve()
    assert "very-secret" not in str(err.value)
    assert str(err.value).startswith(
        "KinesisSource(role_arn=Secret(env='MY_ROLE')): not an IAM role ARN (got <redacted>)."
    )
    monkeypatch.setenv("MY_ROLE", ROLE)
    resolved = source_.resolve()
    assert resolved.role_arn == ROLE
    for text in (repr(source_), str(source_), repr(resolved)):
        assert ROLE not in text
    assert "role_arn=Secret(env='MY_ROLE')" in repr(source_)
    assert ROLE not in repr(KinesisSource(ARN, role_arn=ROLE))


def test_secret() -> None:
    secret = Secret(env="TOKEN")
    assert repr(secret) == str(secret) == "Secret(env='TOKEN')"
    assert secret.resolve({"TOKEN": "v"}) == "v"
    with pytest.raises(SecretError) as info:
        Secret(env="1BAD")
    assert str(info.value) == (
        "Secret(env=...): not an environment variable name (got '1BAD'). Use letters, digits and "
        'underscores, not starting with a digit, for example Secret(env="MY_KINESIS_ROLE_ARN").'
    )
    with pytest.raises(SecretError, match="environment variable TOKEN is not set"):
        secret.resolve({"TOKEN": ""})


def test_errors_share_one_family() -> None:
    for klass in (DatasetError, SourceError, SecretError):
        assert issubclass(klass, ConfigError)
        assert issubclass(klass, ValueError)
        assert issubclass(klass, ThymeError)


def test_example_file_error_when_env_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_KINESIS_STREAM_ARN", raising=False)
    with pytest.raises(KeyError):
        runpy.run_path(str(EXAMPLE))
    assert "MY_KINESIS_STREAM_ARN" not in os.environ
    assert sys.modules.get("thyme") is not None


def test_importing_the_sdk_loads_no_store_and_no_driver() -> None:
    """What a user declares must import anywhere: a serving process, a notebook, a test."""
    import subprocess

    code = (
        "import sys\n"
        "import thyme\n"
        "from thyme import Field, Secret, dataset, field\n"
        "from thyme.connectors import KinesisSource, source\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('thyme.store', 'thyme.serving', 'sqlite3', "
        "'psycopg', 'boto3', 'amazon_kclpy', 'record_processor')))\n"
        "assert loaded == [], loaded\n"
        "assert thyme.lookup.__module__ == 'thyme.serving'\n"  # loaded on first use
        "assert 'thyme.store' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
