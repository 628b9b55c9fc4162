"""Fixtures shared by the tests of the journal storages (FileStorage and FileStorage2).

A test module that defines a fixture of the same name uses its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _journal_storages import CLASSES

from dhruva.file_storage2 import JournalStorage


@pytest.fixture(params=CLASSES, ids=[c.__name__ for c in CLASSES])
def cls(request: pytest.FixtureRequest) -> type[JournalStorage]:
    """Each journal storage class in turn."""
    result: type[JournalStorage] = request.param
    return result


@pytest.fixture
def path(tmp_path: Path) -> str:
    """Where a test's data file goes (not created)."""
    return str(tmp_path / "db.dhruva")
