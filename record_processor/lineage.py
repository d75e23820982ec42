"""A new shard's parents, so it starts from their watermark.

After a split or a merge, KCL starts a child shard only once its parents are read to their
end, and records the parents in the child's lease (``parentShardId``), as the stream lists them
(``ParentShardId``, ``AdjacentParentShardId``). The launcher lists every shard's parents when it
starts (``ProcessorConfig.known_parents``); only a shard created later is looked up in the lease
table, which lives in the consumer's own account (default credentials, no role). So a child of
a stream's own shards never loads the AWS SDK (about 28 MiB of its memory, measured).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from thyme.store.base import Feed, ShardStore

log = logging.getLogger("record_processor.lineage")


def parent_watermark_from_leases(
    store: ShardStore,
    feed: Feed,
    table: str,
    region: str,
    endpoint_url: str | None,
    known: Mapping[str, Sequence[str]] | None = None,
) -> Callable[[str], int | None]:
    """A function giving the greatest stored watermark among a shard's parents (None if none):
    the parents from ``known`` if the shard is there, else from its lease."""

    def parent_watermark(shard: str) -> int | None:
        if known is not None and shard in known:
            return inherited(sorted(known[shard]))
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
        return inherited(sorted(item.get("parentShardId", {}).get("SS", [])))

    def inherited(parents: list[str]) -> int | None:
        if not parents:
            return None
        marks = [s.watermark_us for p in parents if (s := store.shard_state(feed, p)) is not None]
        found = [m for m in marks if m is not None]
        log.info(
            "parents found", extra={"fields": {"parents": parents, "inherited_watermark_us": max(found, default=None)}}
        )
        return max(found, default=None)

    return parent_watermark
