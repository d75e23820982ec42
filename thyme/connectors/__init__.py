"""Connectors that feed datasets."""

from thyme.connectors.kinesis import KinesisSource
from thyme.connectors.source import SourceSpec, source

__all__ = ["KinesisSource", "SourceSpec", "source"]
