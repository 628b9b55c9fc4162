"""Fixtures shared by several test modules.

``cls`` and ``path`` serve the tests of the journal storages (FileStorage
and FileStorage2); ``start_server`` the tests of the ``dhruva`` command;
``serve`` the tests that run a StorageServer in a thread; ``dsn`` and
``schema`` the PostgreSQL tests (a throwaway cluster, a fresh schema each).
A test module that defines a fixture of the same name uses its own.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _dhruva_command import Server
from _journal_storages import CLASSES

from dhruva.file_storage2 import JournalStorage
from dhruva.server.storage_server import StorageServer
from dhruva.storage import MemoryStorage, Storage


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


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., StorageServer]]:
    """Start StorageServers on Unix sockets in threads; stop and close them all after."""
    started: list[tuple[StorageServer, threading.Thread]] = []

    def start(storage: Storage | None = None, **options: Any) -> StorageServer:
        path = str(tmp_path / f"s{len(started)}.sock")
        server = StorageServer(storage if storage is not None else MemoryStorage(), path, **options)
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.stop()
        thread.join()
        server.storage.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted for the test (skipped where mounting is impossible)."""
    directory = tmp_path / "small"
    directory.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


@pytest.fixture
def clients() -> Iterator[Callable[..., Any]]:
    """Open ClientStorages (``clients(address, **options)``), closed after the test."""
    from dhruva.client_storage import ClientStorage

    opened: list[ClientStorage] = []

    def open_client(address: Any, **options: Any) -> ClientStorage:
        client = ClientStorage(address, **options)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


@pytest.fixture
def dsn() -> str:
    """The connection string of the test cluster (started on first use), or skip."""
    from dhruva_conformance import postgres_backend

    missing = postgres_backend.psycopg_missing_reason()
    if missing is not None:
        pytest.skip(missing)
    return postgres_backend.base_dsn()


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    """A new schema name in the test cluster, dropped afterwards."""
    import uuid

    from dhruva_conformance import postgres_backend

    name = "t_" + uuid.uuid4().hex[:16]
    yield name
    postgres_backend.drop_schema(dsn, name)
