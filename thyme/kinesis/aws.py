"""AWS as the consumer meets it: Kinesis with the source's identity (the role assumed, if any),
DynamoDB (the lease table) with the consumer's own; and every way that can fail, said in one
line that names the identity, the call and the fix.

Calls here are bounded: a 3 s connect timeout, a 10 s read timeout, and botocore's standard
retries (throttling, 5xx, dropped connections) up to 4 attempts. Error messages never quote
AWS's own text for an assumed role (it names the role and the session) and never show a role
ARN that came from a :class:`~thyme.Secret` (:attr:`KinesisConnection.role_label`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

from thyme.connectors.kinesis import KinesisConnection
from thyme.errors import ThymeError

_SESSION_NAME = re.compile(r"[^\w+=,.@-]")
T = TypeVar("T")

ACTIVE_STATES: Final = ("ACTIVE", "UPDATING")
"""Stream states a consumer can read."""
_DENIED: Final = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError", "NotAuthorized"}
)
_EXPIRED: Final = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"})
_UNKNOWN_KEY: Final = frozenset(
    {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch", "InvalidSignatureException"}
)
FATAL_CODES: Final = _DENIED | _EXPIRED | _UNKNOWN_KEY | {"ResourceNotFoundException"}
"""Error codes that no retry fixes: a running consumer that keeps meeting them stops."""


class AwsError(ThymeError):
    """An AWS call the command needs failed: a missing stream, no credentials, access denied.

    ``fatal``: retrying cannot fix it (as opposed to throttling or an endpoint that is down)."""

    def __init__(self, message: str, *, fatal: bool = True) -> None:
        super().__init__(message)
        self.fatal = fatal


def session_name(application: str) -> str:
    """An STS role session name for ``application`` (STS's alphabet, at most 64 characters)."""
    return _SESSION_NAME.sub("-", application)[:64]


def client_config() -> Any:
    """Bounded timeouts and retries for every call made outside KCL."""
    from botocore.config import Config

    return Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 4, "mode": "standard"})


def explain(exc: BaseException, identity: str, action: str, resource: str, endpoint: str | None = None) -> AwsError:
    """One line for a failed call: who (``identity``) could not do what (``action``, the IAM action,
    on ``resource``), why, and the fix. ``exc`` is any botocore error."""
    import botocore.exceptions as bx

    where = f" at {endpoint}" if endpoint else ""
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return AwsError(
            f"no AWS credentials for {identity} (needed for {action}): give the consumer an identity — "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an ECS task role or EKS IRSA"
        )
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return AwsError(
            f"cannot reach the AWS endpoint{where} for {action} ({type(exc).__name__}): check the endpoint URL "
            "(endpoint_url, THYME_*_ENDPOINT_URL) and the network, or try again",
            fatal=False,
        )
    if isinstance(exc, bx.ClientError):
        return _client_error(exc, identity, action, resource)
    if isinstance(exc, bx.BotoCoreError):
        return AwsError(f"{action} on {resource}{where} failed ({type(exc).__name__})", fatal=False)
    raise exc


def _client_error(exc: Any, identity: str, action: str, resource: str) -> AwsError:
    code = str(exc.response.get("Error", {}).get("Code", "")) or "an error"
    if code in _DENIED:
        return AwsError(f"{identity} may not call {action} on {resource} ({code}): grant it {action}")
    if code in _EXPIRED:
        return AwsError(f"the credentials of {identity} have expired ({code}): refresh them, or restart with new ones")
    if code in _UNKNOWN_KEY:
        return AwsError(
            f"AWS does not recognise the credentials of {identity} ({code}): check the access key, and that "
            "the region and endpoint are the ones the credentials belong to"
        )
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code.startswith("Throttl") or code in ("LimitExceededException", "RequestLimitExceeded") or status >= 500:
        return AwsError(f"{action} on {resource} kept failing ({code}) after retries: try again", fatal=False)
    return AwsError(f"{action} on {resource} failed ({code})", fatal=code in FATAL_CODES)


def calling(identity: str, action: str, resource: str, endpoint: str | None, call: Callable[[], T]) -> T:
    """``call()``, its botocore errors turned into :class:`AwsError` by :func:`explain`."""
    import botocore.exceptions

    try:
        return call()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain(exc, identity, action, resource, endpoint) from None


def kinesis_client(
    region: str,
    endpoint_url: str | None,
    role_arn: str | None,
    external_id: str | None,
    sts_endpoint_url: str | None,
    session: str,
) -> Any:
    """A Kinesis client, with the role assumed (and its ExternalId sent) when there is one.
    Raises botocore's errors (the callers explain them)."""
    import boto3

    config = client_config()
    if role_arn is None:
        return boto3.client("kinesis", region_name=region, endpoint_url=endpoint_url, config=config)
    sts = boto3.client("sts", region_name=region, endpoint_url=sts_endpoint_url, config=config)
    extra = {"ExternalId": external_id} if external_id else {}
    found = sts.assume_role(RoleArn=role_arn, RoleSessionName=session, **extra)["Credentials"]
    return boto3.client(
        "kinesis",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=found["AccessKeyId"],
        aws_secret_access_key=found["SecretAccessKey"],
        aws_session_token=found["SessionToken"],
        config=config,
    )


def source_kinesis(connection: KinesisConnection, sts_endpoint_url: str | None, session: str) -> Any:
    """:func:`kinesis_client` for a source, the role assumption's failures explained."""
    if connection.role_arn is None:
        return kinesis_client(connection.region, connection.endpoint_url, None, None, None, session)
    trust = " (and its ExternalId)" if connection.external_id else ""
    return calling(
        "the consumer's own identity",
        "sts:AssumeRole",
        f"{connection.kinesis_identity}; the role's trust policy must allow the consumer{trust}",
        sts_endpoint_url,
        lambda: kinesis_client(
            connection.region,
            connection.endpoint_url,
            connection.role_arn,
            connection.external_id,
            sts_endpoint_url,
            session,
        ),
    )


def stream_label(connection: KinesisConnection) -> str:
    return f"stream {connection.stream_name} (account {connection.account}, region {connection.region})"


def check_stream(connection: KinesisConnection, client: Any) -> str:
    """The stream's status (``ACTIVE``, ``UPDATING``, …), asked with ``client`` (from
    :func:`source_kinesis`); :class:`AwsError` if it does not exist or cannot be described."""
    import botocore.exceptions

    where = stream_label(connection)
    try:
        summary = client.describe_stream_summary(StreamARN=connection.stream_arn)["StreamDescriptionSummary"]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        if isinstance(exc, botocore.exceptions.ClientError) and (
            exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException"
        ):
            raise AwsError(
                f"{where} does not exist. Check the dataset's stream_arn (and the account and region it "
                "names), or create the stream."
            ) from None
        raise explain(
            exc, connection.kinesis_identity, "kinesis:DescribeStreamSummary", where, connection.endpoint_url
        ) from None
    return str(summary["StreamStatus"])


def own_credentials() -> str:
    """Where the consumer's own credentials come from (``env``, ``shared-credentials-file``,
    ``container-role``, ``iam-role``, ``assume-role-with-web-identity``, …), without a network
    call; :class:`AwsError` if there are none."""
    import boto3

    found = boto3.Session().get_credentials()
    if found is None:
        raise AwsError(
            "no AWS credentials for the consumer's own identity (it reads and writes the lease table, and "
            "assumes the role if there is one): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
            "or run with an ECS task role or EKS IRSA"
        )
    return str(found.method)


def list_shards(client: Any, **stream: str) -> list[dict[str, Any]]:
    """Every shard of a stream (closed ones within retention included), all pages of ``ListShards``;
    ``stream`` is ``StreamARN=...`` or ``StreamName=...``. Raises botocore's errors."""
    page = client.list_shards(**stream)
    shards: list[dict[str, Any]] = list(page.get("Shards", []))
    while page.get("NextToken"):
        page = client.list_shards(NextToken=page["NextToken"])
        shards += page.get("Shards", [])
    return shards


def shard_parents(client: Any, stream_arn: str) -> dict[str, tuple[str, ...]]:
    """Every shard of the stream and its parents (``ParentShardId``, ``AdjacentParentShardId``).
    Raises botocore's errors."""
    return {
        shard["ShardId"]: tuple(p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p)
        for shard in list_shards(client, StreamARN=stream_arn)
    }
