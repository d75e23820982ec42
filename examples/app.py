import os
from datetime import datetime

from thyme import Field, Secret, dataset, field
from thyme.connectors import KinesisSource, source


@source(
    KinesisSource(
        stream_arn=os.environ["MY_KINESIS_STREAM_ARN"],
        init_position="trim_horizon",
        role_arn=Secret(env="MY_KINESIS_ROLE_ARN"),
    ),
    max_lateness="5m",
)
@dataset(index=True)
class ClickEvent:
    user_id: Field[str] = field(key=True)
    page: Field[str] = field()
    timestamp: Field[datetime] = field(timestamp=True)
