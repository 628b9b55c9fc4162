"""Helpers shared by the tests of FileStorage and FileStorage2 (file, pack, history).

The fixtures ``cls`` (each class of :data:`CLASSES`) and ``path`` are in
``tests/conftest.py``.
"""

from __future__ import annotations

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
