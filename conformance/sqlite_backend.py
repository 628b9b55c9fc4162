"""The ``sqlite`` conformance back-end: :class:`dhruva.sqlite_storage.SqliteStorage`.

Spec: ``spec/conformance.md`` (back-ends) and ``spec/sqlite-storage.md``.

The database is ``data.sqlite`` in the factory's directory, with SQLite's
``-wal`` and ``-shm`` side files and the writer's ``data.sqlite.lock``.  The
back-end has no ``raw-file`` (its file is not in the dhruva file format, so
the journal-cut tests do not apply) and no ``file-layer`` (SQLite does its own
file access); its crash cases are the generic crash of
:class:`~dhruva_conformance.backends.BaseFactory` and the SIGKILL tests.
Importing this module registers the back-end.
"""

from __future__ import annotations

import os
from typing import Any

from dhruva_conformance.backends import (
    CAP_READONLY,
    CAP_REOPEN,
    CAP_SUBPROCESS,
    BaseFactory,
    register_backend,
)

from dhruva.sqlite_storage import SqliteStorage
from dhruva.storage import CAP_DURABLE, CAP_PACK, Storage


class SqliteFactory(BaseFactory):
    """SqliteStorage on ``data.sqlite`` in the factory's directory."""

    name = "sqlite"
    capabilities = frozenset({CAP_REOPEN, CAP_DURABLE, CAP_SUBPROCESS, CAP_READONLY, CAP_PACK})

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


register_backend("sqlite", SqliteFactory)
