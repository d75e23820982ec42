"""The record rules: where a record is validated.

Raw bytes and a source's settings in, a row or a dead-letter reason out (:class:`RecordRules`),
with lateness judged against a shard's watermark. The child (``record_processor``), re-drive
(``thyme/redrive.py``) and anything else that must decide as the consumer would, use this one
path. It knows datasets (``thyme/schema.py``) and nothing above them: no store, no KCL.
"""

from thyme.records.decode import (
    INVALID_BASE64,
    INVALID_JSON,
    INVALID_UTF8,
    NOT_AN_OBJECT,
    TOO_DEEPLY_NESTED,
    Accepted,
    RecordDecoder,
)
from thyme.records.lateness import FUTURE_TIMESTAMP, LATE, LatenessPolicy, describe
from thyme.records.rules import RecordRules

__all__ = [
    "FUTURE_TIMESTAMP",
    "INVALID_BASE64",
    "INVALID_JSON",
    "INVALID_UTF8",
    "LATE",
    "NOT_AN_OBJECT",
    "TOO_DEEPLY_NESTED",
    "Accepted",
    "LatenessPolicy",
    "RecordDecoder",
    "RecordRules",
    "describe",
]
