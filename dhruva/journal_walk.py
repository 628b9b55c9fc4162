"""A streaming, read-only walk of a data file's transactions, without the lock.

Spec: ``spec/point-in-time.md`` (HIST) and ``spec/file-format.md``
(RCV-001..RCV-003: validity, torn tail, damage).

Theory of operation.  :func:`journal.scan` checks transactions held in one
buffer; history, restore and backup must read files of any size while a
writer may be appending to them, so this walk reads one transaction at a
time, its body in chunks of at most ``CHUNK_BYTES``, computing the checksum
and walking the record headers as the chunks arrive.  Memory is one chunk
plus the oids of one transaction.  It performs every check of RCV-001.

The walk takes a ``pread(length, offset)`` callable and the size to stop at;
it never opens a file, so tests can feed it any bytes.  The first invalid
transaction ends the walk: when no valid transaction starts after it, the
bytes are a torn tail (a commit still being written, or an interrupted one)
and ``tail`` says where; otherwise the file is damaged and the walk raises
CorruptionError (RCV-003).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

from dhruva import journal
from dhruva.error import CorruptionError

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


class _Invalid(Exception):
    pass


class JournalWalk:
    """Iterate over the valid transactions of a data file (see the module docstring).

    ``on_record(oid, offset)`` is called for every record of every valid
    transaction, in file order, after the transaction checked out.  After
    the iteration, ``end`` is the offset just past the last valid
    transaction, ``last_tid`` its tid, and ``tail`` is ``(offset, size)`` of
    the bytes that were not a valid transaction, or None.  With
    ``stop_tid`` the walk ends before the first transaction whose tid exceeds
    it (``stopped_tid``).
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
    ) -> None:
        self._pread = pread
        self.size = size
        self.path = path
        self.start = start
        self.end = start
        self.last_tid = last_tid
        self.tail: tuple[int, int] | None = None
        self.tail_reason: str | None = None
        self._on_record = on_record
        self._stop_tid = stop_tid
        #: The tid of the valid transaction the walk stopped at because of
        #: ``stop_tid`` (not yielded, its records not reported), else None.
        self.stopped_tid: int | None = None

    def __iter__(self) -> Iterator[TxnInfo]:
        position = self.start
        while position < self.size:
            try:
                info, records = self._check(position)
            except _Invalid as exc:
                self._torn_or_damaged(position, str(exc))
                return
            if self._stop_tid is not None and info.tid > self._stop_tid:
                self.stopped_tid = info.tid
                return
            if self._on_record is not None:
                for oid, offset in records:
                    self._on_record(oid, offset)
            self.last_tid = info.tid
            position = self.end = info.end
            yield info

    def _check(self, position: int) -> tuple[TxnInfo, list[tuple[bytes, int]]]:
        """Check the transaction at ``position`` (RCV-001); raise _Invalid naming the check."""
        if self.size - position < journal.TXN_OVERHEAD:
            raise _Invalid(f"only {self.size - position} bytes left, too short for a transaction")
        head = self._pread(journal.TXN_HEADER_SIZE, position)
        if len(head) < journal.TXN_HEADER_SIZE:
            raise _Invalid("the file ended inside a transaction header")
        tag, count, body_length, tid, time_us, _reserved, head_crc = journal.TXN_HEADER.unpack(head)
        if tag != journal.TXN_TAG:
            raise _Invalid(f"transaction tag {tag!r} is not {journal.TXN_TAG!r}")
        if zlib.crc32(head[:36]) != head_crc:
            raise _Invalid("transaction header checksum mismatch")
        body_start = position + journal.TXN_HEADER_SIZE
        body_end = body_start + body_length
        end = body_end + journal.TXN_TRAILER_SIZE
        if end > self.size:
            raise _Invalid(f"transaction of {end - position} bytes runs past the end of the file")
        if tid <= self.last_tid:
            raise _Invalid(f"transaction id {tid} does not follow {self.last_tid}")
        crc = zlib.crc32(head)
        records: list[tuple[bytes, int]] = []
        next_record = body_start  # file offset of the next record header
        carry = b""  # bytes of a record header split between two chunks
        chunk_start = body_start
        unpack = journal.RECORD_HEADER.unpack_from
        header_size = journal.RECORD_HEADER_SIZE
        while chunk_start < body_end:
            chunk = self._pread(min(CHUNK_BYTES, body_end - chunk_start), chunk_start)
            if not chunk:
                raise _Invalid(f"the file ended at {chunk_start}, inside a transaction")
            crc = zlib.crc32(chunk, crc)
            buffer = carry + chunk if carry else chunk
            buffer_start = chunk_start - len(carry)
            buffer_end = buffer_start + len(buffer)
            while next_record < body_end and next_record + header_size <= buffer_end:
                oid, data_length, ref_count = unpack(buffer, next_record - buffer_start)
                records.append((bytes(oid), next_record))
                next_record += header_size + data_length + 8 * ref_count
            carry = buffer[next_record - buffer_start :] if next_record < buffer_end else b""
            chunk_start += len(chunk)
        trailer = self._pread(journal.TXN_TRAILER_SIZE, body_end)
        if len(trailer) < journal.TXN_TRAILER_SIZE:
            raise _Invalid("the file ended inside a transaction trailer")
        ctag, trailer_crc, total = journal.TXN_TRAILER.unpack(trailer)
        if ctag != journal.COMMIT_TAG:
            raise _Invalid(f"commit tag {ctag!r} is not {journal.COMMIT_TAG!r}")
        if total != end - position:
            raise _Invalid(f"trailer length {total} does not match header length {end - position}")
        if crc != trailer_crc:
            raise _Invalid("transaction checksum mismatch")
        if next_record != body_end or len(records) != count:
            raise _Invalid(f"{count} records do not tile the body of {body_length} bytes")
        if len({oid for oid, _ in records}) != count:
            raise _Invalid("an oid appears twice in one transaction")
        return TxnInfo(tid, time_us, position, end - position, count), records

    def _torn_or_damaged(self, position: int, reason: str) -> None:
        """Classify the invalid bytes at ``position`` (RCV-002, RCV-003)."""
        # [HIST-002] A torn tail ends the walk quietly; damage raises.
        # A torn tail is at most one interrupted commit, so reading the rest
        # whole is cheap in the common case; damage in mid-file is rare.
        rest = self._pread(self.size - position, position)
        try:
            journal.scan(rest, position, self.path, last_tid=self.last_tid, base=position)
        except CorruptionError:
            raise CorruptionError(
                self.path,
                position,
                f"{reason}; a valid transaction follows, so this is damage, "
                "not an interrupted commit",
            ) from None
        self.tail = (position, self.size)
        self.tail_reason = reason
