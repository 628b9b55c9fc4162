"""Online backup of a file database: a consistent copy while a writer appends.

Spec: ``spec/point-in-time.md`` ("Online backup", HIST-040..HIST-046).

Theory of operation.  A data file only ever grows by whole transactions
appended at its end, each made durable before it is acknowledged; bytes
before the end of the last complete transaction never change while a writer
runs (only pack replaces the file, by rename, and a reader that holds the old
file open keeps reading the old, unchanged file).  So a reader that does not
take the lock -- the writer holds an exclusive ``flock`` -- can copy the file
safely:

1. open the source read-only, without a lock, and note its size;
2. walk the transactions up to that size (:mod:`dhruva.journal_walk`): the
   end of the last valid one is the end of the copy; bytes after it are a
   commit still being written (a torn tail) and are left out;
3. write ``DEST.partial``: a new file header (a new file id, FMT-006), then
   the source bytes from 64 to that end, copied in chunks;
4. walk the copy: it must hold the same transactions, the same last tid;
5. fsync the copy; copy the blob files of the copied transactions to
   ``DEST.blobs`` (spec blobs.md); rename the copy to ``DEST``, fsync the
   directory.

The copy is therefore the database as of one of its commits: a prefix of the
commit order, every commit acknowledged before the backup began, never part
of a commit.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dhruva import journal
from dhruva.blob_store import blob_directory, copy_blobs
from dhruva.error import DhruvaError
from dhruva.file_index import DiskIndex
from dhruva.fileio import OS_FILES, OSFile
from dhruva.journal_walk import JournalWalk

#: Bytes copied per read and write of a backup.
COPY_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class CopyResult:
    """What a backup or restore wrote."""

    path: str
    transactions: int
    last_tid: int
    size_bytes: int
    dropped_tail_bytes: int


def open_unlocked(path: str) -> OSFile:
    """Open the data file at ``path`` for reading without taking its lock (HIST-001).

    Checks the file header; raises FormatError/CorruptionError for a file that
    is not a dhruva data file, FileNotFoundError when it does not exist.
    """
    # [HIST-001] No flock: the writer's exclusive lock must not stop a backup.
    data_file = OSFile(os.fspath(path), create=False, readonly=True)
    try:
        journal.decode_file_header(data_file.pread(journal.FILE_HEADER_SIZE, 0), data_file.path)
    except BaseException:
        data_file.close()
        raise
    return data_file


def data_file_version(data_file: OSFile) -> int:
    """Return the format version of ``data_file`` from its header (FMT-021).

    Raises FormatError/CorruptionError as :func:`journal.decode_file_header`.
    """
    header = journal.decode_file_header(
        data_file.pread(journal.FILE_HEADER_SIZE, 0), data_file.path
    )
    return header.major


def index_covered_offset(data_file: OSFile) -> int:
    """Return the offset the sidecar ``PATH.index`` of ``data_file`` covers, else 0.

    Every transaction below it was committed (RCV-008), so a walk must treat
    damage there as damage even at the end of the file.  Read without a lock:
    a writer may checkpoint meanwhile, but the covered offset only ever names
    synced bytes, and one beyond the size the walk stops at proves nothing.
    """
    header = journal.decode_file_header(
        data_file.pread(journal.FILE_HEADER_SIZE, 0), data_file.path
    )
    disk = DiskIndex.open(data_file.path + ".index", header.file_id, readonly=True)
    if disk is None:
        return 0
    try:
        return int(disk.covered_offset)
    finally:
        disk.close()


@contextmanager
def naming_file(path: str, doing: str) -> Iterator[None]:
    """Give an OSError raised inside (from ``os.pwrite``, ``os.fsync``: no file name)
    the ``filename`` ``path`` and a message saying what was being ``doing``.

    The errno is kept, so a caller still decides by it; an error that names
    a file already passes unchanged ([FLT-083]).
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        detail = exc.strerror or str(exc)
        raise OSError(exc.errno, f"{detail} ({doing})", path) from exc


def copy_prefix(
    source: OSFile, end: int, dest_path: str, *, expected: tuple[int, int] | None = None
) -> CopyResult:
    """Write ``dest_path`` as a new data file holding ``source``'s transactions up to ``end``.

    ``end`` must be the end of a valid transaction of ``source`` (or 64).
    ``expected`` is ``(transaction count, last tid)`` as found by the walk
    of the source; the copy is walked and must match it.  Refuses to replace
    an existing ``dest_path`` (DhruvaError).  Order: write
    ``dest_path.partial``, verify, fsync it, rename, fsync the directory
    (HIST-043), so ``dest_path`` never names a partial copy.
    """
    dest_path = os.fspath(dest_path)
    if os.path.exists(dest_path):
        raise DhruvaError(f"{dest_path} exists; choose a new name or remove it first")
    if os.path.exists(blob_directory(dest_path)):
        raise DhruvaError(
            f"{blob_directory(dest_path)} exists; choose a new name or remove it first"
        )
    partial_path = dest_path + ".partial"
    version = data_file_version(source)
    # [FLT-083] A failed write names the copy and says the source is untouched.
    writing = f"writing the copy; it was removed and {source.path} is untouched"
    with naming_file(partial_path, writing):
        dest = OSFile(partial_path, create=True, readonly=False)
    try:
        with naming_file(partial_path, writing):
            dest.truncate(0)
            # [HIST-044] A copy is a new data file: a new file id (FMT-006), in
            # the source's format version, since its bytes are copied as they are
            # (FMT-021).
            dest.append(journal.encode_file_header(os.urandom(journal.FILE_ID_SIZE), version))
        # Not copy_span: a failed read and a failed write name different files.
        reached = journal.FILE_HEADER_SIZE
        while reached < end:
            with naming_file(source.path, "reading the source for a backup"):
                chunk = source.pread(min(COPY_CHUNK_BYTES, end - reached), reached)
            if not chunk:
                break
            with naming_file(partial_path, writing):
                dest.append(chunk)
            reached += len(chunk)
        if reached < end:
            raise DhruvaError(f"{source.path} ended at {reached}, before {end}")
        # [HIST-043] Verify the copy before it gets its name.
        walk = JournalWalk(dest.pread, dest.size(), partial_path, version=version)
        count = sum(1 for _ in walk)
        if walk.tail is not None or walk.end != end:
            raise DhruvaError(
                f"the copy {partial_path} does not verify: {walk.tail_reason or 'short'} "
                f"at offset {walk.end}"
            )
        if expected is not None and (count, walk.last_tid) != expected:
            raise DhruvaError(
                f"the copy {partial_path} holds {count} transactions up to tid "
                f"{walk.last_tid}, expected {expected[0]} up to tid {expected[1]}"
            )
        with naming_file(partial_path, writing):
            dest.sync()
        source_blobs = blob_directory(source.path)
        if os.path.isdir(source_blobs):
            # [BLOB-023] The blobs of the copied transactions, before the
            # copy gets its name.
            copy_blobs(source_blobs, blob_directory(dest_path), walk.last_tid)
    except BaseException:
        dest.close()
        # [FLT-083] Nothing is left behind: the partial copy goes.
        try:
            os.unlink(partial_path)
        except FileNotFoundError:
            pass
        # DEST.blobs did not exist before: whatever is there now is ours.
        shutil.rmtree(blob_directory(dest_path), ignore_errors=True)
        raise
    dest.close()
    try:
        OS_FILES.rename(partial_path, dest_path)
    except BaseException:
        os.unlink(partial_path)
        shutil.rmtree(blob_directory(dest_path), ignore_errors=True)
        raise
    OS_FILES.sync_directory(dest_path)
    return CopyResult(dest_path, count, walk.last_tid, end, 0)


def backup(source_path: str, dest_path: str) -> CopyResult:
    """Copy the database at ``source_path`` to the new file ``dest_path``, online.

    Safe while another process (a server) has the database open and commits
    to it: the source is read without its lock, and the copy holds every
    transaction complete when the backup looked at the file's size, and
    nothing after.  Returns what was copied; ``dropped_tail_bytes`` counts
    the bytes of a commit in progress that were left out.  The sidecar index
    is not copied; the copy's is built at its first open.  Raises
    CorruptionError when the source is damaged (a valid transaction follows
    an invalid one), DhruvaError when ``dest_path`` exists.
    """
    source = open_unlocked(source_path)
    try:
        # [HIST-041] Copy up to the size seen now; a writer may append more.
        size = source.size()
        # [RCV-008] A damaged commit the index proves acknowledged is not
        # left out as a commit in progress: the backup fails instead.
        walk = JournalWalk(
            source.pread,
            size,
            source.path,
            version=data_file_version(source),
            committed_end=index_covered_offset(source),
        )
        count = sum(1 for _ in walk)
        # [HIST-042] A commit being written is a torn tail: left out.
        result = copy_prefix(source, walk.end, dest_path, expected=(count, walk.last_tid))
    finally:
        source.close()
    # [RCV-060] Free space after the last transaction is not a commit left out.
    dropped = size - walk.end if walk.tail is not None else 0
    return CopyResult(result.path, result.transactions, result.last_tid, result.size_bytes, dropped)
