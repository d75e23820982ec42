"""Shared fixtures: a store per backend (the contract suite runs against each)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from thyme.store import Store, open_store


@pytest.fixture(params=["sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL for each backend."""
    assert request.param == "sqlite"
    return f"sqlite:///{tmp_path / 'thyme.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    db = open_store(store_url)
    yield db
    db.close()
