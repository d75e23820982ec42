"""Resolve ``MODULE:DATASET`` (an importable module or a path to a ``.py`` file)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from thyme.connectors.source import source_spec
from thyme.errors import LoadError, ThymeError
from thyme.schema import dataset_schema


def load_dataset(target: str, require_source: bool = True) -> type:
    """Import ``MODULE:DATASET`` and return the dataset class.

    Raises :class:`LoadError` (one line) if the module cannot be imported, the name is
    missing, the object is not a ``@dataset`` class, or (``require_source``) it has no
    ``@source(KinesisSource(...))``. Configuration errors raised while importing (a bad
    ``KinesisSource``) propagate unchanged: their message is already the clear one.
    """
    module_part, sep, name = target.rpartition(":")
    if not sep or not module_part or not name:
        raise LoadError(f"{target!r} is not MODULE:DATASET; write e.g. app:ClickEvent or path/to/app.py:ClickEvent")
    try:
        if module_part.endswith(".py") or "/" in module_part:
            path = Path(module_part)
            if not path.is_file():
                raise LoadError(f"no such file: {module_part}")
            module_name = f"_thyme_user_{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise LoadError(f"cannot import {module_part}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            sys.path.insert(0, str(path.resolve().parent))
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and "." not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(module_part)
    except ThymeError:
        raise
    except ModuleNotFoundError as exc:
        raise LoadError(f"cannot import {module_part}: {exc}") from exc
    except KeyError as exc:
        raise LoadError(f"importing {module_part} failed: environment variable {exc} is not set") from exc
    except Exception as exc:
        raise LoadError(f"importing {module_part} failed: {type(exc).__name__}: {exc}") from exc
    klass = getattr(module, name, None)
    if klass is None:
        raise LoadError(f"{module_part} has no attribute {name}")
    if dataset_schema(klass) is None:
        raise LoadError(f"{target} is not a @dataset class")
    if require_source and source_spec(klass) is None:
        raise LoadError(f"{target} has no @source(KinesisSource(...)); add one above @dataset")
    assert isinstance(klass, type)
    return klass
