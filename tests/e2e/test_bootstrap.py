"""The lease-table bootstrap for a new application, against the local stack's DynamoDB and Kinesis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import streams

from tests.e2e.harness import unique, write_app
from thyme.kinesis.bootstrap import bootstrap_leases
from thyme.kinesis.launcher import RunOptions, plan
from thyme.loader import load_dataset


def leases(aws: dict[str, str], table: str) -> dict[str, dict[str, Any]]:
    client = boto3.client("dynamodb", endpoint_url=aws["THYME_DYNAMODB_ENDPOINT_URL"], region_name=aws["AWS_REGION"])
    return {item["leaseKey"]["S"]: item for item in client.scan(TableName=table, ConsistentRead=True)["Items"]}


def table_exists(aws: dict[str, str], table: str) -> bool:
    client = boto3.client("dynamodb", endpoint_url=aws["THYME_DYNAMODB_ENDPOINT_URL"], region_name=aws["AWS_REGION"])
    return table in client.list_tables()["TableNames"]


def properties_for(tmp_path: Path, arn: str, position: str) -> Any:
    app = write_app(tmp_path, arn, position)
    options = RunOptions(store_url=f"sqlite:///{tmp_path / 'thyme.db'}", application_name=unique("e2e-boot"))
    return plan(load_dataset(f"{app}:Clicks"), options).properties


def test_a_new_application_gets_one_lease_per_shard_like_kcl_writes_them(
    kinesis: Any, aws: dict[str, str], tmp_path: Path
) -> None:
    stream = unique("e2e-boot")
    arn = streams.create_stream(kinesis, stream, 3)
    for position, sentinel in (
        ("trim_horizon", "TRIM_HORIZON"),
        ("latest", "LATEST"),
        ("2026-01-01T00:00:00Z", "AT_TIMESTAMP"),
    ):
        properties = properties_for(tmp_path, arn, position)
        assert bootstrap_leases(properties) is True
        found = leases(aws, properties.table_name)
        shards = {s["ShardId"]: s for s in kinesis.list_shards(StreamName=stream)["Shards"]}
        assert set(found) == set(shards)
        for shard_id, item in found.items():
            assert item == {
                "leaseKey": {"S": shard_id},
                "checkpoint": {"S": sentinel},
                "checkpointSubSequenceNumber": {"N": "0"},
                "leaseCounter": {"N": "0"},
                "ownerSwitchesSinceCheckpoint": {"N": "0"},
                "startingHashKey": {"S": shards[shard_id]["HashKeyRange"]["StartingHashKey"]},
                "endingHashKey": {"S": shards[shard_id]["HashKeyRange"]["EndingHashKey"]},
            }
        # an existing application (a restart, another host) is left to KCL: nothing is rewritten
        assert bootstrap_leases(properties) is False
        assert leases(aws, properties.table_name) == found


def test_a_resharded_stream_is_left_to_kcl(kinesis: Any, aws: dict[str, str], tmp_path: Path) -> None:
    stream = unique("e2e-boot-split")
    arn = streams.create_stream(kinesis, stream, 1)
    (parent,) = kinesis.list_shards(StreamName=stream)["Shards"]
    middle = int(parent["HashKeyRange"]["EndingHashKey"]) // 2
    kinesis.split_shard(StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(middle))
    streams.wait_for(
        lambda: (
            len(kinesis.list_shards(StreamName=stream)["Shards"]) == 3
            and kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"]
            == "ACTIVE"
        ),
        60,
        "the split to finish",
    )
    properties = properties_for(tmp_path, arn, "trim_horizon")
    assert bootstrap_leases(properties) is False
    assert not table_exists(aws, properties.table_name)


def test_an_unreachable_endpoint_is_a_warning_not_a_failure(tmp_path: Path, aws: dict[str, str]) -> None:
    arn = "arn:aws:kinesis:us-east-1:123456789012:stream/nowhere"
    properties = properties_for(tmp_path, arn, "trim_horizon").model_copy(
        update={"dynamodb_endpoint": "http://127.0.0.1:9", "kinesis_endpoint": "http://127.0.0.1:9"}
    )
    assert bootstrap_leases(properties) is False
