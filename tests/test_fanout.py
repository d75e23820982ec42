"""The fan-out preflight and deregistration (``thyme.kinesis.fanout``), against a botocore client
with stubbed answers; the real registration by the daemon: ``tests/e2e/test_fanout_e2e.py``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from thyme.connectors import KinesisSource
from thyme.kinesis.aws import AwsError
from thyme.kinesis.fanout import check_consumer, deregister

ARN = "arn:aws:kinesis:eu-west-1:111122223333:stream/click-events"
CONNECTION = KinesisSource(ARN, init_position="latest").resolve()
WHERE = "consumer ml of stream click-events (account 111122223333, region eu-west-1)"


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("kinesis", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s")
    with Stubber(client) as stub:
        yield client, stub


def description(status: str) -> dict[str, Any]:
    return {
        "ConsumerDescription": {
            "ConsumerName": "ml",
            "ConsumerARN": f"{ARN}/consumer/ml:1",
            "ConsumerStatus": status,
            "ConsumerCreationTimestamp": datetime(2026, 12, 4, tzinfo=UTC),
            "StreamARN": ARN,
        }
    }


def test_a_new_consumer_is_left_to_kcl_an_active_one_reused(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_client_error("describe_stream_consumer", "ResourceNotFoundException")
    stub.add_response("describe_stream_consumer", description("ACTIVE"))
    assert check_consumer(client, CONNECTION, "ml") == "new"
    assert check_consumer(client, CONNECTION, "ml") == "ACTIVE"


def test_a_consumer_being_deleted_or_a_missing_permission_is_one_line(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("describe_stream_consumer", description("DELETING"))
    with pytest.raises(AwsError) as deleting:
        check_consumer(client, CONNECTION, "ml")
    assert str(deleting.value).startswith(f"{WHERE} is being deleted: wait until it is gone")
    stub.add_client_error("describe_stream_consumer", "AccessDeniedException", http_status_code=400)
    with pytest.raises(AwsError) as denied:
        check_consumer(client, CONNECTION, "ml")
    assert "may not call kinesis:DescribeStreamConsumer on " + WHERE in str(denied.value)
    assert "grant it kinesis:DescribeStreamConsumer" in str(denied.value)


def test_deregistering_says_what_happened(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("deregister_stream_consumer", {}, {"StreamARN": ARN, "ConsumerName": "ml"})
    stub.add_client_error("deregister_stream_consumer", "ResourceNotFoundException")
    assert deregister(client, CONNECTION, "ml").startswith(f"{WHERE}: deregistered")
    assert deregister(client, CONNECTION, "ml") == f"{WHERE}: not registered (nothing to do)"
