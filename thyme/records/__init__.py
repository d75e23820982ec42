"""The record rules: where a record is validated.

Raw bytes and a source's settings (its format among them: ``formats.py``) in, a row or a
dead-letter reason out — or, for a format that carries many events per record, one of those per
event (:class:`RecordRules`),
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
from thyme.records.detail import describe
from thyme.records.formats import (
    DECOMPRESSED_TOO_LARGE,
    INVALID_COMPRESSION,
    INVALID_ENVELOPE,
    INVALID_LOG_EVENT,
    TRUNCATED_COMPRESSION,
    WRONG_FIELD_COUNT,
    Fanout,
    Rejected,
)
from thyme.records.lateness import FUTURE_TIMESTAMP, LATE, LatenessPolicy
from thyme.records.rules import RecordRules, Verdict

__all__ = [
    "DECOMPRESSED_TOO_LARGE",
    "FUTURE_TIMESTAMP",
    "INVALID_COMPRESSION",
    "INVALID_ENVELOPE",
    "INVALID_LOG_EVENT",
    "TRUNCATED_COMPRESSION",
    "WRONG_FIELD_COUNT",
    "Fanout",
    "Rejected",
    "Verdict",
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
