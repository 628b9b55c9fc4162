"""JournalStorage: the machinery shared by FileStorage and FileStorage2.

Spec: ``spec/file-format.md`` (journal layout, write path, recovery),
``spec/pack.md`` (pack) and ``spec/fault-model.md`` (what is assumed of the disk).

Theory of operation
-------------------
The data file is an append-only journal of transactions (the codec is
:mod:`dhruva.journal`); every byte goes through a :class:`dhruva.fileio.FileLayer`
so that tests can substitute a fault-injecting one.

State.  ``_file`` is the open, locked data file; ``_end`` the end of valid
data (every byte before it belongs to a complete, synced transaction);
``_last_tid``, ``_last_time_us`` and ``_last_trailer_crc`` describe the last
transaction before ``_end``; ``_next_oid`` is beyond every stored or handed-out
oid.  ``_index`` maps oid -> offset of its current record for the records the
subclass keeps in memory; a subclass may keep more elsewhere (the *secondary
index*, FileStorage's ``PATH.index``) and answers for it through
:meth:`JournalStorage._lookup_more`.  ``_broken`` is set when the file may no
longer match ``_end`` and only a reopen can tell (a failed rename of pack);
``_unclean_tail`` when a commit's write or sync failed, so bytes after
``_end`` are unknown while everything before it is committed and synced.
``_allocated`` is the file's size: the bytes from ``_end`` to it are zeros,
free space that the next small commits overwrite (RCV-060).

Order of a commit (``end()``): encode the transaction in memory; one
``pwrite`` at ``_end`` (followed by ``FREE_SPACE_BYTES`` of zeros when a small
transaction does not fit in the free space); one ``sync``; only then note the records in the
``_index``, move ``_end`` and the tid state, and call ``_after_commit``.  A
crash before the sync returns loses this commit and nothing else (RCV-010,
RCV-011).  An I/O error (a full disk) does the same: ``end()`` raises, loads
go on from the committed data, and the next commit first cuts the file back
to ``_end`` and syncs that, then writes its own transaction (FLT-070,
FLT-071; spec/fault-model.md, "Full disk").

Open: lock, check (or write) the file header, then ``_recover`` (the
subclass) builds the index, scanning with :meth:`JournalStorage._scan_tail`,
which sets aside a torn tail (RCV-005).

The seam with the subclasses is seven hooks, each documented where it is
defined below ("Subclass hooks"): ``_recover``, ``_lookup_more``,
``_pack_offsets``, ``_after_commit``, ``_before_close``,
``_before_replace`` and ``_replace_index``.  The base calls each at one
point of its order of operations and at no other; a subclass overrides a hook
to keep its own index in step and must not touch the journal state
(``_file``, ``_end``, tids), which only the base and the swap at the end of a
pack change.

The seam with the packer (:mod:`dhruva.file_pack`) is
:class:`dhruva.file_pack.PackTarget`, implemented here by
:class:`_StoragePackTarget`: the packer learns the snapshot, reads the data
file, asks for record offsets, and at the end hands back the packed file,
without touching the storage's attributes.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from itertools import accumulate, repeat
from operator import add as _add
from operator import itemgetter
from typing import Any, BinaryIO

from dhruva import journal, speedups
from dhruva.blob_store import BlobStore, blob_directory, blobs_without_records, no_blob
from dhruva.error import (
    CorruptionError,
    DhruvaError,
    DhruvaKeyError,
    DiskReadError,
    ReadOnlyError,
)
from dhruva.file_pack import (
    DEFAULT_STEP_BUDGET,
    Packer,
    PackHook,
    PackProgress,
    PackSnapshot,
)
from dhruva.fileio import OS_FILES, DataFile, FileLayer, FileReplacedError, OSFile, set_aside
from dhruva.snapshots import VersionLedger
from dhruva.storage import (
    CAP_BLOBS,
    CAP_DURABLE,
    CAP_PACK,
    CAP_RAW_FILE,
    CAP_READONLY_OPEN,
    CAP_SNAPSHOTS,
    Record,
    Storage,
    check_oid,
    check_record,
    check_snapshot_tid,
)
from dhruva.utils import OID_SIZE, pack_int8, str_to_int8

#: journal.encode_transaction's C part (None without the extension).
_c_encode_transaction = speedups.encode_transaction
_unpack_trailer = journal.TXN_TRAILER.unpack_from
#: What end() stages when no blob store exists: nothing.
_NO_BLOBS: frozenset[bytes] = frozenset()
_oid_of = itemgetter(0)
_data_of = itemgetter(1)
_refs_of = itemgetter(2)

log = logging.getLogger("dhruva.file_storage")

#: Bytes read by a load in one go; most records fit, larger ones take a second read.
#: (A read of 4096 bytes from the page cache cost a third more than one of 1024.)
LOAD_READ_BYTES = 1024
_record_lengths = journal.RECORD_LENGTHS.unpack_from
_c_read_record = speedups.read_record
_c_journal_new_oid = speedups.journal_new_oid
_c_stage_records = speedups.stage_records
_c_index_records = speedups.index_records
_OPEN_ATTEMPTS = 3
#: [RCV-060] A small transaction that does not fit in the free space is
#: written with this many zero bytes after it, in the same write and sync.
#: The commits after it then overwrite allocated, initialised bytes, and
#: their sync flushes data only: an append also changes the file's size,
#: which costs every sync a journal commit of the file system.
FREE_SPACE_BYTES = 64 * 1024
#: Only transactions up to this size get free space after them: a larger one
#: pays for its sync in the bytes it writes, and zeros as large would double them.
FREE_SPACE_MAX_TXN = FREE_SPACE_BYTES // 8

#: The errnos of a write that found no room: it is written again without free space.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class JournalStorage(Storage):
    """The shared machinery of FileStorage and FileStorage2 (not used directly)."""

    capabilities = frozenset(
        {CAP_DURABLE, CAP_RAW_FILE, CAP_PACK, CAP_READONLY_OPEN, CAP_SNAPSHOTS, CAP_BLOBS}
    )

    def __init__(
        self,
        path: str,
        readonly: bool = False,
        repair: bool = False,
        file_layer: FileLayer | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self.repair = repair
        self._layer: FileLayer = file_layer if file_layer is not None else OS_FILES
        self._index: dict[bytes, int] = {}
        self._pending: dict[bytes, tuple[bytes, bytes, bytes]] | None = None
        self._end = journal.FILE_HEADER_SIZE
        self._allocated = journal.FILE_HEADER_SIZE
        self._last_tid = 0
        self._last_time_us = 0
        self._last_trailer_crc = 0
        self._next_oid = 0
        self._broken: str | None = None
        #: The journal format version of the data file (FMT-021), from its header.
        self.format_version = journal.MAJOR_VERSION
        # Why the bytes after _end may not be what _end says (a failed commit
        # write or sync), or None; the next write restores them first (FLT-070).
        self._unclean_tail: str | None = None
        self._file: DataFile | None = None
        self._file = self._open_data_file()
        try:
            self._recover()
            # [RCV-060] What lies between _end and the file's size is free space.
            self._allocated = self._file.size()
        except BaseException:
            self._file.close()
            self._file = None
            raise
        # [SAPI-090] The journal's last tid is the read point; it is on disk,
        # so it survives close and reopen.  [SAPI-098] The ledger is memory
        # only: it starts empty at every open, answering snapshots from here on.
        self._ledger = VersionLedger(self._last_tid)
        # [BLOB-020] Blobs live in PATH.blobs, made at the first blob stored.
        self._blob_store: BlobStore | None = None
        if os.path.isdir(blob_directory(self.path)):
            self._blob_store = BlobStore(blob_directory(self.path), readonly=readonly)
            # [BLOB-021] What a crash left: staged files, blobs of uncommitted tids.
            self._blob_store.recover(self._last_tid)
        if _c_journal_new_oid is not None and type(self).new_oid is JournalStorage.new_oid:
            # new_oid(), as one C call for each new object of a commit: the
            # same checks and counter, and JournalStorage.new_oid whenever the
            # storage is closed, broken or read-only (it raises there).
            self.new_oid = functools.partial(  # type: ignore[method-assign]
                _c_journal_new_oid, self, JournalStorage.new_oid
            )

    # --- opening and recovery ---------------------------------------------------

    def _open_data_file(self) -> DataFile:
        """Open, lock and check the header of the data file (creating it if needed)."""
        for attempt in range(_OPEN_ATTEMPTS):
            writable = not self.readonly
            data_file = self._layer.open(self.path, create=writable, readonly=not writable)
            try:
                # [FLT-010] One writer per file; readers share a lock that
                # excludes the writer.
                data_file.lock(exclusive=not self.readonly)
                self.file_id = self._check_header(data_file)
            except FileReplacedError:
                data_file.close()
                if attempt + 1 < _OPEN_ATTEMPTS:
                    continue  # pack() renamed a new file over the path; retry.
                raise
            except BaseException:
                data_file.close()
                raise
            return data_file
        raise AssertionError("unreachable")

    def _check_header(self, data_file: DataFile) -> bytes:
        size = data_file.size()
        header_size = journal.FILE_HEADER_SIZE
        if size <= header_size and not self.readonly:
            found = data_file.pread(size, 0)
            # [RCV-006] An empty file, or one holding what a torn header write
            # can leave, is a creation that did not finish: it holds no transaction.
            if journal.is_unfinished_header(found):
                if size:
                    set_aside(self._layer, data_file, 0, "incomplete file header")
                file_id = os.urandom(journal.FILE_ID_SIZE)
                # [FMT-021] New files are written in the current version.
                data_file.pwrite(journal.encode_file_header(file_id), 0)
                data_file.sync()
                self._layer.sync_directory(self.path)
                self.format_version = journal.MAJOR_VERSION
                return file_id
        header = journal.decode_file_header(data_file.pread(header_size, 0), self.path)
        self.format_version = header.major
        return header.file_id

    def _scan_tail(
        self, start: int, index: dict[bytes, int], committed_end: int = 0
    ) -> journal.ScanResult:
        """Scan from ``start`` to the end, apply the recovery rule, set ``_end`` and tid state.

        ``committed_end`` is the offset up to which the sidecar index proves
        the file committed (RCV-008), 0 when nothing is known.  Records of
        valid transactions go into ``index``.  A torn tail (or,
        with ``repair``, everything from the damage on) is set aside unless the
        storage is read-only, in which case it is only ignored (RCV-004).
        """
        assert self._file is not None
        size = self._file.size()
        buf = self._file.pread(size - start, start) if size > start else b""
        result = journal.scan(
            buf,
            start,
            self.path,
            last_tid=self._last_tid,
            repair=self.repair,
            index=index,
            base=start,
            version=self.format_version,
            committed_end=committed_end,
        )
        if result.spans:
            last = result.spans[-1]
            self._last_tid = last.tid
            self._last_time_us = last.time_us
            self._last_trailer_crc = result.last_trailer_crc
        self._end = result.end
        if result.tail is not None:
            reason = result.tail_reason or "damaged"
            if result.corrupt:
                reason = f"damage repaired: {reason}"
            if self.readonly:
                log.warning(
                    "%s: ignoring %d bytes at offset %d (%s); open it writable to set them aside",
                    self.path,
                    result.tail[1] - result.tail[0],
                    result.tail[0],
                    reason,
                )
            else:
                # [RCV-005] Never destroy bytes: keep them beside the file first.
                set_aside(self._layer, self._file, result.tail[0], reason)
        return result

    # --- subclass hooks -----------------------------------------------------------
    #
    # The seam between the journal (this class) and where an index lives (the
    # subclasses).  Each hook is called at exactly one point, named in its
    # docstring; none may change the journal state (_file, _end, the tids).

    def _recover(self) -> None:
        """Build the index at open; called once by ``__init__`` after the header check.

        Contract: on return ``_index`` (plus the secondary index, if any) maps
        every oid with a committed record to its current offset, ``_end`` and
        the tid state describe the last complete transaction (set by
        :meth:`_scan_tail`, which the hook calls for the range it scans) and
        ``_next_oid`` is beyond every stored oid.  May raise CorruptionError;
        the file is then closed and the open fails.
        """
        raise NotImplementedError

    def _lookup_more(self, oid: bytes) -> int:
        """Return the offset of ``oid`` in the secondary index, or 0 when it has none.

        Called by ``load()`` only when ``_index`` has no entry for ``oid``
        (``_index`` wins).  Must not raise for an unknown oid.
        """
        return 0

    def _pack_offsets(self, oids: list[bytes]) -> list[int]:
        """Return the current record offset of each of ``oids``, 0 for a missing one.

        The packer's batch form of a lookup (``_index`` first, then the
        secondary index); a subclass overrides it only to make it faster.
        """
        get = self._index.get
        lookup_more = self._lookup_more
        return [get(oid) or lookup_more(oid) for oid in oids]

    def _after_commit(self) -> None:
        """Run after each acknowledged commit, once ``_index`` and ``_end`` include it.

        The commit is durable when this runs: the hook must not raise for a
        failure of derived data (it logs and degrades instead), or ``end()``
        would report a durable commit as failed.
        """

    def _before_close(self) -> None:
        """Run once by ``close()`` of a writable, healthy storage, before the file closes.

        May raise OSError; ``close()`` still closes the file and re-raises.
        """

    def _before_replace(self) -> None:
        """Run by pack just before the packed file is renamed over the data file.

        The secondary index describes the old file and must stop being used,
        durably, before the rename ([IDX-033]).  An exception abandons the
        switch and leaves the storage refusing work until reopened.
        """

    def _replace_index(self, new_index: dict[bytes, int]) -> None:
        """Install the index of a freshly packed file, after the storage switched to it.

        ``new_index`` maps every oid of the packed file to its offset; the
        hook owns it from here on.
        """
        self._index = new_index

    # --- state checks -----------------------------------------------------------

    def _check_open(self) -> DataFile:
        if self._file is None:
            raise DhruvaError(f"the storage {self.path} is closed")
        if self._broken is not None:
            raise DhruvaError(
                f"{self.path}: an earlier write failed ({self._broken}); close and reopen it"
            )
        return self._file

    def _check_writable(self) -> DataFile:
        data_file = self._check_open()
        if self.readonly:
            raise ReadOnlyError(f"{self.path} was opened read-only; writes are refused")
        return data_file

    # --- the Storage interface ----------------------------------------------------

    def new_oid(self) -> bytes:
        if self._file is None or self._broken is not None or self.readonly:
            self._check_writable()  # raises; the checks are inline for a commit of many new objects
        # [SAPI-010] Beyond every stored oid and every oid handed out by this open.
        oid = self._next_oid
        self._next_oid = oid + 1
        return pack_int8(oid)

    def load(self, oid: bytes) -> Record:
        # The hot path of every cold read: the checks of _check_open inline,
        # the record's size read here, one decode call.
        data_file = self._file
        if data_file is None or self._broken is not None:
            data_file = self._check_open()  # raises
        offset = self._index.get(oid)
        if offset is None:
            if type(oid) is not bytes or len(oid) != 8:
                check_oid(oid)  # [SAPI-006] only on a miss: the hit path stays as it was
            offset = self._lookup_more(oid)
            if not offset:
                raise DhruvaKeyError(oid)
        version = self.format_version
        if _c_read_record is not None and type(data_file) is OSFile:
            # The C version reads the ordinary record; None sends anything
            # else (short, damaged, another oid) down the reference path below.
            record = _c_read_record(data_file.fd, offset, version, oid)
            if record is not None:
                return record
        try:
            buf = data_file.pread(LOAD_READ_BYTES, offset)
            header_size = journal.record_header_size(version)
            if len(buf) < header_size:
                raise CorruptionError(
                    self.path, offset, "record header runs past the end of the file"
                )
            # journal.record_size, inline: data_length, ref_count at 8 in both versions
            data_length, ref_count = _record_lengths(buf, 8)
            size = header_size + data_length + 8 * ref_count
            if size > len(buf):
                # A damaged length must not make the read below ask for up
                # to 36 GiB: a record that would run past the end is refused.
                if offset + size > data_file.size():
                    raise CorruptionError(self.path, offset, "record runs past the end of the file")
                buf = data_file.pread(size, offset)
        except OSError as exc:
            # [FLT-084] A failed read fails this load only, naming file and offset.
            raise DiskReadError(exc.errno, exc.strerror or str(exc), self.path, offset) from exc
        # [FMT-023] A version 2 record is checked against its checksum here.
        record = journal.decode_record_at(buf, offset, self.path, base=offset, version=version)
        if record.oid != oid:
            raise CorruptionError(
                self.path,
                offset,
                f"the index says oid {str_to_int8(oid)} is here but the record is of oid "
                f"{str_to_int8(record.oid)}; delete {self.path}.index to rebuild it",
            )
        return record

    # --- snapshots (spec: storage-api.md, "Snapshots") ------------------------------

    def last_tid(self) -> int:
        """Return the tid of the last committed transaction of the journal (SAPI-090).

        One writer per file (FLT-010): the read point is always the last commit.
        """
        if self._file is None or self._broken is not None:
            self._check_open()  # raises; the checks inline (every commit comes here)
        return self._last_tid

    def load_at(self, oid: bytes, tid: int) -> Record:
        """Return ``oid``'s record as transaction ``tid`` left it (SAPI-092, SAPI-094)."""
        self._check_open()
        return self._ledger.load_at(oid, tid, self._last_tid, self.load)

    def set_oldest_snapshot(self, tid: int | None) -> None:
        """Keep the versions snapshots at or after ``tid`` read (SAPI-093)."""
        self._check_open()
        self._ledger.set_floor(tid)

    def _previous_versions(self, oids: list[bytes]) -> list[tuple[bytes, Record | None]]:
        """Return the current record of each oid (None for a new one), for the ledger.

        Read before the commit's write, by the index as it is: the versions
        a held snapshot still reads once this commit replaces them.
        """
        previous: list[tuple[bytes, Record | None]] = []
        for oid in oids:
            try:
                previous.append((oid, self.load(oid)))
            except DhruvaKeyError:
                previous.append((oid, None))
        return previous

    def begin(self) -> None:
        if self._file is None or self._broken is not None or self.readonly:
            self._check_writable()  # raises; the checks inline, as in store()
        if self._pending is not None:
            raise DhruvaError("a transaction is already open")
        self._pending = {}

    def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
        pending = self._pending
        # Once per record of a commit: the state checks inline, and the
        # record's checked only when it is not three exact byte strings of
        # the right shapes.
        if self._file is None or self._broken is not None or self.readonly:
            self._check_writable()  # raises
        if pending is None:
            raise DhruvaError("store() outside a transaction; call begin() first")
        if (
            type(oid) is not bytes
            or len(oid) != OID_SIZE
            or type(data) is not bytes
            or type(refs) is not bytes
            or len(refs) % OID_SIZE
        ):
            check_record(oid, data, refs)
            data = bytes(data)
        pending[oid] = (oid, data, refs)

    def store_many(self, records: Iterable[tuple[bytes, bytes, bytes]]) -> None:
        """``store()`` of each triple, in order (SAPI-038): a commit's records in one call.

        With dhruva.speedups a list of records that store() takes as they are
        (exact bytes of the right shapes, in exact tuples: what the
        Connection's writer makes) is staged in one C step; anything else,
        and a subclass's own store(), goes through store() one by one.
        """
        pending = self._pending
        if (
            _c_stage_records is not None
            and pending is not None
            and self._file is not None
            and self._broken is None
            and not self.readonly
            # Not a subclass's store(), nor one set on the instance (a test's).
            and getattr(self.store, "__func__", None) is JournalStorage.store
            and _c_stage_records(pending, records)
        ):
            return
        store = self.store
        for oid, data, refs in records:
            store(oid, data, refs)

    # --- blobs (spec: blobs.md) ------------------------------------------------------

    def store_blob(self, oid: bytes, file: BinaryIO) -> None:
        """Stage ``file``'s content as ``oid``'s blob of the open transaction (BLOB-010)."""
        self._check_writable()
        if self._pending is None:
            raise DhruvaError("store_blob() outside a transaction; call begin() first")
        check_oid(oid)
        if self._blob_store is None:
            self._blob_store = BlobStore(blob_directory(self.path))
        self._blob_store.stage(oid, file)

    def open_blob(self, oid: bytes, tid: int | None = None) -> BinaryIO:
        """Open ``oid``'s blob as of the last commit or ``tid`` (BLOB-011, BLOB-022)."""
        self._check_open()
        if tid is None:
            tid = self._last_tid
        else:
            check_snapshot_tid(tid, self._last_tid)
        if self._blob_store is None:
            check_oid(oid)
            raise no_blob(oid)
        return self._blob_store.open(oid, tid)

    def _staged_blobs(self, pending: dict[bytes, Any]) -> set[bytes]:
        """The oids with staged blobs; refuse blobs whose records are not stored (BLOB-010)."""
        blobs = self._blob_store
        if blobs is None:
            return set()
        staged = blobs.staged_oids()
        orphans = blobs_without_records(staged, pending)
        if orphans is not None:
            blobs.discard()
            raise orphans
        return staged

    def end(self) -> None:
        data_file = self._file
        if data_file is None or self._broken is not None or self.readonly:
            data_file = self._check_writable()  # raises
        pending = self._pending
        if pending is None:
            raise DhruvaError("end() without begin()")
        self._pending = None
        # No blob store yet: no blob staged, and no call to find that out.
        staged = self._staged_blobs(pending) if self._blob_store is not None else _NO_BLOBS
        if not pending:
            return  # [RCV-013] An empty transaction writes nothing.
        if self._unclean_tail is not None:
            self._restore_tail(data_file)
        records = list(pending.values())
        tid = self._last_tid + 1
        ledger = self._ledger
        # [SAPI-093] Only while an older snapshot is held: otherwise a commit
        # reads nothing more than it did before snapshots existed.
        previous = self._previous_versions(list(pending)) if ledger.wanted(tid) else ()
        # [FMT-016] Commit times never go backwards within a file.
        time_us = max(time.time_ns() // 1000, self._last_time_us)
        # [FMT-021] Appended in the layout of the file's own version; the C
        # encoder called here, journal.encode_transaction when it declines.
        version = self.format_version
        txn = None
        if _c_encode_transaction is not None:
            # The values of ``pending``, keyed by oid: no oid twice ([FMT-013]).
            txn = _c_encode_transaction(tid, time_us, records, version, True)
        if txn is None:
            txn = journal.encode_transaction(tid, time_us, records, version)
        offset = self._end
        written = txn
        if offset + len(txn) > self._allocated and len(txn) <= FREE_SPACE_MAX_TXN:
            # [RCV-060] Free space for the commits that follow, in this write.
            written = txn + bytes(FREE_SPACE_BYTES)
        if staged:
            assert self._blob_store is not None
            # [BLOB-020] The blobs get their names before the journal write:
            # they count only once the transaction is durable.
            self._blob_store.commit(tid)
        try:
            # [RCV-010] One write of the whole transaction, then one sync.
            try:
                data_file.pwrite(written, offset)
            except OSError as exc:
                if written is txn or exc.errno not in _NO_SPACE:
                    raise
                # [RCV-060] No room for the free space: the transaction alone,
                # so that a nearly full disk takes what fits.  A failed write
                # (not a failed sync) may be written again.
                data_file.truncate(offset)
                written = txn
                data_file.pwrite(txn, offset)
            data_file.sync()
        except BaseException as exc:
            if staged:
                self._undo_blobs(tid, staged)
            # [FLT-070] The transaction may or may not be on disk, whole or in
            # part; it is not acknowledged and not visible.  Committed data
            # (before _end) is untouched, so loads go on; the next write first
            # cuts the file back to _end and syncs that (_restore_tail), never
            # retrying this sync ([FLT-005]).
            self._unclean_tail = f"{type(exc).__name__}: {exc}"
            log.warning(
                "%s: a commit failed (%s); it is not committed.  Loads continue; the "
                "next commit first cuts the file back to offset %d",
                self.path,
                self._unclean_tail,
                offset,
            )
            raise
        if self._packer is not None:
            # [PACK-021] The pack needs the records this commit supersedes.
            self._packer.note_replaced(list(pending))
        # [RCV-011] Visible only once durable: the index changes after the sync.
        index = self._index
        position = offset + journal.TXN_HEADER_SIZE
        header_size = (
            journal.RECORD_HEADER_SIZE
            if version == journal.MAJOR_VERSION
            else journal.record_header_size(version)
        )
        # index[oid] = position for each record, the positions summed from the
        # record sizes: in one C call, or a chain of C iterators, no Python
        # step per record.
        # It also returns the greatest oid (the oids are the keys of pending).
        greatest = (
            False
            if _c_index_records is None
            else _c_index_records(index, records, position, header_size)
        )
        if not isinstance(greatest, bytes):
            steps = map(_add, map(len, map(_data_of, records)), map(len, map(_refs_of, records)))
            positions = accumulate(map(_add, steps, repeat(header_size)), initial=position)
            # (positions holds one more: the end of the last record.)
            index.update(zip(map(_oid_of, records), positions, strict=False))
            greatest = max(pending)
        self._end = offset + len(txn)
        if offset + len(written) > self._allocated:
            self._allocated = offset + len(written)
        self._last_tid = tid
        self._last_time_us = time_us
        # journal.trailer_crc_before(txn, len(txn)), without its call.
        self._last_trailer_crc = _unpack_trailer(txn, len(txn) - journal.TXN_TRAILER_SIZE)[1]
        ledger.supersede(tid, previous)
        highest = int.from_bytes(greatest, "big") + 1  # str_to_int8, without its call
        if highest > self._next_oid:
            self._next_oid = highest
        self._after_commit()

    def _undo_blobs(self, tid: int, staged: AbstractSet[bytes]) -> None:
        """Remove the blob files of a commit that failed after they were named."""
        assert self._blob_store is not None
        try:
            self._blob_store.undo(tid, staged)
        except OSError as exc:
            # A blob file named after the failed tid would be taken for the
            # next commit's: no more writes until a reopen removes it (BLOB-021).
            self._broken = f"could not remove the blobs of a failed commit: {exc}"

    def _restore_tail(self, data_file: DataFile) -> None:
        """Cut the data file back to ``_end`` and sync it, after a failed commit (FLT-071).

        ``_end`` is the end of the last acknowledged transaction, synced
        before; whatever a failed commit left after it is removed, and the
        cut is made durable, so that the next commit writes after a known,
        durable end.  Raises OSError when the disk still refuses (the caller's
        commit then fails too, and the next one tries again).
        """
        data_file.truncate(self._end)
        data_file.sync()
        self._allocated = self._end
        log.warning(
            "%s: the file was cut back to offset %d after the failed commit (%s); commits continue",
            self.path,
            self._end,
            self._unclean_tail,
        )
        self._unclean_tail = None

    def abort_transaction(self) -> None:
        self._pending = None
        if self._blob_store is not None:
            self._blob_store.discard()  # [BLOB-014]

    def sync(self) -> list[bytes]:
        """Return []: a file storage has no other writers (FLT-010)."""
        if self._file is None or self._broken is not None:
            self._check_open()  # raises; the checks inline (every commit comes here)
        return []

    def iter_oids(self) -> Iterator[bytes]:
        self._check_open()
        return iter(list(self._index))

    def get_size(self) -> int:
        self._check_open()
        return len(self._index)

    def close(self) -> None:
        data_file = self._file
        if data_file is None:
            return
        self._pending = None
        if self._blob_store is not None:
            self._blob_store.discard()
        self.pack_abort()
        try:
            if not self.readonly and self._broken is None:
                if self._unclean_tail is not None:
                    try:
                        self._restore_tail(data_file)
                    except OSError as exc:
                        # The next open sets the failed commit's bytes aside (RCV-005).
                        log.warning("%s: could not cut the failed commit (%s)", self.path, exc)
                self._before_close()
        finally:
            self._file = None
            data_file.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}>"

    # --- history and pack --------------------------------------------------------

    def iter_transactions(self) -> Iterator[tuple[int, int, int, int]]:
        """Yield ``(tid, time_us, offset, length)`` of every transaction, oldest first.

        Walks the transaction headers already validated at open; the walk stops
        at the end of data as it was when the iteration started.
        """
        data_file = self._check_open()
        offset = journal.FILE_HEADER_SIZE
        end = self._end
        while offset < end:
            head = data_file.pread(journal.TXN_HEADER_SIZE, offset)
            header = journal.TxnHeader.unpack_from(head)
            length = header.length
            yield header.tid, header.time_us, offset, length
            offset += length

    # Set by tests (and only by tests) to stop a packing process at a step
    # boundary; see spec/pack.md, "Test hook".
    _pack_step_hook: PackHook | None = None
    _packer: Packer | None = None

    @property
    def packing(self) -> bool:
        """True between ``pack_begin()`` and ``pack_finish()``/``pack_abort()``."""
        return self._packer is not None

    @property
    def pack_progress(self) -> PackProgress | None:
        """What the running pack has done so far, or None when no pack runs."""
        return None if self._packer is None else self._packer.progress

    def pack_begin(self) -> None:
        """Start a two-phase pack as of the current end of data (spec PACK-010).

        Creates ``PATH.pack``; commits may continue until ``pack_finish()``.
        Raises DhruvaError when a pack is already running or a transaction is open.
        """
        self._check_writable()
        if self._packer is not None:
            raise DhruvaError(f"{self.path}: a pack is already running")
        if self._pending is not None:
            raise DhruvaError("pack() during a transaction; end or abort it first")
        if self._unclean_tail is not None:
            self._restore_tail(self._check_writable())
        self._packer = Packer(_StoragePackTarget(self))

    def pack_step(self, budget: int = DEFAULT_STEP_BUDGET) -> bool:
        """Copy up to about ``budget`` records; return True when ready to finish (PACK-011)."""
        packer = self._packer
        if packer is None:
            raise DhruvaError("pack_step() without pack_begin()")
        try:
            return packer.step(budget)
        except BaseException:
            self.pack_abort()
            raise

    def pack_finish(self) -> PackProgress:
        """Complete the pack begun by ``pack_begin()`` and return its totals (PACK-012)."""
        packer = self._packer
        if packer is None:
            raise DhruvaError("pack_finish() without pack_begin()")
        try:
            result = packer.finish()
        except BaseException:
            packer.abort()
            raise
        finally:
            self._packer = None
        if self._blob_store is not None:
            # [BLOB-013] The blobs of packed-away oids, and versions no
            # snapshot reads, go too.
            self._blob_store.collect(self._has_record, self._snapshot_floor(), self._last_tid)
        return result

    def _has_record(self, oid: bytes) -> bool:
        """Whether ``oid`` has a current record (either index)."""
        return oid in self._index or bool(self._lookup_more(oid))

    def _snapshot_floor(self) -> int | None:
        """The oldest snapshot held, for the blobs pack keeps (None: only the latest)."""
        return self._ledger.floor

    def pack_abort(self) -> None:
        """Abandon a running pack; the data file is untouched (PACK-013)."""
        packer, self._packer = self._packer, None
        if packer is not None:
            packer.abort()

    def pack(self, progress: Callable[[PackProgress], None] | None = None) -> None:
        """Rewrite the file with only the current records reachable from the root.

        The one-call form of ``pack_begin()``, ``pack_step()``...,
        ``pack_finish()``; ``progress`` is called after each step and at the
        end.  Steps and crash analysis: spec/file-format.md ("Pack") and
        spec/pack.md.
        """
        self.pack_begin()
        packer = self._packer
        assert packer is not None
        while not self.pack_step():
            if progress is not None:
                progress(packer.progress)
        result = self.pack_finish()
        if progress is not None:
            progress(result)

    def _swap_in_packed_file(
        self, new_file: DataFile, file_id: bytes, new_index: dict[bytes, int]
    ) -> int:
        """Switch to ``new_file`` (synced and renamed over ``path``); return its end of data."""
        old_file, self._file = self._file, new_file
        if old_file is not None:
            old_file.close()
        self.file_id = file_id
        self._end = self._allocated = new_file.size()
        trailer = new_file.pread(journal.TXN_TRAILER_SIZE, self._end - journal.TXN_TRAILER_SIZE)
        self._last_trailer_crc = journal.CommitTrailer.unpack_from(trailer).crc
        self._replace_index(new_index)
        return self._end


class _StoragePackTarget:
    """A JournalStorage as its packer sees it: implements :class:`dhruva.file_pack.PackTarget`.

    Lives beside the storage so that only this module touches the storage's
    state; the packer holds this object, never the storage.
    """

    def __init__(self, storage: JournalStorage) -> None:
        self._storage = storage
        self.path = storage.path
        self.layer = storage._layer
        self.format_version = storage.format_version

    def object_count(self) -> int:
        return self._storage.get_size()

    def snapshot(self) -> PackSnapshot:
        storage = self._storage
        return PackSnapshot(storage._end, storage._last_tid, storage._last_time_us)

    def snapshot_refs(self) -> Iterator[bytes]:
        # [SAPI-096] The versions held snapshots read reference objects too.
        return self._storage._ledger.kept_refs()

    def current_end(self) -> int:
        return self._storage._end

    def data_file(self) -> DataFile:
        return self._storage._check_writable()

    def in_transaction(self) -> bool:
        return self._storage._pending is not None

    def record_offsets(self, oids: list[bytes]) -> list[int]:
        return self._storage._pack_offsets(oids)

    def step_reached(self, step: str) -> None:
        hook = self._storage._pack_step_hook
        if hook is not None:
            hook(step)

    def discard_index(self) -> None:
        self._storage._before_replace()

    def mark_broken(self, reason: str) -> None:
        self._storage._broken = reason

    def swap_in_packed_file(
        self, new_file: DataFile, file_id: bytes, new_index: dict[bytes, int]
    ) -> int:
        return self._storage._swap_in_packed_file(new_file, file_id, new_index)
