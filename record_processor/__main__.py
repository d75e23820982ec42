"""``python -m record_processor``: the child process the MultiLangDaemon spawns per shard."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from record_processor.lineage import parent_watermark_from_leases
from record_processor.worker import RetryPolicy, ShardWorker
from thyme import logs
from thyme.errors import ThymeError
from thyme.handover import (
    DEFAULT_GIVE_UP_AFTER_S,
    ENV_DATASET,
    ENV_PROCESSOR_CONFIG,
    ENV_STORE_GIVE_UP,
    ProcessorConfig,
)
from thyme.records import LatenessPolicy
from thyme.store import open_store, redact_url, store_url


def build_worker(config: ProcessorConfig) -> ShardWorker:
    """A :class:`ShardWorker` for ``config`` with its store opened."""
    store = open_store(config.store_url)
    parents = None
    if config.lease_table and config.region:
        parents = parent_watermark_from_leases(
            store, config.feed, config.lease_table, config.region, config.dynamodb_endpoint_url, config.known_parents
        )
    return ShardWorker(
        config.feed,
        LatenessPolicy(config.max_lateness, config.max_future_skew),
        store,
        RetryPolicy(give_up_after_s=config.retry_give_up_after_s),
        parent_watermark=parents,
        record_format=config.record_format,
    )


def load_config(argv: list[str] | None = None) -> ProcessorConfig:
    parser = argparse.ArgumentParser(prog="python -m record_processor", description=__doc__)
    parser.add_argument(
        "--config",
        default=os.environ.get(ENV_PROCESSOR_CONFIG),
        help=f"processor config JSON (${ENV_PROCESSOR_CONFIG})",
    )
    parser.add_argument("--dataset", default=os.environ.get(ENV_DATASET), help=f"MODULE:DATASET (${ENV_DATASET})")
    parser.add_argument("--store", default=None, help="store URL (default: $THYME_STORE_URL or sqlite:///thyme.db)")
    parser.add_argument(
        "--give-up-after",
        type=float,
        default=os.environ.get(ENV_STORE_GIVE_UP) or None,
        metavar="SECONDS",
        help="how long to retry a batch against an unavailable store before exiting "
        f"(${ENV_STORE_GIVE_UP}, default {DEFAULT_GIVE_UP_AFTER_S:.0f})",
    )
    parser.add_argument(
        "--metrics",
        choices=["emf", "off"],
        default=None,
        help="per-batch CloudWatch EMF lines on stderr (default: the config's, else off)",
    )
    args = parser.parse_args(argv)
    if args.config:
        config = ProcessorConfig.from_file(args.config)
    elif args.dataset:
        from thyme.loader import load_dataset

        config = ProcessorConfig.from_dataset(load_dataset(args.dataset))
    else:
        parser.error(f"give --config or --dataset (or set {ENV_PROCESSOR_CONFIG} / {ENV_DATASET})")
    if args.store:
        config = config.replace(store_url=args.store)
    if args.metrics is not None:
        config = config.replace(metrics=args.metrics)
    if args.give_up_after is not None:
        config = config.replace(retry_give_up_after_s=float(args.give_up_after))
    return config


def main(argv: list[str] | None = None) -> int:
    context: dict[str, object] = {"component": "record_processor"}
    # At most INFO: the `batch applied` lines are how the launcher counts progress and metrics;
    # it leaves out of its stderr the lines below the level the user asked for.
    logs.configure(context, level=min(logs.level_from_env(), logging.INFO))
    try:
        config = load_config(argv)
        context["dataset"] = config.dataset.name
        context["store"] = redact_url(store_url(config.store_url))
        worker = build_worker(config)
    except ThymeError:
        return 78
    from record_processor import kcl
    from record_processor.metrics import EmfMetrics

    metrics = EmfMetrics(config.dataset.name, config.metrics_namespace) if config.metrics == "emf" else None
    kcl.run(worker, context, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
