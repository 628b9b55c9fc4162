"""A streaming, read-only walk of a data file's transactions, without the lock.

Spec: ``spec/point-in-time.md`` (HIST) and ``spec/file-format.md``
(RCV-001..RCV-003: validity, torn tail, damage).

Theory of operation.  :func:`journal.scan` checks transactions held in one
buffer; history, restore and backup must read files of any size while a
writer may be appending to them, so this walk reads one transaction at a
time, its body in chunks of at most ``CHUNK_BYTES``, computing the checksum
and walking the record headers as the chunks arrive.  Memory is one chunk
plus the oids of one transaction.  The checks are :func:`journal.check_transaction`'s,
the one implementation of RCV-001, fed through ``pread`` in chunks.

The walk takes a ``pread(length, offset)`` callable and the size to stop at;
it never opens a file, so tests can feed it any bytes.  The first invalid
transaction ends the walk: when no valid transaction starts after it, the
bytes are a torn tail (a commit still being written, or an interrupted one)
and ``tail`` says where; otherwise the file is damaged and the walk raises
CorruptionError (RCV-003).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from dhruva import journal

#: The body of a transaction is read in chunks of at most this many bytes.
CHUNK_BYTES = 1 << 20

Pread = Callable[[int, int], bytes]
RecordCallback = Callable[[bytes, int], None]


class TxnInfo(NamedTuple):
    """One valid transaction: where it lies and what its header says."""

    tid: int
    time_us: int
    offset: int
    length: int
    record_count: int

    @property
    def end(self) -> int:
        return self.offset + self.length


class JournalWalk:
    """Iterate over the valid transactions of a data file (see the module docstring).

    ``on_record(oid, offset)`` is called for every record of every valid
    transaction, in file order, after the transaction checked out.  After
    the iteration, ``end`` is the offset just past the last valid
    transaction, ``last_tid`` its tid, and ``tail`` is ``(offset, size)`` of
    the bytes that were not a valid transaction, or None.  With
    ``stop_tid`` the walk ends before the first transaction whose tid exceeds
    it (``stopped_tid``).  ``version`` is the file's format version;
    ``committed_end`` the offset up to which the sidecar index proves the file
    committed (RCV-008), 0 when unknown.
    """

    def __init__(
        self,
        pread: Pread,
        size: int,
        path: str,
        *,
        start: int = journal.FILE_HEADER_SIZE,
        last_tid: int = 0,
        on_record: RecordCallback | None = None,
        stop_tid: int | None = None,
        version: int = journal.MAJOR_VERSION,
        committed_end: int = 0,
    ) -> None:
        self._pread = pread
        self.size = size
        self.path = path
        self.start = start
        self.end = start
        self.last_tid = last_tid
        self.tail: tuple[int, int] | None = None
        self.tail_reason: str | None = None
        self.tail_code: str | None = None
        self._on_record = on_record
        self._stop_tid = stop_tid
        #: The format version of the file (from its header).
        self.version = version
        self._committed_end = committed_end
        #: The tid of the valid transaction the walk stopped at because of
        #: ``stop_tid`` (not yielded, its records not reported), else None.
        self.stopped_tid: int | None = None

    def __iter__(self) -> Iterator[TxnInfo]:
        position = self.start
        while position < self.size:
            try:
                checked = journal.check_transaction(
                    self._pread,
                    position,
                    self.size,
                    last_tid=self.last_tid,
                    version=self.version,
                    chunk_bytes=CHUNK_BYTES,
                )
            except journal.InvalidTransaction as exc:
                self._torn_or_damaged(position, exc.reason, exc.code)
                return
            header = checked.header
            if self._stop_tid is not None and header.tid > self._stop_tid:
                self.stopped_tid = header.tid
                return
            if self._on_record is not None:
                for oid, offset in checked.records:
                    self._on_record(oid, offset)
            self.last_tid = header.tid
            position = self.end = checked.end
            yield TxnInfo(
                header.tid,
                header.time_us,
                position - header.length,
                header.length,
                header.record_count,
            )

    def _torn_or_damaged(self, position: int, reason: str, code: str) -> None:
        """Classify the invalid bytes at ``position`` (RCV-002, RCV-003, RCV-008)."""
        # [HIST-002] A torn tail ends the walk quietly; damage raises.
        # A torn tail is at most one interrupted commit, so reading the rest
        # whole is cheap in the common case; damage in mid-file is rare.
        rest = self._pread(self.size - position, position)
        proof = journal.damage_proof(
            rest,
            position,
            base=position,
            version=self.version,
            committed_end=self._committed_end,
        )
        if proof is not None:
            raise journal.damage_error(self.path, position, reason, proof, code)
        if journal.is_free_space(rest):
            return  # [RCV-060] Zero bytes after the last transaction: free space.
        self.tail = (position, self.size)
        self.tail_reason = reason
        self.tail_code = code
