"""The dataset on its own: what a serving process imports.

No stream, no role, no environment variable: lookups need only the dataset's fields and the
store. The consumer attaches the source in ``consumer.py``.
"""

from datetime import datetime

from thyme import Field, dataset, field


@dataset(index=True)
class ClickEvent:
    user_id: Field[str] = field(key=True)
    page: Field[str] = field()
    timestamp: Field[datetime] = field(timestamp=True)
