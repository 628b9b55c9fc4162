"""Two-phase, incremental pack of a journal file (FileStorage and FileStorage2).

Spec: ``spec/pack.md`` (PACK) and ``spec/file-format.md`` ("Pack", RCV-02x).

Theory of operation.  A pack writes a new data file ``PATH.pack`` and renames
it over ``PATH``.  The old file is never modified by the pack, so until the
rename the old database is intact, and after it the new one is complete and
synced.  The pack runs in three phases so that a single-threaded server can
keep committing to the old file while it runs:

1. ``begin``: remember the *snapshot* -- the end of valid data ``E0``, the last
   tid ``T0`` and its time -- create ``PATH.pack``, lock it, write the file
   header and leave 40 bytes for the header of the packed transaction *P*.
2. ``step`` (any number of times, with commits in between): walk the
   reference graph from the root.  An oid whose current record lies before
   ``E0`` has its record bytes appended to P's body; an oid whose current
   record lies at or after ``E0`` was rewritten during the pack and is left
   to phase 3.  Every record committed after ``E0`` is scanned as it appears,
   and the oids it references become roots of the walk, so an object that a
   commit during the pack makes reachable again is kept.
3. ``finish`` (no commit may interleave): scan the last commits, complete the
   walk, write P's trailer and header, copy the bytes ``[E0, end)`` (the
   commits made during the pack) verbatim after P, fsync once, fsync the
   directory, drop the sidecar index, rename, fsync the directory.

Why the walk over a moving database is right: take any object Y reachable
from the root at ``finish``, and a path root -> ... -> Y.  Let R be the last
record on the path written at or after ``E0`` (if any).  Every record after R
on the path lies before ``E0`` and is still current, so it was current and
unchanged during the whole pack; the walk reaches the first of them either as
a reference of R (scanned in phase 2 or 3) or from the root, and then follows
the same unchanged records to Y.  Without such an R the whole path is
unchanged since ``E0`` and the walk from the root finds it.  So P plus the
copied commits hold every object reachable at the end.  A record copied into
P and then rewritten during the pack is merely an old revision in the new
file; the copied commit after P supersedes it (FMT-014).

Memory: the sets and maps of oids (``seen``, the new offsets, the offsets of
records written during the pack) and a bounded copy buffer; record bytes are
streamed, never held for the whole file.  The single fsync of the new file
happens in ``finish``.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from dhruva import journal
from dhruva.error import DhruvaError
from dhruva.fileio import DataFile, FileLayer
from dhruva.utils import ROOT_OID

#: Bytes of copied records buffered before one write to ``PATH.pack``.
WRITE_BUFFER_BYTES = 1 << 20
#: At most this many bytes are read from the old file in one ``pread``.
READ_SPAN_BYTES = 1 << 20
#: Records closer than this are read with one ``pread`` (the gap is read too).
READ_GAP_BYTES = 64 << 10
#: A record usually fits in this many bytes; larger ones take a second read.
RECORD_GUESS_BYTES = 4096
#: Oids walked per batch (sorted by offset so the reads are mostly sequential).
WALK_BATCH = 4096
#: Records processed by one ``step()`` when the caller gives no budget.
DEFAULT_STEP_BUDGET = 50_000

PackHook = Callable[[str], None]
"""Called with a step name at each step boundary (tests stop the process there)."""


@dataclass
class PackProgress:
    """What a pack has done so far; passed to progress callbacks and returned."""

    phase: str = "begin"
    records_copied: int = 0
    bytes_copied: int = 0
    objects_before: int = 0
    commits_during_pack: int = 0
    old_size_bytes: int = 0
    new_size_bytes: int = 0
    seconds: float = 0.0


class PackSnapshot(NamedTuple):
    """The state a pack starts from: the end of valid data ``E0`` and its last transaction."""

    end: int
    last_tid: int
    last_time_us: int


class PackTarget(Protocol):
    """What the packer needs of the storage it packs; nothing else is reached.

    :class:`dhruva.journal_storage.JournalStorage` hands its packer an object
    implementing this.  ``path`` is the data file's path and ``layer`` the
    file layer the storage uses (``PATH.pack`` is created through it).
    """

    path: str
    layer: FileLayer
    #: The journal format version of the data file; the packed file keeps it
    #: because records are copied byte for byte (FMT-021).
    format_version: int

    def object_count(self) -> int:
        """Return the number of oids stored (an upper bound of the records to copy)."""
        ...

    def snapshot(self) -> PackSnapshot:
        """Return the end of valid data and the last transaction's tid and time."""
        ...

    def snapshot_refs(self) -> Iterable[bytes]:
        """Return the packed reference lists of the versions held snapshots read.

        The walk starts from their oids as well as from the root (SAPI-096).
        """
        ...

    def current_end(self) -> int:
        """Return the end of valid data now (it moves as commits are made)."""
        ...

    def data_file(self) -> DataFile:
        """Return the open data file for reading; raises DhruvaError when the
        storage is closed, broken or read-only."""
        ...

    def in_transaction(self) -> bool:
        """Return whether a transaction is open (``pack_finish`` refuses to run then)."""
        ...

    def record_offsets(self, oids: list[bytes]) -> list[int]:
        """Return the offset of each oid's current record, 0 for a missing oid."""
        ...

    def step_reached(self, step: str) -> None:
        """Call the test hook (spec/pack.md, "Test hook") with ``step``, if one is set."""
        ...

    def discard_index(self) -> None:
        """Stop using, durably, any index of the old file; called just before the rename."""
        ...

    def mark_broken(self, reason: str) -> None:
        """Make the storage refuse work until reopened (a failure during the switch)."""
        ...

    def swap_in_packed_file(
        self, new_file: DataFile, file_id: bytes, new_index: dict[bytes, int]
    ) -> int:
        """Switch the storage to ``new_file``, renamed over ``path`` and synced;
        install ``new_index`` (oid -> offset in the new file); close the old file.
        Return the new end of valid data."""
        ...


# --- CRC-32 combination (zlib's crc32_combine, which Python does not expose) ------

_CRC_POLY = 0xEDB88320


def _gf2_times(matrix: list[int], vector: int) -> int:
    total = 0
    index = 0
    while vector:
        if vector & 1:
            total ^= matrix[index]
        vector >>= 1
        index += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """Return crc32(A + B) given crc32(A), crc32(B) and len(B).

    P's header can only be written once its record count and body length are
    known, but its checksum covers the header first; combining lets the body's
    checksum be computed while streaming and the header's prepended at the end.
    """
    if length2 <= 0:
        return crc1
    odd = [_CRC_POLY] + [1 << (n - 1) for n in range(1, 32)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    while True:
        even = _gf2_square(odd)
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = _gf2_square(even)
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


# --- the packer ---------------------------------------------------------------------


class Packer:
    """One pack of a JournalStorage, driven by ``step()`` and ``finish()``.

    Created by ``JournalStorage.pack_begin()`` with the storage's
    :class:`PackTarget`; see the module docstring.
    """

    def __init__(self, target: PackTarget) -> None:
        self.target = target
        self.started = time.monotonic()
        snapshot = target.snapshot()
        self.progress = PackProgress(
            objects_before=target.object_count(), old_size_bytes=snapshot.end
        )
        self.snapshot_end = snapshot.end
        self.snapshot_tid = snapshot.last_tid
        self.snapshot_time_us = snapshot.last_time_us
        self.pack_path = target.path + ".pack"
        self._seen: set[bytes] = {ROOT_OID}
        self._todo: list[bytes] = [ROOT_OID]
        # [SAPI-096] [PACK-050] What the kept versions of held snapshots
        # reference is walked like what the root reaches.
        for refs in target.snapshot_refs():
            for i in range(0, len(refs), 8):
                ref = refs[i : i + 8]
                if ref not in self._seen:
                    self._seen.add(ref)
                    self._todo.append(ref)
        self._new_offsets: dict[bytes, int] = {}
        self._tail_offsets: dict[bytes, int] = {}
        # Oid -> offset of its record as of the snapshot, for oids rewritten since.
        self._replaced: dict[bytes, int] = {}
        self._scanned = self.snapshot_end
        self._buffer: list[bytes] = []
        self._buffered_bytes = 0
        self._body_crc = 0
        self._body_length = 0
        self._record_count = 0
        self._new_file: DataFile | None = None
        # Where the next record of P goes in the new file.
        self._position = journal.FILE_HEADER_SIZE + journal.TXN_HEADER_SIZE
        self.file_id = os.urandom(journal.FILE_ID_SIZE)
        self._version = target.format_version
        if self.snapshot_tid == 0:
            return  # nothing was ever committed: finish() does nothing
        layer = target.layer
        # [RCV-023] A stale PATH.pack of an interrupted pack is never read; replace it.
        if layer.exists(self.pack_path):
            layer.remove(self.pack_path)
        with self._writing_pack():
            new_file = layer.open(self.pack_path, create=True, readonly=False)
        try:
            # [RCV-022] Locked before it bears the database's name.
            new_file.lock(exclusive=True)
            with self._writing_pack():
                new_file.append(journal.encode_file_header(self.file_id, self._version))
                # P's header is written by finish(), once its counts are known.
                new_file.append(bytes(journal.TXN_HEADER_SIZE))
        except BaseException:
            new_file.close()
            # [FLT-081] A failed pack leaves no partial output behind.
            layer.remove(self.pack_path)
            raise
        self._new_file = new_file
        self._hook("created")

    # --- errors -----------------------------------------------------------------------

    @contextmanager
    def _writing_pack(self) -> Iterator[None]:
        """Name ``PATH.pack`` in an OSError of a write to it (a full disk, EIO).

        ``os.pwrite`` and ``os.fsync`` raise OSErrors that name no file; the
        user must learn which file failed and that the database is untouched.
        The errno is kept, so callers still decide by it ([FLT-080]).  The
        caller (``JournalStorage.pack_step``/``pack_finish``) then aborts the
        pack, which removes ``PATH.pack``.
        """
        try:
            yield
        except OSError as exc:
            if exc.filename is not None and exc.filename != self.pack_path:
                raise  # already names another file (the directory of a sync)
            detail = exc.strerror or str(exc)
            raise OSError(
                exc.errno,
                f"{detail} (writing the pack output; the pack was abandoned, "
                f"{self.target.path} is untouched)",
                self.pack_path,
            ) from exc

    @contextmanager
    def _reading_database(self) -> Iterator[None]:
        """Name the data file in an OSError of a read from it (EIO), keeping the errno."""
        try:
            yield
        except OSError as exc:
            if exc.filename is not None:
                raise
            detail = exc.strerror or str(exc)
            raise OSError(
                exc.errno,
                f"{detail} (reading for a pack; the pack was abandoned)",
                self.target.path,
            ) from exc

    # --- hooks and progress -------------------------------------------------------------

    def _hook(self, step: str) -> None:
        # [PACK-040] Tests stop the process here; see spec/pack.md.
        self.progress.phase = step
        self.target.step_reached(step)

    @property
    def done(self) -> bool:
        """True when the walk is complete for the commits seen so far."""
        return not self._todo and self._scanned >= self.target.current_end()

    def note_replaced(self, oids: list[bytes]) -> None:
        """Remember the snapshot records that a commit about to be indexed supersedes.

        Called by ``end()`` after the commit is durable and before the index
        changes, so the pack copies every reachable object as of the snapshot
        and the packed file can show the database as of every tid from the
        snapshot's on (PACK-021, HIST-030).
        """
        replaced = self._replaced
        snapshot_end = self.snapshot_end
        for oid, offset in zip(oids, self.target.record_offsets(oids), strict=True):
            if offset and offset < snapshot_end and oid not in replaced:
                replaced[oid] = offset

    # --- phase 2 -----------------------------------------------------------------------

    def step(self, budget: int = DEFAULT_STEP_BUDGET) -> bool:
        """Copy up to about ``budget`` records; return True when nothing is left to walk.

        Commits may be made between calls.  Raises DhruvaError when the
        storage was closed or broke.
        """
        if self._new_file is None:
            return True
        data_file = self.target.data_file()
        with self._reading_database():
            self._scan_new_commits(data_file)
        walked = 0
        while self._todo and walked < budget:
            take = min(WALK_BATCH, budget - walked)
            batch = self._todo[-take:]
            del self._todo[-take:]
            walked += self._walk_batch(data_file, batch)
        self.progress.seconds = time.monotonic() - self.started
        return self.done

    def _scan_new_commits(self, data_file: DataFile) -> None:
        """Make the references of records committed since the last scan roots of the walk."""
        # [PACK-020] This scan is what keeps objects that commits of the pack reach.
        end = self.target.current_end()
        offset = self._scanned
        seen = self._seen
        todo = self._todo
        while offset < end:
            head = data_file.pread(journal.TXN_HEADER_SIZE, offset)
            length = journal.TxnHeader.unpack_from(head).length
            txn = journal.decode_transaction(
                data_file.pread(length, offset),
                offset,
                self.target.path,
                base=offset,
                version=self._version,
            )
            for record in txn.records:
                self._tail_offsets[record.oid] = record.offset
                refs = record.refs
                for i in range(0, len(refs), 8):
                    ref = refs[i : i + 8]
                    if ref not in seen:
                        seen.add(ref)
                        todo.append(ref)
            self.progress.commits_during_pack += 1
            offset += length
        self._scanned = offset

    def _walk_batch(self, data_file: DataFile, batch: list[bytes]) -> int:
        """Copy the current records of ``batch`` (older than the snapshot); follow their refs."""
        snapshot_end = self.snapshot_end
        replaced = self._replaced
        located = []
        for offset, oid in zip(self.target.record_offsets(batch), batch, strict=True):
            offset = replaced.get(oid, offset)
            # [PACK-001] Missing: a dangling reference keeps nothing alive.  At
            # or after the snapshot (and not replaced): an object created
            # during the pack, copied with the commits of the pack.
            if offset and offset < snapshot_end:
                located.append((offset, oid))
        located.sort()
        count = len(located)
        start = 0
        while start < count:
            # One read covers records that lie close together.
            first = located[start][0]
            stop = start + 1
            while (
                stop < count
                and located[stop][0] - located[stop - 1][0] < READ_GAP_BYTES
                and located[stop][0] - first < READ_SPAN_BYTES
            ):
                stop += 1
            last = located[stop - 1][0]
            with self._reading_database():
                span = data_file.pread(last - first + RECORD_GUESS_BYTES, first)
                self._copy_records(data_file, span, first, located[start:stop])
            start = stop
            if self._buffered_bytes >= WRITE_BUFFER_BYTES:
                self._flush()
        return len(batch)

    def _copy_records(
        self, data_file: DataFile, span: bytes, base: int, located: list[tuple[int, bytes]]
    ) -> None:
        """Copy the records at ``located`` (offsets, oids) out of ``span`` (file offset ``base``).

        This is the hot loop of a pack: contiguous records are appended as one
        slice, and references are checked against ``seen`` without a call.
        """
        seen = self._seen
        todo = self._todo
        new_offsets = self._new_offsets
        buffer = self._buffer
        # The hot loop reads the fields of journal.RecordHeader straight from
        # the struct they share in both versions (oid, data length, ref count);
        # the version 2 checksum is copied with the record and checked at load.
        unpack = journal.RECORD_HEADER_V1.unpack_from
        header_size = journal.record_header_size(self._version)
        span_length = len(span)
        position = self._position
        copied = 0
        run_start = run_end = -1
        for offset, oid in located:
            pos = offset - base
            if pos + header_size > span_length:
                record = data_file.pread(RECORD_GUESS_BYTES, offset)
                source, pos = record, 0
            else:
                source = span
            found, data_length, ref_count = unpack(source, pos)
            size = header_size + data_length + 8 * ref_count
            end = pos + size
            if end > len(source):
                source, pos, end = data_file.pread(size, offset), 0, size
            if found != oid:
                raise DhruvaError(
                    f"{self.target.path}: the index says oid {oid.hex()} is at offset "
                    f"{offset} but the record there is of oid {bytes(found).hex()}; "
                    "delete the index and retry"
                )
            for i in range(end - 8 * ref_count, end, 8):
                ref = source[i : i + 8]
                if ref not in seen:
                    seen.add(ref)
                    todo.append(ref)
            new_offsets[oid] = position
            position += size
            copied += size
            # [FMT-015] Copied byte for byte; the state is never interpreted.
            if source is span and pos == run_end:
                run_end = end
                continue
            if run_end > run_start:
                buffer.append(span[run_start:run_end])
            if source is span:
                run_start, run_end = pos, end
            else:
                buffer.append(source[pos:end])
                run_start = run_end = -1
        if run_end > run_start:
            buffer.append(span[run_start:run_end])
        self._position = position
        self._body_length += copied
        self._buffered_bytes += copied
        self._record_count += len(located)

    def _flush(self) -> None:
        if not self._buffer:
            return
        assert self._new_file is not None
        chunk = b"".join(self._buffer)
        self._buffer = []
        self._buffered_bytes = 0
        self._body_crc = zlib.crc32(chunk, self._body_crc)
        # [RCV-025] Appended without a sync; the one sync comes in finish().
        with self._writing_pack():
            self._new_file.append(chunk)
        self.progress.records_copied = self._record_count
        self.progress.bytes_copied = self._body_length
        self._hook("copied")

    # --- phase 3 -----------------------------------------------------------------------

    def finish(self) -> PackProgress:
        """Complete the pack and switch the storage to the new file; return the totals.

        No commit may run during this call.  On an error before the rename the
        old file stays the database and ``PATH.pack`` is removed; after it the
        storage refuses further work until reopened.
        """
        target = self.target
        if self._new_file is None:
            return self.progress
        target.data_file()  # raises when the storage is closed or broken
        if target.in_transaction():
            raise DhruvaError("pack_finish() during a transaction; end or abort it first")
        while not self.step(budget=1 << 62):
            pass
        self._flush()
        self._hook("walked")
        new_file = self._new_file
        self._write_packed_transaction(new_file)
        tail_start = self._position + journal.TXN_TRAILER_SIZE
        self._copy_commits_of_the_pack(target.data_file(), new_file)
        # [RCV-021] One fsync of the whole new file, then of its directory.
        with self._writing_pack():
            new_file.sync()
        layer = target.layer
        layer.sync_directory(self.pack_path)
        self._hook("synced")
        try:
            target.discard_index()
            self._hook("index-discarded")
            layer.rename(self.pack_path, target.path)  # [RCV-022]
            self._hook("renamed")
            layer.sync_directory(target.path)
            self._hook("directory-synced")
        except BaseException as exc:
            # The sidecar is gone, the name may point at either file: only a
            # reopen (recovery from the bytes on disk) can continue.
            target.mark_broken(f"pack: {type(exc).__name__}: {exc}")
            raise
        self._new_file = None
        delta = tail_start - self.snapshot_end
        new_index = self._new_offsets
        for oid, offset in self._tail_offsets.items():
            new_index[oid] = offset + delta
        new_end = target.swap_in_packed_file(new_file, self.file_id, new_index)
        self._hook("index-written")
        self.progress.new_size_bytes = new_end
        self.progress.records_copied = self._record_count
        self.progress.bytes_copied = self._body_length
        self.progress.seconds = time.monotonic() - self.started
        self.progress.phase = "done"
        return self.progress

    def _write_packed_transaction(self, new_file: DataFile) -> None:
        """Append P's trailer and write its header into the slot left by begin."""
        body_length = self._body_length
        head = journal.encode_txn_header(
            self._record_count, body_length, self.snapshot_tid, self.snapshot_time_us
        )
        crc = crc32_combine(zlib.crc32(head), self._body_crc, body_length)
        # [RCV-020] One transaction with the snapshot's tid and time.
        with self._writing_pack():
            new_file.append(journal.encode_trailer(crc, body_length))
            new_file.pwrite(head, journal.FILE_HEADER_SIZE)
        self._hook("packed-transaction")

    def _copy_commits_of_the_pack(self, data_file: DataFile, new_file: DataFile) -> None:
        """Copy the transactions committed since the snapshot, byte for byte."""
        end = self.target.current_end()
        # Not copy_span: a failed read and a failed write name different files.
        reached = self.snapshot_end
        while reached < end:
            with self._reading_database():
                chunk = data_file.pread(min(READ_SPAN_BYTES, end - reached), reached)
            if not chunk:
                break
            with self._writing_pack():
                new_file.append(chunk)
            reached += len(chunk)
        if reached < end:
            raise DhruvaError(f"{self.target.path} ended at {reached}, before {end}")
        self._hook("commits-copied")

    def abort(self) -> None:
        """Give up: close and remove ``PATH.pack``; the old file stays the database."""
        new_file, self._new_file = self._new_file, None
        if new_file is None:
            return
        new_file.close()
        try:
            self.target.layer.remove(self.pack_path)
        except FileNotFoundError:
            pass
