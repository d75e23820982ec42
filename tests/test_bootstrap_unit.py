"""The lease bootstrap's failure handling (our logic; the happy paths run against the local stack
in tests/e2e/test_bootstrap.py)."""

from __future__ import annotations

import logging
from typing import Any

import botocore.exceptions
import pytest

from thyme.connectors import KinesisSource
from thyme.kinesis.bootstrap import bootstrap_leases
from thyme.kinesis.properties import build_properties

ROLE = "arn:aws:iam::222233334444:role/secret-reader-name"


class FakeDynamoDB:
    """Just enough of a DynamoDB client: the table is missing, creation works, puts are denied."""

    class exceptions:
        class ResourceNotFoundException(Exception):
            pass

        class ResourceInUseException(Exception):
            pass

        class ConditionalCheckFailedException(Exception):
            pass

    def __init__(self) -> None:
        self.calls: list[str] = []

    def describe_table(self, TableName: str) -> dict[str, Any]:
        self.calls.append("describe_table")
        if "create_table" not in self.calls:
            raise self.exceptions.ResourceNotFoundException
        return {"Table": {"TableStatus": "ACTIVE"}}

    def create_table(self, **_: Any) -> None:
        self.calls.append("create_table")

    def put_item(self, **_: Any) -> None:
        self.calls.append("put_item")
        error = {"Error": {"Code": "AccessDeniedException", "Message": f"not authorized on {ROLE}"}}
        raise botocore.exceptions.ClientError(error, "PutItem")

    def delete_table(self, TableName: str) -> None:
        self.calls.append("delete_table")


class FakeKinesis:
    def list_shards(self, **_: Any) -> dict[str, Any]:
        shard = {"ShardId": "shardId-0", "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "9"}}
        return {"Shards": [{**shard, "SequenceNumberRange": {"StartingSequenceNumber": "1"}}]}


def test_a_half_prepared_table_is_removed_and_the_error_logged_without_the_role(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connection = KinesisSource("arn:aws:kinesis:eu-west-1:111122223333:stream/clicks", role_arn=ROLE).resolve()
    properties = build_properties(connection, dataset="SourcedClick", python="/usr/bin/python3", worker_id="w")
    dynamodb = FakeDynamoDB()
    with caplog.at_level(logging.WARNING, logger="thyme.kinesis"):
        assert bootstrap_leases(properties, kinesis=FakeKinesis(), dynamodb=dynamodb) is False
    # KCL must not find a table with only some leases: it would skip its own initial shard sync
    assert dynamodb.calls == ["describe_table", "create_table", "describe_table", "put_item", "delete_table"]
    (warning,) = caplog.records
    assert warning.fields == {"table": "thyme-SourcedClick-clicks", "error": "AccessDeniedException"}  # type: ignore[attr-defined]
    assert "secret-reader-name" not in caplog.text
