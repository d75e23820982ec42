"""Start a fresh application fast: create KCL's lease table and one lease per shard first.

On an empty lease table, KCL 3 waits a random 1-30 s before its first shard sync
(``Scheduler.shouldInitiateLeaseSync``, hard-coded in KCL 3.1.3), so a
new application took 23-40 s to deliver its first record here. With the table and the leases
already in place, KCL skips that wait and assigns the leases at once (measured ~7-12 s).

The leases written are exactly the ones KCL's own shard sync writes for a stream whose shards
are all open and have no parents (no resharding yet): ``leaseKey`` = shard id, ``checkpoint``
= the initial position's sentinel (``TRIM_HORIZON``, ``LATEST`` or ``AT_TIMESTAMP``, the
timestamp itself being in the properties), counters at 0, the shard's hash key range, no
owner. Any other case — the table exists (a restart, another host), a stream that was
resharded, an error — leaves everything to KCL, which is always correct, only slower. Puts are
conditional (``attribute_not_exists``), so a KCL or another host racing us is never
overwritten.

The calls (``ListShards``; ``DescribeTable``, ``CreateTable``, ``PutItem`` on the lease
table) are ones the consumer's IAM policy already allows KCL to make, with the same
identities: the stream's role for Kinesis, the consumer's own for DynamoDB.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from thyme.kinesis.aws import kinesis_client, list_shards, session_name
from thyme.kinesis.properties import KclProperties

log = logging.getLogger("thyme.kinesis")

TABLE_ACTIVE_TIMEOUT_S = 60.0


def bootstrap_leases(
    properties: KclProperties,
    *,
    role_arn: str | None = None,
    external_id: str | None = None,
    sts_endpoint_url: str | None = None,
    kinesis: Any = None,
    dynamodb: Any = None,
) -> bool:
    """Create the lease table and the shards' leases if the application is new. Returns whether
    it did; never raises for an AWS error (KCL then does it all itself)."""
    import boto3
    import botocore.exceptions

    table = properties.table_name
    created = False
    try:
        dynamodb = dynamodb or boto3.client(
            "dynamodb", region_name=properties.region_name, endpoint_url=properties.dynamodb_endpoint
        )
        try:
            dynamodb.describe_table(TableName=table)
            return False  # not a new application: KCL resumes from the table
        except dynamodb.exceptions.ResourceNotFoundException:
            pass
        kinesis = kinesis or kinesis_client(
            properties.region_name,
            properties.kinesis_endpoint,
            role_arn,
            external_id,
            sts_endpoint_url,
            session_name(properties.application_name),
        )
        shards = list_shards(kinesis, StreamName=properties.stream_name)
        if not shards or any(s.get("ParentShardId") or s.get("AdjacentParentShardId") for s in shards):
            log.info("resharded stream: KCL builds the lease table itself", extra={"fields": {"table": table}})
            return False
        if any("EndingSequenceNumber" in s.get("SequenceNumberRange", {}) for s in shards):
            return False
        try:
            dynamodb.create_table(
                TableName=table,
                KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except dynamodb.exceptions.ResourceInUseException:
            return False  # another host (or KCL) is creating it
        created = True
        _wait_active(dynamodb, table)
        checkpoint = (
            "AT_TIMESTAMP" if properties.initial_position_timestamp is not None else properties.initial_position
        )
        assert checkpoint is not None
        for shard in shards:
            hash_range = shard["HashKeyRange"]
            try:
                dynamodb.put_item(
                    TableName=table,
                    Item={
                        "leaseKey": {"S": shard["ShardId"]},
                        "checkpoint": {"S": checkpoint},
                        "checkpointSubSequenceNumber": {"N": "0"},
                        "leaseCounter": {"N": "0"},
                        "ownerSwitchesSinceCheckpoint": {"N": "0"},
                        "startingHashKey": {"S": hash_range["StartingHashKey"]},
                        "endingHashKey": {"S": hash_range["EndingHashKey"]},
                    },
                    ConditionExpression="attribute_not_exists(leaseKey)",
                )
            except dynamodb.exceptions.ConditionalCheckFailedException:
                continue
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, TimeoutError) as exc:
        # The error's code only: AWS messages name the role (a secret) and the assumed session.
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, botocore.exceptions.ClientError) else None
        if created:
            _drop_partial(dynamodb, table)
        log.warning(
            "could not prepare the lease table; KCL will create it (first records may take up to ~40 s)",
            extra={"fields": {"table": table, "error": code or type(exc).__name__}},
        )
        return False
    log.info(
        "new application: created the lease table with one lease per shard",
        extra={"fields": {"table": table, "shards": len(shards), "initial_position": checkpoint}},
    )
    return True


def _drop_partial(dynamodb: Any, table: str) -> None:
    """Delete the table this run created but could not fill: a table with only some of the leases
    would make KCL skip its initial shard sync (``skipShardSyncAtWorkerInitializationIfLeasesExist``)
    and leave the missing shards to the periodic sync. Without it, KCL starts from scratch."""
    import botocore.exceptions

    try:
        dynamodb.delete_table(TableName=table)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        log.error(
            "could not remove a half-prepared lease table; delete it before the next start",
            extra={"fields": {"table": table, "error": type(exc).__name__}},
        )


def _wait_active(dynamodb: Any, table: str) -> None:
    deadline = time.monotonic() + TABLE_ACTIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        if dynamodb.describe_table(TableName=table)["Table"]["TableStatus"] == "ACTIVE":
            return
        time.sleep(0.2)
    raise TimeoutError(f"lease table {table} not ACTIVE after {TABLE_ACTIVE_TIMEOUT_S:.0f}s")
