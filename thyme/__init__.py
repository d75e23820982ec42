"""Thyme: datasets fed by streaming sources, served by lookups.

.. code-block:: python

    from thyme import Secret, dataset, field, Field
    from thyme.connectors import KinesisSource, source
"""

from thyme.dataset import DatasetSchema, Field, dataset, field
from thyme.errors import ConfigError, ThymeError
from thyme.lookup import lookup, lookup_many
from thyme.secret import Secret

__all__ = ["ConfigError", "DatasetSchema", "Field", "Secret", "ThymeError", "dataset", "field", "lookup", "lookup_many"]
__version__ = "0.1.0"
