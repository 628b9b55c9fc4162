"""Point-in-time reads and recovery for FileStorage and FileStorage2.

Spec: ``spec/point-in-time.md`` (HIST-001..HIST-032).

Theory of operation.  A data file keeps every revision of every object until
it is packed: each transaction is appended, never rewritten, and the current
record of an oid is its last record in file order (FMT-014).  The database as
of transaction *T* is therefore the file cut just after *T*: an index built
from the records of the transactions up to *T* shows exactly that state.

* :func:`list_transactions` walks the file and lists its transactions;
* :func:`open_at` returns a :class:`HistoricalStorage`, a read-only Storage
  whose index covers the transactions up to the chosen tid, usable with a
  Connection for browsing;
* :func:`restore` writes a new data file holding the transactions up to the
  chosen tid (the prefix of the file), which is a database as of that tid
  with its history.

All three read the data file without its lock, as the backup does (see
:mod:`dhruva.backup`): the bytes of complete transactions never change while
a writer appends.  A pack starts the history afresh: the packed file begins
with one transaction holding the live objects as of the pack point, so
nothing before it can be shown (HIST-030).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from typing import NamedTuple

from dhruva import journal
from dhruva.backup import CopyResult, copy_prefix, data_file_version, open_unlocked
from dhruva.error import CorruptionError, DhruvaError, DhruvaKeyError, ReadOnlyError
from dhruva.fileio import OSFile
from dhruva.journal_walk import JournalWalk, TxnInfo
from dhruva.storage import CAP_HISTORY, Record, Storage, check_oid

__all__ = [
    "HistoricalStorage",
    "TransactionInfo",
    "list_transactions",
    "open_at",
    "restore",
]

_LOAD_READ_BYTES = 4096


class TransactionInfo(NamedTuple):
    """One committed transaction as listed by :func:`list_transactions`."""

    tid: int
    time_us: int
    offset: int
    size_bytes: int
    record_count: int

    @property
    def time(self) -> dt.datetime:
        """The commit time as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.time_us / 1e6, tz=dt.UTC)


def _info(txn: TxnInfo) -> TransactionInfo:
    return TransactionInfo(txn.tid, txn.time_us, txn.offset, txn.length, txn.record_count)


def iter_transactions(path: str) -> Iterator[TransactionInfo]:
    """Yield every committed transaction of the data file at ``path``, oldest first.

    A torn tail (a commit being written) is not listed.  Raises
    CorruptionError for a damaged file, FormatError for a foreign one.
    """
    data_file = open_unlocked(path)
    try:
        walk = JournalWalk(
            data_file.pread, data_file.size(), data_file.path, version=data_file_version(data_file)
        )
        for txn in walk:
            yield _info(txn)
    finally:
        data_file.close()


def list_transactions(path: str) -> list[TransactionInfo]:
    """Return every committed transaction of the data file at ``path`` (HIST-010)."""
    return list(iter_transactions(path))


def _find(
    path: str, data_file: OSFile, tid: int, index: dict[bytes, int] | None
) -> tuple[JournalWalk, int]:
    """Walk ``data_file`` up to and including transaction ``tid``.

    Returns the walk (``end`` just past ``tid``) and the number of
    transactions up to ``tid``; with ``index``, fills it with oid -> offset
    of the records current as of ``tid``.  Raises DhruvaError when there is
    no such transaction, naming the tids the file holds and, when ``tid``
    precedes them, the pack (HIST-030).
    """
    on_record = index.__setitem__ if index is not None else None
    walk = JournalWalk(
        data_file.pread,
        data_file.size(),
        data_file.path,
        on_record=on_record,
        stop_tid=tid,
        version=data_file_version(data_file),
    )
    first = 0
    count = 0
    for txn in walk:
        first = first or txn.tid
        count += 1
    if count and walk.last_tid == tid:
        return walk, count
    first = first or walk.stopped_tid or 0
    # [HIST-030] Before the first transaction kept there is nothing to show.
    # A file that was never packed starts at tid 1 (FMT-012, RCV-020).
    if first > 1 and tid < first:
        raise DhruvaError(
            f"{path}: transaction {tid} is older than the first one kept ({first}); "
            "the file was packed there and history before a pack is gone"
        )
    if not first:
        raise DhruvaError(f"{path}: no transaction {tid} (the file holds no transaction)")
    raise DhruvaError(f"{path}: no transaction {tid} in the file (its first tid is {first})")


class HistoricalStorage(Storage):
    """A read-only view of a file database as of one transaction (HIST-020).

    ``load`` returns the record current as of ``tid``: the last record of
    the oid in the transactions up to and including ``tid``.  Every write
    raises ReadOnlyError; ``readonly`` is True, so a Connection on it never
    tries to create a root.  The file is read without its lock.
    """

    capabilities = frozenset({CAP_HISTORY})
    readonly = True

    def __init__(self, path: str, tid: int) -> None:
        self.path = os.fspath(path)
        self.tid = tid
        self._file: OSFile | None = open_unlocked(self.path)
        self._version = data_file_version(self._file)
        self._index: dict[bytes, int] = {}
        try:
            walk, _count = _find(self.path, self._file, tid, self._index)
        except BaseException:
            self.close()
            raise
        self.end_offset = walk.end

    def _check_open(self) -> OSFile:
        if self._file is None:
            raise DhruvaError(f"the view of {self.path} as of tid {self.tid} is closed")
        return self._file

    def load(self, oid: bytes) -> Record:
        data_file = self._check_open()
        offset = self._index.get(oid)
        if offset is None:
            check_oid(oid)  # [SAPI-006]
            raise DhruvaKeyError(oid)
        buf = data_file.pread(_LOAD_READ_BYTES, offset)
        version = self._version
        if len(buf) < journal.record_header_size(version):
            raise CorruptionError(self.path, offset, "record header runs past the end of the file")
        size = journal.record_size(buf, version)
        if size > len(buf):
            if offset + size > data_file.size():  # a damaged length: no 36 GiB read
                raise CorruptionError(self.path, offset, "record runs past the end of the file")
            buf = data_file.pread(size, offset)
        # [FMT-023] A version 2 record is checked against its checksum.
        record = journal.decode_record_at(buf, offset, self.path, base=offset, version=version)
        if record.oid != oid:
            raise CorruptionError(self.path, offset, "record does not hold the indexed oid")
        return record

    def _refuse(self) -> ReadOnlyError:
        return ReadOnlyError(
            f"the view of {self.path} as of tid {self.tid} is read-only; "
            "use restore() to make a database of it"
        )

    def new_oid(self) -> bytes:
        raise self._refuse()

    def begin(self) -> None:
        raise self._refuse()

    def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
        raise self._refuse()

    def end(self) -> None:
        raise self._refuse()

    def abort_transaction(self) -> None:
        """Nothing to drop: a view never has a transaction open."""

    def pack(self) -> None:
        raise self._refuse()

    def iter_oids(self) -> Iterator[bytes]:
        self._check_open()
        return iter(list(self._index))

    def get_size(self) -> int:
        self._check_open()
        return len(self._index)

    def close(self) -> None:
        data_file, self._file = self._file, None
        if data_file is not None:
            data_file.close()

    def __repr__(self) -> str:
        return f"<HistoricalStorage {self.path!r} at tid {self.tid}>"


def open_at(path: str, tid: int) -> HistoricalStorage:
    """Return a read-only view of the database at ``path`` as of transaction ``tid``."""
    return HistoricalStorage(path, tid)


def restore(path: str, tid: int, output: str) -> CopyResult:
    """Write ``output``, a new data file holding the transactions of ``path`` up to ``tid``.

    The new file is the database as of ``tid``, with its history up to
    then (HIST-025).  Refuses to overwrite ``output``; raises DhruvaError
    for an unknown tid or one before the pack point.
    """
    if os.path.abspath(output) == os.path.abspath(path):
        raise DhruvaError("restore writes a new file; give an output path other than the input")
    data_file = open_unlocked(path)
    try:
        walk, count = _find(path, data_file, tid, None)
        # [HIST-025] The prefix of the file up to tid is the database as of tid.
        return copy_prefix(data_file, walk.end, output, expected=(count, tid))
    finally:
        data_file.close()
