"""``KinesisSource``: a Kinesis Data Stream consumed continuously, shard by shard.

Per-stream settings (``stream_arn``, ``init_position``, ``format``) come only from the
arguments. Connection settings fall back to ``THYME_KINESIS_<FIELD>`` environment variables
(an explicit argument always wins). ``role_arn`` may be a :class:`~thyme.Secret`; it is
resolved only by :meth:`KinesisSource.resolve`, when the consumer starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal
from urllib.parse import urlsplit

from thyme.connectors.formats import FormatSpec, check_format
from thyme.errors import REDACTED, SourceError
from thyme.secret import Secret

ENV_ROLE_ARN: Final = "THYME_KINESIS_ROLE_ARN"
ENV_EXTERNAL_ID: Final = "THYME_KINESIS_EXTERNAL_ID"
_EXTERNAL_ID: Final = re.compile(r"[A-Za-z0-9_+.@:/-]{2,1224}")
"""What STS accepts as an ExternalId, less ``=`` and ``,``: KCL's properties syntax splits on them
(``externalId=a=b`` is dropped with a WARN that prints it; a comma starts another provider)."""
ENV_REGION: Final = "THYME_KINESIS_REGION"
ENV_ENDPOINT_URL: Final = "THYME_KINESIS_ENDPOINT_URL"
AWS_ENV_ENDPOINT_URL: Final = "AWS_ENDPOINT_URL_KINESIS"
"""The AWS SDKs' own variable for the Kinesis endpoint, honoured after ours (``aws`` and boto3
read it too, so one export serves them all)."""
DEFAULT_REGION: Final = "us-east-1"

_STREAM_ARN: Final = re.compile(
    r"arn:(?P<partition>aws|aws-cn|aws-us-gov):kinesis:(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+):"
    r"(?P<account>\d{12}):stream/(?P<name>[A-Za-z0-9_.-]{1,128})"
)
_ROLE_ARN: Final = re.compile(
    r"arn:(?:aws|aws-cn|aws-us-gov):iam::\d{12}:role/(?:[\x21-\x7e]{1,510}/)?[\w+=,.@-]{1,64}"
)
_REGION: Final = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_PARTITION_REGION_PREFIX: Final = {"aws-cn": "cn-", "aws-us-gov": "us-gov-"}

_STREAM_ARN_FIX: Final = (
    "Pass the stream's ARN, arn:<partition>:kinesis:<region>:<12-digit account>:stream/<name>, "
    "with partition aws, aws-cn or aws-us-gov (`aws kinesis describe-stream-summary "
    "--stream-name NAME` prints it)."
)


@dataclass(frozen=True)
class InitialPosition:
    """Where a new application starts reading a shard that has no checkpoint yet."""

    kind: Literal["LATEST", "TRIM_HORIZON", "AT_TIMESTAMP"]
    timestamp: datetime | None = None
    """UTC arrival time, for ``AT_TIMESTAMP`` only."""

    def __str__(self) -> str:
        if self.timestamp is not None:
            return self.timestamp.isoformat().replace("+00:00", "Z")
        return self.kind.lower()


def parse_init_position(value: object) -> InitialPosition:
    """``"latest"``, ``"trim_horizon"`` or an ISO-8601 timestamp with a zone."""
    where = "KinesisSource(init_position=...)"
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        word = value.strip().lower()
        if word == "latest":
            return InitialPosition("LATEST")
        if word == "trim_horizon":
            return InitialPosition("TRIM_HORIZON")
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise SourceError(
                where,
                "not a start position",
                'Use "latest", "trim_horizon", or an ISO-8601 timestamp with a zone such as "2024-05-01T12:00:00Z".',
                value=value,
            ) from None
    else:
        raise SourceError(
            where,
            "not a start position",
            'Use "latest", "trim_horizon", or an ISO-8601 timestamp string.',
            value=value,
        )
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise SourceError(
            where,
            "the timestamp has no time zone",
            'Add "Z" (UTC) or an offset such as "+02:00", for example "2024-05-01T12:00:00Z".',
            value=value,
        )
    return InitialPosition("AT_TIMESTAMP", moment.astimezone(UTC))


@dataclass(frozen=True)
class KinesisConnection:
    """A :class:`KinesisSource` with every setting resolved, ready to start a consumer.

    ``role_arn`` holds the resolved value; ``repr`` never shows it.
    """

    stream_arn: str
    stream_name: str
    account: str
    partition: str
    region: str
    init_position: InitialPosition
    format: str
    endpoint_url: str | None
    role_arn: str | None
    external_id: str | None = None
    """The ExternalId the role's trust policy requires, if any (resolved; never shown)."""
    role_label: str | None = None
    """How messages name the role: ``role NAME (account ID)``, or, when the ARN is a
    :class:`~thyme.Secret`, ``the role in Secret(env='VAR') (account ID)`` (its name is part of
    the secret)."""

    @property
    def kinesis_identity(self) -> str:
        """Who reads the stream, for messages."""
        return self.role_label or "the consumer's own identity"

    def __repr__(self) -> str:
        role = "None" if self.role_arn is None else repr(REDACTED)
        return (
            f"KinesisConnection(stream_arn={self.stream_arn!r}, region={self.region!r}, "
            f"init_position={str(self.init_position)!r}, format={self.format!r}, "
            f"endpoint_url={self.endpoint_url!r}, role_arn={role})"
        )


class KinesisSource:
    """Consume an AWS Kinesis Data Stream continuously.

    Args:
        stream_arn: the stream's ARN (required; never read from the environment).
        init_position: ``"latest"`` (default), ``"trim_horizon"``, or an ISO-8601 timestamp
            with a zone (Kinesis arrival time). Used only when the application first sees a shard.
        format: the record format: ``"json"`` (one JSON object per record, gzip or zlib
            compressed or not), ``"cloudwatch_logs"`` (a CloudWatch Logs subscription: one row
            per log event) or ``"cloudfront_realtime"`` (CloudFront real-time logs; needs
            ``fields``). See ``thyme.connectors.formats``.
        fields: for ``"cloudfront_realtime"`` only: the fields of the distribution's real-time
            log configuration, in order (``["timestamp", "c-ip", "sc-status", ...]``).
        role_arn: an IAM role to assume for reading the stream (cross-account), as a string or
            a :class:`~thyme.Secret`. Default: ``THYME_KINESIS_ROLE_ARN``, else none (the
            consumer's own identity).
        region: the AWS region. Default: ``THYME_KINESIS_REGION``, else the stream ARN's region.
        endpoint_url: a custom endpoint (LocalStack, a local stack). Default:
            ``THYME_KINESIS_ENDPOINT_URL``.
        external_id: the ``sts:ExternalId`` the role's trust policy asks for (a string or a
            :class:`~thyme.Secret`); only with ``role_arn``. Default: ``THYME_KINESIS_EXTERNAL_ID``.
    """

    streaming: Final = True
    """Streaming connectors consume continuously; they reject ``cursor`` and ``every``."""

    def __init__(
        self,
        stream_arn: str,
        init_position: str | datetime = "latest",
        format: str = "json",  # noqa: A002 - the documented parameter name
        role_arn: str | Secret | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        external_id: str | Secret | None = None,
        fields: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        match = _STREAM_ARN.fullmatch(stream_arn) if isinstance(stream_arn, str) else None
        if match is None:
            raise SourceError(
                "KinesisSource(stream_arn=...)",
                "not a Kinesis stream ARN",
                _STREAM_ARN_FIX,
                value=stream_arn,
            )
        prefix = _PARTITION_REGION_PREFIX.get(match["partition"])
        if prefix and not match["region"].startswith(prefix):
            raise SourceError(
                "KinesisSource(stream_arn=...)",
                f"region {match['region']} is not in partition {match['partition']}",
                _STREAM_ARN_FIX,
                value=stream_arn,
            )
        self._stream_arn = stream_arn
        self._arn = match
        self._init_position = parse_init_position(init_position)
        self._format = FormatSpec(*check_format(format, fields))
        self._region = self._pick_region(region)
        self._endpoint_url = self._pick_endpoint(endpoint_url)
        self._role_arn = self._pick_role(role_arn)
        self._external_id = self._pick_external_id(external_id)

    # -- construction helpers -------------------------------------------------------------

    def _pick_region(self, region: str | None) -> str:
        arn_region = self._arn["region"]
        picked = _explicit_or_env(region, "region", ENV_REGION)
        if picked is None:
            return arn_region
        origin, value = picked
        if not isinstance(value, str) or not _REGION.fullmatch(value):
            raise SourceError(origin, "not an AWS region name", 'Use a name such as "us-east-1".', value=value)
        if value != arn_region:
            raise SourceError(
                origin,
                f"region {value} differs from the region in stream_arn, {arn_region}",
                f"A stream is read in its own region: set the region to {arn_region} or leave it "
                "unset, or correct stream_arn.",
            )
        return value

    @staticmethod
    def _pick_endpoint(endpoint_url: str | None) -> str | None:
        picked = _explicit_or_env(endpoint_url, "endpoint_url", ENV_ENDPOINT_URL, AWS_ENV_ENDPOINT_URL)
        if picked is None:
            return None
        origin, value = picked
        parts = urlsplit(value) if isinstance(value, str) else None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username is not None
            or parts.query
            or parts.fragment
        ):
            raise SourceError(
                origin,
                "not an endpoint URL",
                'Use http(s)://host[:port] without credentials, for example "http://127.0.0.1:4566".',
                value=value if parts is None or parts.username is None else REDACTED,
            )
        assert isinstance(value, str)  # urlsplit accepted it
        return value.rstrip("/")

    @staticmethod
    def _pick_role(role_arn: str | Secret | None) -> str | Secret | None:
        if role_arn is None:
            return Secret(env=ENV_ROLE_ARN) if os.environ.get(ENV_ROLE_ARN) else None
        if isinstance(role_arn, Secret):
            return role_arn
        if isinstance(role_arn, str):
            _check_role_arn(role_arn, "KinesisSource(role_arn=...)")
            return role_arn
        raise SourceError(
            "KinesisSource(role_arn=...)",
            "must be a string or a Secret",
            'Pass the role ARN, or Secret(env="VARIABLE") naming where it is held.',
            value=type(role_arn).__name__,
        )

    def _pick_external_id(self, external_id: str | Secret | None) -> str | Secret | None:
        if external_id is None:
            return Secret(env=ENV_EXTERNAL_ID) if os.environ.get(ENV_EXTERNAL_ID) else None
        if not isinstance(external_id, str | Secret):
            raise SourceError(
                "KinesisSource(external_id=...)",
                "must be a string or a Secret",
                'Pass the ExternalId, or Secret(env="VARIABLE") naming where it is held.',
                value=type(external_id).__name__,
            )
        if self._role_arn is None:
            raise SourceError(
                "KinesisSource(external_id=...)",
                "an ExternalId is only sent when assuming a role",
                "Set role_arn (the role whose trust policy requires this ExternalId), or remove external_id.",
                value=REDACTED,
            )
        if isinstance(external_id, str):
            _check_external_id(external_id, "KinesisSource(external_id=...)")
        return external_id

    # -- public ---------------------------------------------------------------------------

    @property
    def stream_arn(self) -> str:
        return self._stream_arn

    @property
    def stream_name(self) -> str:
        return self._arn["name"]

    @property
    def init_position(self) -> InitialPosition:
        return self._init_position

    @property
    def format(self) -> str:
        return self._format.name

    @property
    def record_format(self) -> FormatSpec:
        """The format with its settings (the CloudFront fields)."""
        return self._format

    @property
    def region(self) -> str:
        return self._region

    @property
    def endpoint_url(self) -> str | None:
        return self._endpoint_url

    @property
    def role_arn(self) -> str | Secret | None:
        """The role as given: a string, a :class:`Secret` reference, or None."""
        return self._role_arn

    def resolve(self, environ: Mapping[str, str] | None = None) -> KinesisConnection:
        """Resolve the role secret (if any) and return the connection settings.

        Raises :class:`~thyme.errors.SecretError` if a secret's variable is unset, and
        :class:`~thyme.errors.SourceError` if the resolved role is not an IAM role ARN.
        """
        role = self._role_arn
        if isinstance(role, Secret):
            role = role.resolve(environ)
            _check_role_arn(role, f"KinesisSource(role_arn={self._role_arn!r})", secret=True)
        external_id = self._external_id
        if isinstance(external_id, Secret):
            external_id = external_id.resolve(environ)
            _check_external_id(external_id, f"KinesisSource(external_id={self._external_id!r})")
        return KinesisConnection(
            stream_arn=self._stream_arn,
            stream_name=self._arn["name"],
            account=self._arn["account"],
            partition=self._arn["partition"],
            region=self._region,
            init_position=self._init_position,
            format=self._format.name,
            endpoint_url=self._endpoint_url,
            role_arn=role,
            external_id=external_id,
            role_label=None if role is None else _role_label(role, self._role_arn),
        )

    def __repr__(self) -> str:
        role = self._role_arn
        shown = "None" if role is None else repr(role) if isinstance(role, Secret) else repr(REDACTED)
        return (
            f"KinesisSource(stream_arn={self._stream_arn!r}, init_position={str(self._init_position)!r}, "
            f"format={str(self._format)!r}, role_arn={shown}, region={self._region!r}, "
            f"endpoint_url={self._endpoint_url!r})"
        )


def _explicit_or_env(value: object, parameter: str, *envs: str) -> tuple[str, object] | None:
    """``(where it came from, value)``: the argument if given, else the first of the environment
    variables set and not empty, else None. An explicit argument always wins."""
    if value is not None:
        return f"KinesisSource({parameter}=...)", value
    for env in envs:
        if os.environ.get(env):
            return f"{env} (environment)", os.environ[env]
    return None


def _role_label(arn: str, given: str | Secret | None) -> str:
    account, _, name = arn.split(":", 4)[4].partition(":role/")
    if isinstance(given, Secret):
        return f"the role in {given!r} (account {account})"
    return f"role {name.rsplit('/', 1)[-1]} (account {account})"


def _check_external_id(value: str, where: str) -> None:
    if not _EXTERNAL_ID.fullmatch(value):
        raise SourceError(
            where,
            "not a valid ExternalId",
            "Use 2 to 1224 characters among A-Z a-z 0-9 and + . @ : / - _ (STS also allows = and , but KCL's "
            "properties file cannot carry them).",
            value=REDACTED,
        )


def _check_role_arn(value: str, where: str, secret: bool = False) -> None:
    if not _ROLE_ARN.fullmatch(value):
        raise SourceError(
            where,
            "not an IAM role ARN",
            "Use arn:<partition>:iam::<12-digit account>:role/<name>, the role the consumer "
            "assumes to read the stream.",
            value=REDACTED if secret else value,
        )
