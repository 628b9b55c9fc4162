"""FileStorage: the journal file with an on-disk index; TempFileStorage.

Spec: ``spec/file-format.md`` (journal, recovery, pack) and
``spec/file-index.md`` (the ``PATH.index`` sidecar).

Theory of operation.  The data file is the same journal FileStorage2 writes.
The index of current record offsets is split in two:

* the sidecar index ``PATH.index`` (:mod:`dhruva.file_index`) maps each oid to
  its record offset for every transaction below its *covered offset*;
* ``_index``, a dict in memory, holds the records of the transactions after
  the covered offset (the *tail*), and wins over the sidecar.

Opening reads the sidecar's header, checks that it belongs to this data file
(same file id; the trailer ending at the covered offset has the recorded CRC
and tid) and scans only the tail.  A missing or mismatched sidecar is rebuilt
by one full scan.  A checkpoint writes the tail into the sidecar and moves the
covered offset to the end of data; it runs when the tail grows past
``CHECKPOINT_BYTES`` and at close, so its cost is amortised over many commits
and the scan at open stays short.  The sidecar is derived data: deleting it
costs one full scan at the next open, never data.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import tempfile
from collections.abc import Iterator

from dhruva import journal, speedups
from dhruva.file_index import MAX_OID as INDEX_MAX_OID
from dhruva.file_index import DiskIndex
from dhruva.file_storage2 import FileStorage2
from dhruva.fileio import FileLayer, OSFile
from dhruva.journal_storage import JournalStorage
from dhruva.utils import int8_to_str, str_to_int8

__all__ = ["CHECKPOINT_BYTES", "FileStorage", "FileStorage2", "TempFileStorage"]

log = logging.getLogger("dhruva.file_storage")
_c_index_offset = speedups.index_offset
_c_file_load = speedups.file_load
_c_tail_entries = speedups.tail_entries

#: Tail bytes after which a commit also checkpoints the index ([IDX-040]).
CHECKPOINT_BYTES = 4 << 20


class FileStorage(JournalStorage):
    """A durable single-process storage in one data file with a sidecar index.

    ``path`` names the data file (created when missing); None means a temporary
    file removed at close, as in Durus.  ``readonly`` opens with a shared lock
    and refuses writes (ReadOnlyError); ``repair`` cuts a damaged file at the
    first damage instead of raising CorruptionError, keeping the cut bytes in
    ``PATH.trN``; ``file_layer`` replaces the file system (tests).
    """

    def __init__(
        self,
        path: str | None = None,
        readonly: bool = False,
        repair: bool = False,
        file_layer: FileLayer | None = None,
    ) -> None:
        self._disk: DiskIndex | None = None
        self._covered = journal.FILE_HEADER_SIZE
        self._disk_max_oid = -1
        self._temporary = path is None
        if path is None:
            if readonly:
                raise ValueError("a temporary FileStorage cannot be read-only")
            fd, path = tempfile.mkstemp(prefix="dhruva-", suffix=".dhruva")
            os.close(fd)
        self.index_path = os.fspath(path) + ".index"
        super().__init__(path, readonly=readonly, repair=repair, file_layer=file_layer)
        if _c_file_load is not None and type(self).load is JournalStorage.load:
            # load(), as one C call on every cold read: the same lookups and
            # record read, and JournalStorage.load for everything unusual
            # (read on each call: a reopened or packed file, a broken
            # storage, a file layer of another kind).
            self.load = functools.partial(  # type: ignore[method-assign]
                _c_file_load, self, JournalStorage.load, OSFile
            )

    # --- open --------------------------------------------------------------------

    def _recover(self) -> None:
        disk: DiskIndex | None = None
        committed_end = 0
        if not self._temporary:
            disk = DiskIndex.open(self.index_path, self.file_id, self.readonly, self._layer)
            if disk is not None and not self._disk_matches(disk):
                log.warning("%s does not match %s; rebuilding it", self.index_path, self.path)
                # [RCV-008] An index of this file (same file id) was written
                # after the bytes it covers were synced: a transaction there
                # that fails its checks is damage, never an interrupted commit.
                committed_end = disk.covered_offset
                disk.close()
                disk = None
        if disk is not None:
            # [RCV-030] Only the tail after the covered offset is scanned.
            self._last_tid = disk.last_tid
            self._last_trailer_crc = disk.last_trailer_crc
            self._covered = disk.covered_offset
            self._disk_max_oid = disk.max_oid
            self._disk = disk
            tail: dict[bytes, int] = {}
            result = self._scan_tail(disk.covered_offset, tail)
            if result.corrupt and not self.readonly:
                # [IDX-033] A repair cut committed bytes after the covered
                # offset; entries of an interrupted checkpoint could point into
                # the cut range, so the index is rebuilt from the repaired file.
                disk.close()
                DiskIndex.discard(self.index_path, self._layer)
                self._disk = None
                disk = None
                self._reset_scan_state()
            else:
                self._index = tail
        if disk is None:
            entries: dict[bytes, int] = {}
            self._scan_tail(journal.FILE_HEADER_SIZE, entries, committed_end)
            self._index = entries
            if not self.readonly and not self._temporary:
                self._disk = self._create_disk_index(entries)
        self._next_oid = self._disk_max_oid + 1
        if self._index:
            self._next_oid = max(self._next_oid, str_to_int8(max(self._index)) + 1)

    def _reset_scan_state(self) -> None:
        """Forget what an index-based open learned, before a full rescan."""
        self._end = journal.FILE_HEADER_SIZE
        self._last_tid = 0
        self._last_time_us = 0
        self._last_trailer_crc = 0
        self._covered = journal.FILE_HEADER_SIZE
        self._disk_max_oid = -1

    def _disk_matches(self, disk: DiskIndex) -> bool:
        """Return True when ``disk`` describes a prefix of this data file (RCV-031)."""
        assert self._file is not None
        covered = disk.covered_offset
        if covered == journal.FILE_HEADER_SIZE:
            return disk.last_tid == 0
        if covered < journal.FILE_HEADER_SIZE + journal.TXN_OVERHEAD:
            return False
        if covered > self._file.size():
            return False
        raw_trailer = self._file.pread(journal.TXN_TRAILER_SIZE, covered - journal.TXN_TRAILER_SIZE)
        trailer = journal.CommitTrailer.unpack_from(raw_trailer)
        if trailer.tag != journal.COMMIT_TAG or trailer.crc != disk.last_trailer_crc:
            return False
        start = covered - trailer.total_length
        if start < journal.FILE_HEADER_SIZE:
            return False
        header = journal.TxnHeader.unpack_from(self._file.pread(journal.TXN_HEADER_SIZE, start))
        if header.tag != journal.TXN_TAG or header.tid != disk.last_tid:
            return False
        self._last_time_us = header.time_us
        return True

    def _create_disk_index(self, entries: dict[bytes, int]) -> DiskIndex | None:
        """Write a fresh sidecar from ``entries`` (all current records); return it open.

        On success ``entries`` is emptied (the sidecar now holds them).  Oids
        beyond what the sidecar can index keep the storage on its in-memory
        index for this open.
        """
        max_oid = str_to_int8(max(entries)) if entries else -1
        if not self._index_can_hold(max_oid):
            return None
        disk = DiskIndex.create(
            self.index_path,
            self.file_id,
            {int.from_bytes(oid, "big"): offset for oid, offset in entries.items()},
            self._end,
            self._last_tid,
            self._last_trailer_crc,
            max_oid,
            self._layer,
        )
        self._covered_to_end(entries, max_oid)
        return disk

    def _index_can_hold(self, max_oid: int) -> bool:
        """Return whether PATH.index can hold oids up to ``max_oid`` (warn if not)."""
        if max_oid > INDEX_MAX_OID:
            log.warning("%s: oid %d is too large for the index file", self.path, max_oid)
            return False
        return True

    def _covered_to_end(self, written: dict[bytes, int], max_oid: int) -> None:
        """Note that the sidecar now holds ``written`` (emptied here) up to the file's end."""
        self._covered = self._end
        self._disk_max_oid = max_oid
        written.clear()

    def _drop_disk_index(self) -> None:
        """Stop using the sidecar: fold it into ``_index`` and delete it."""
        disk, self._disk = self._disk, None
        if disk is None:
            return
        try:
            for number, offset in disk.iter_entries():
                self._index.setdefault(int8_to_str(number), offset)
        finally:
            disk.close()
        self._covered = journal.FILE_HEADER_SIZE
        self._disk_max_oid = -1
        try:
            DiskIndex.discard(self.index_path, self._layer)
        except OSError as exc:
            # Left behind, it is still a valid older index: its meta slot
            # names a covered offset the data file still has ([IDX-036]).
            log.warning("%s: could not remove the index (%s)", self.index_path, exc)

    # --- index lookups -------------------------------------------------------------

    def _lookup_more(self, oid: bytes) -> int:
        disk = self._disk
        if disk is None:
            return 0
        last = self._disk_max_oid
        mapping = disk._map
        if _c_index_offset is not None and mapping is not None:
            # DiskIndex.lookup_oid's C step, inline: a Python call fewer on
            # every cold read of an oid the index holds.
            top = disk._capacity - 1
            offset = _c_index_offset(mapping, oid, last if last < top else top, disk.covered_offset)
            if offset is not None:
                return offset
        return disk.lookup_oid(oid, last)  # load checked the oid's shape

    def iter_oids(self) -> Iterator[bytes]:
        self._check_open()
        tail = list(self._index)
        yield from tail
        disk = self._disk
        if disk is not None:
            tail_set = set(tail)
            for number, _offset in disk.iter_entries():
                oid = int8_to_str(number)
                if oid not in tail_set:
                    yield oid

    def get_size(self) -> int:
        self._check_open()
        disk = self._disk
        if disk is None:
            return len(self._index)
        # Tail oids with no sidecar entry are new since the last checkpoint.
        return disk.entry_count + sum(1 for oid in self._index if not self._lookup_more(oid))

    # --- checkpoints -----------------------------------------------------------------

    def _after_commit(self) -> None:
        if self._disk is not None and self._end - self._covered >= CHECKPOINT_BYTES:
            # The commit is already durable; a failing checkpoint must not make
            # end() report it as failed.  The index is derived data: stop using
            # it for this open and let the next open rebuild it.
            try:
                self.checkpoint()
            except (OSError, ValueError) as exc:
                log.warning("%s: checkpoint failed (%s); index dropped", self.index_path, exc)
                self._drop_disk_index()

    def checkpoint(self) -> None:
        """Write the tail's index entries into ``PATH.index`` (IDX checkpoint order)."""
        disk = self._disk
        if disk is None or self._end == self._covered:
            return
        tail = self._index
        max_oid = self._disk_max_oid
        # {oid number: offset} and the greatest number: one C call, or every
        # oid at once (one unpack of the joined keys, not a call per oid).
        converted = _c_tail_entries(tail) if _c_tail_entries is not None else None
        if converted is None:
            numbers = struct.unpack(f">{len(tail)}Q", b"".join(tail))
            entries = dict(zip(numbers, tail.values(), strict=True))
            if tail:
                max_oid = max(max_oid, str_to_int8(max(tail)))
        else:
            entries, greatest = converted
            max_oid = max(max_oid, greatest)
        if not self._index_can_hold(max_oid):
            self._drop_disk_index()
            return
        disk.checkpoint(
            entries,
            self._end,
            self._last_tid,
            self._last_trailer_crc,
            max_oid,
        )
        self._covered_to_end(tail, max_oid)

    def _before_close(self) -> None:
        try:
            self.checkpoint()
        except (OSError, ValueError) as exc:
            # [FLT-072] The commits are durable; only derived data failed (a
            # full disk, say).  Closing must not fail for it: the sidecar is
            # deleted so that the next open rebuilds it with a full scan.
            log.warning(
                "%s: checkpoint at close failed (%s); the index is removed and the "
                "next open rebuilds it",
                self.index_path,
                exc,
            )
            disk, self._disk = self._disk, None
            if disk is not None:
                disk.close()
            try:
                DiskIndex.discard(self.index_path, self._layer)
            except OSError as discard_error:
                # The old meta slot stays current on disk (IDX-030), so the
                # index left behind is still a valid, older index.
                log.warning("%s: could not remove it (%s)", self.index_path, discard_error)

    def close(self) -> None:
        try:
            super().close()
        finally:
            disk, self._disk = self._disk, None
            if disk is not None:
                disk.close()
            if self._temporary:
                self._remove_temporary_files()

    def _remove_temporary_files(self) -> None:
        self._temporary = False
        for suffix in ("", ".index", ".pack"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass

    # --- pack -------------------------------------------------------------------------

    def _pack_offsets(self, oids: list[bytes]) -> list[int]:
        # The pack's hot path: one dict probe, then the sidecar, without the
        # per-oid conversions of _lookup_more.
        get = self._index.get
        disk = self._disk
        if disk is None:
            return [get(oid) or 0 for oid in oids]
        lookup = disk.lookup
        highest = self._disk_max_oid
        result = []
        for oid in oids:
            offset = get(oid)
            if offset is None:
                number = int.from_bytes(oid, "big")
                offset = lookup(number) if number <= highest else 0
            result.append(offset)
        return result

    def _before_replace(self) -> None:
        # [IDX-033] The sidecar goes before the file it indexes is replaced.
        # It is not folded into memory (that costs a pass over every entry):
        # a failure from here to the end of the rename leaves the storage
        # refusing work until reopened, and the reopen rebuilds the index.
        disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()
            DiskIndex.discard(self.index_path, self._layer)
        self._covered = journal.FILE_HEADER_SIZE
        self._disk_max_oid = -1

    def _replace_index(self, new_index: dict[bytes, int]) -> None:
        self._covered = journal.FILE_HEADER_SIZE
        self._disk_max_oid = -1
        self._index = new_index
        if not self._temporary:
            # [RCV-024] A new sidecar for the packed file.
            self._disk = self._create_disk_index(new_index)


class TempFileStorage(FileStorage):
    """A FileStorage on a new temporary file, removed (with its sidecars) at close."""

    def __init__(self, file_layer: FileLayer | None = None) -> None:
        super().__init__(None, file_layer=file_layer)

    def get_filename(self) -> str:
        """Return the temporary data file's path (Durus's method; SAPI-086)."""
        return self.path
