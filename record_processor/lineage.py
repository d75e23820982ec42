"""A new shard's parents, read from the KCL lease table, so it starts from their watermark.

After a split or a merge, KCL starts a child shard only once its parents are read to their
end, and records the parents in the child's lease (``parentShardId``). The lease table lives
in the consumer's own account (default credentials), so no role is needed here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from thyme.store.base import Feed, ShardStore

log = logging.getLogger("record_processor.lineage")


def parent_watermark_from_leases(
    store: ShardStore, feed: Feed, table: str, region: str, endpoint_url: str | None
) -> Callable[[str], int | None]:
    """A function giving the greatest stored watermark among a shard's parents (None if none)."""

    def parent_watermark(shard: str) -> int | None:
        try:
            import boto3

            client = boto3.client("dynamodb", region_name=region, endpoint_url=endpoint_url)
            item = client.get_item(TableName=table, Key={"leaseKey": {"S": shard}}, ConsistentRead=True).get("Item", {})
        except Exception as exc:  # no lease table access: start without a watermark, loudly
            log.warning(
                "could not read the shard's parents from the lease table; starting without a watermark",
                extra={"fields": {"table": table, "error": f"{type(exc).__name__}: {exc}"}},
            )
            return None
        parents = sorted(item.get("parentShardId", {}).get("SS", []))
        marks = [s.watermark_us for p in parents if (s := store.shard_state(feed, p)) is not None]
        found = [m for m in marks if m is not None]
        log.info(
            "parents found", extra={"fields": {"parents": parents, "inherited_watermark_us": max(found, default=None)}}
        )
        return max(found, default=None)

    return parent_watermark
