"""FileStorage2: the journal file with an index kept in memory.

Spec: ``spec/file-format.md`` (journal layout, write path, recovery, pack).

Theory of operation.  The data file is an append-only journal of transactions
(see :mod:`dhruva.journal`).  The storage keeps ``_index``, a dict from oid to
the file offset of the oid's current record, and the end of valid data
``_end``.  Every load is one dict lookup and one ``pread``.  A commit encodes
the whole transaction in memory, appends it with one write, syncs the file
once, and only then updates ``_index``: until ``sync()`` returns the
transaction is not acknowledged and not visible, so a crash or an I/O error
loses at most this commit (RCV-010..RCV-013).

:class:`dhruva.journal_storage.JournalStorage` holds everything the two file
storages share; the subclasses differ only in how the index is built at open
and kept at close (its "subclass hooks").
FileStorage2 builds ``_index`` by scanning the whole file at open, which costs
time proportional to the file size; :class:`dhruva.file_storage.FileStorage`
keeps an on-disk index instead.
"""

from __future__ import annotations

from dhruva import journal
from dhruva.file_index import DiskIndex
from dhruva.journal_storage import JournalStorage
from dhruva.utils import str_to_int8

__all__ = ["FileStorage2", "JournalStorage"]


class FileStorage2(JournalStorage):
    """A durable single-process storage whose index lives in memory.

    Opening scans the whole data file (time grows with the file).  Use it for
    small databases or when no sidecar file is wanted; otherwise prefer
    :class:`dhruva.file_storage.FileStorage`.

    ``readonly`` opens with a shared lock and refuses writes; ``repair`` cuts
    a damaged file at the first damage instead of raising CorruptionError (the
    cut bytes are kept in ``PATH.trN``); ``file_layer`` replaces the file
    system (tests).
    """

    def _recover(self) -> None:
        index: dict[bytes, int] = {}
        self._scan_tail(journal.FILE_HEADER_SIZE, index, self._index_covered_offset())
        self._index = index
        if index:
            self._next_oid = str_to_int8(max(index)) + 1

    def _index_covered_offset(self) -> int:
        """Return the offset a FileStorage sidecar of this file covers, else 0 (RCV-008).

        FileStorage2 keeps no index of its own, but the same data file may have
        been written by FileStorage, whose ``PATH.index`` proves that every
        transaction below its covered offset was committed.
        """
        disk = DiskIndex.open(self.path + ".index", self.file_id, readonly=True)
        if disk is None:
            return 0
        try:
            return int(disk.covered_offset)
        finally:
            disk.close()
