"""Fixtures shared by several test modules.

``cls`` and ``path`` serve the tests of the journal storages (FileStorage
and FileStorage2); ``start_server`` the tests of the ``dhruva`` command.
A test module that defines a fixture of the same name uses its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _dhruva_command import Server
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


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start ``dhruva -s ARGS`` children on Unix sockets; kill each by pid at the end."""
    servers: list[Server] = []

    def start(*args: str) -> Server:
        server = Server(tmp_path, *args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
