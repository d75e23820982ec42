"""AWS clients as the consumer uses them: Kinesis with the source's identity (the role assumed,
if any), DynamoDB (the lease table) with the consumer's own.

Error messages never quote AWS's text for an assumed role: it names the role and the session.
"""

from __future__ import annotations

import re
from typing import Any

from thyme.connectors.kinesis import KinesisConnection
from thyme.errors import ThymeError

_SESSION_NAME = re.compile(r"[^\w+=,.@-]")


class AwsError(ThymeError):
    """An AWS call the command needs failed: a missing stream, no credentials, access denied."""


def session_name(application: str) -> str:
    """An STS role session name for ``application`` (STS's alphabet, at most 64 characters)."""
    return _SESSION_NAME.sub("-", application)[:64]


def kinesis_client(
    region: str,
    endpoint_url: str | None,
    role_arn: str | None,
    external_id: str | None,
    sts_endpoint_url: str | None,
    session: str,
) -> Any:
    """A Kinesis client, with the role assumed (and its ExternalId sent) when there is one."""
    import boto3

    if role_arn is None:
        return boto3.client("kinesis", region_name=region, endpoint_url=endpoint_url)
    sts = boto3.client("sts", region_name=region, endpoint_url=sts_endpoint_url)
    extra = {"ExternalId": external_id} if external_id else {}
    found = sts.assume_role(RoleArn=role_arn, RoleSessionName=session, **extra)["Credentials"]
    return boto3.client(
        "kinesis",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=found["AccessKeyId"],
        aws_secret_access_key=found["SecretAccessKey"],
        aws_session_token=found["SessionToken"],
    )


def check_stream(connection: KinesisConnection, sts_endpoint_url: str | None, session: str) -> str:
    """The stream's status (``ACTIVE``, ``UPDATING``, …); :class:`AwsError` if it does not exist
    or cannot be described with the source's identity."""
    import botocore.exceptions

    where = f"stream {connection.stream_name} (account {connection.account}, region {connection.region})"
    try:
        client = kinesis_client(
            connection.region,
            connection.endpoint_url,
            connection.role_arn,
            connection.external_id,
            sts_endpoint_url,
            session,
        )
        summary = client.describe_stream_summary(StreamARN=connection.stream_arn)["StreamDescriptionSummary"]
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise AwsError(
                f"{where} does not exist. Check the dataset's stream_arn (and the account and region it "
                "names), or create the stream."
            ) from None
        raise AwsError(f"{where}: DescribeStreamSummary failed ({code or type(exc).__name__})") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise AwsError(f"{where}: DescribeStreamSummary failed ({type(exc).__name__})") from None
    return str(summary["StreamStatus"])
