"""The consumer's module: the dataset of ``clicks.py``, fed from the stream.

thyme kinesis run examples/serving/consumer.py:ClickEvent
"""

import os

from clicks import ClickEvent

from thyme import Secret
from thyme.connectors import KinesisSource, source

ClickEvent = source(
    KinesisSource(
        stream_arn=os.environ["MY_KINESIS_STREAM_ARN"],
        init_position="trim_horizon",
        role_arn=Secret(env="MY_KINESIS_ROLE_ARN"),
    ),
    max_lateness="5m",
)(ClickEvent)

__all__ = ["ClickEvent"]
