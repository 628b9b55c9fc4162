"""The ``sqlite`` conformance back-end: :class:`dhruva.sqlite_storage.SqliteStorage`.

Spec: ``spec/conformance.md`` (back-ends) and ``spec/sqlite-storage.md``.

The database is ``data.sqlite`` in the factory's directory, with SQLite's
``-wal`` and ``-shm`` side files and the writer's ``data.sqlite.lock``.  The
back-end has no ``raw-file`` (its file is not in the dhruva file format, so
the journal-cut tests do not apply) and no ``file-layer`` (SQLite does its own
file access); its crash cases are the generic crash of
:class:`~dhruva_conformance.backends.BaseFactory` and the SIGKILL tests.
``server-sqlite`` is the same database behind a storage server (see
:mod:`dhruva_conformance.server_backends`); its factory class is built on
first use so that importing this module does not load the server.
Importing this module registers both back-ends.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dhruva_conformance.backends import (
    CAP_READONLY,
    CAP_REOPEN,
    CAP_SUBPROCESS,
    BaseFactory,
    StorageFactory,
    register_backend,
)

from dhruva.sqlite_storage import SqliteStorage
from dhruva.storage import CAP_BLOBS, CAP_DURABLE, CAP_PACK, CAP_SNAPSHOTS, Storage


class SqliteFactory(BaseFactory):
    """SqliteStorage on ``data.sqlite`` in the factory's directory."""

    name = "sqlite"
    capabilities = frozenset(
        {CAP_REOPEN, CAP_DURABLE, CAP_SUBPROCESS, CAP_READONLY, CAP_PACK, CAP_SNAPSHOTS, CAP_BLOBS}
    )

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__(directory)
        self.data_path = str(self.directory / "data.sqlite")

    def _open(self, reopen: bool, **options: Any) -> Storage:
        if not reopen:
            for path in self._files():
                path.unlink()
        return SqliteStorage(self.data_path, **options)

    def paths(self) -> list[str]:
        others = [str(p) for p in self._files() if str(p) != self.data_path]
        return [self.data_path, *others]


def make_server_sqlite(directory: Path) -> StorageFactory:
    """Return a factory serving a SqliteStorage through a storage server."""
    from dhruva_conformance.server_backends import _ServerFactory

    class ServerSqliteFactory(_ServerFactory):
        """SqliteStorage behind a storage server in a thread of this process."""

        name = "server-sqlite"
        # Not "subprocess": a child process would open the file, not the server.
        capabilities = SqliteFactory.capabilities - {CAP_SUBPROCESS}

        def __init__(self, directory: str | os.PathLike[str]) -> None:
            super().__init__(directory)
            self._sqlite = SqliteFactory(self.directory)

        def _inner(self, reopen: bool, **options: Any) -> Storage:
            return self._sqlite._open(reopen, **options)

        def _crash_inner(self, inner: Storage) -> None:
            self._sqlite.crash(inner)

        def _files(self) -> list[Path]:
            # The socket file is the server's, not the database's.
            return [p for p in super()._files() if p.name != "server.sock"]

        def paths(self) -> list[str]:
            return [p for p in self._sqlite.paths() if not p.endswith("server.sock")]

    return ServerSqliteFactory(directory)


register_backend("sqlite", SqliteFactory)
register_backend("server-sqlite", make_server_sqlite)
