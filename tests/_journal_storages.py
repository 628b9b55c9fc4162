"""Helpers shared by the tests of FileStorage and FileStorage2 (file, pack, history).

The fixtures ``cls`` (each class of :data:`CLASSES`) and ``path`` are in
``tests/conftest.py``.
"""

from __future__ import annotations

import os

from dhruva import journal
from dhruva.file_storage import FileStorage, FileStorage2
from dhruva.file_storage2 import JournalStorage
from dhruva.storage import Storage
from dhruva.utils import int8_to_str

CLASSES: list[type[JournalStorage]] = [FileStorage, FileStorage2]


def oid(n: int) -> bytes:
    return int8_to_str(n)


def commit(storage: Storage, *records: tuple[int, bytes, list[int]]) -> None:
    """Commit one transaction of ``(oid number, data, referenced oid numbers)`` records."""
    storage.begin()
    for number, data, refs in records:
        storage.store(oid(number), data, b"".join(oid(r) for r in refs))
    storage.end()


def contents(storage: Storage) -> dict[int, bytes]:
    """Return ``{oid number: data}`` of every current record of ``storage``."""
    return {int.from_bytes(o, "big"): storage.load(o).data for o in storage.iter_oids()}


def data_end(path: str) -> int:
    """Return the end of the valid transactions of the data file at ``path``.

    The file may go on past it with free space, zeros the writer allocated
    for the commits to come (RCV-060).
    """
    with open(path, "rb") as file:
        data = file.read()
    return journal.scan(data, journal.FILE_HEADER_SIZE, path).end


def drop_free_space(path: str) -> int:
    """Cut the closed data file at ``path`` back to the end of its transactions; return it.

    For tests that change a file's bytes by offset from its end: without
    free space, the end of the file is the end of the last transaction.
    """
    end = data_end(path)
    os.truncate(path, end)
    return end
