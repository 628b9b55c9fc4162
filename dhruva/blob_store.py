"""A blob directory: blob files keyed by (oid, tid), staged, committed, recovered.

Spec: ``spec/blobs.md`` (BLOB-010..022).

Theory of operation.  The directory holds ``tmp/`` for the blobs staged by
the open transaction and one directory per oid with one file per
transaction that stored a blob for that oid, ``<tid>.blob`` (16 hex digits
each, so names sort in commit order).  A storage drives it:

* ``stage(oid, source)`` copies ``source`` in chunks into ``tmp/`` and fsyncs
  it (a later stage of the same oid replaces it);
* at ``end()``, once the tid is known and *before* the transaction's own
  record is written, ``commit(tid)`` renames each staged file to
  ``<oid>/<tid>.blob`` and fsyncs the directories;  the transaction is
  committed when the storage's own write is durable, so a crash in between
  leaves blob files whose tid is above the last committed tid;
* ``recover(last_tid)``, at open, deletes those and everything in ``tmp/``;
* ``open(oid, tid)`` opens the file with the largest tid at or below ``tid``:
  a snapshot reads the blob of its time with the same lookup as the latest;
* ``collect(...)``, at pack, deletes the blobs of removed oids and the
  versions no snapshot can reach.

Nothing here interprets a blob's bytes.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable, Container, Iterable, Iterator
from typing import BinaryIO

from dhruva.error import DhruvaError, DhruvaKeyError

#: Bytes copied per read and write when a blob is staged or streamed.
CHUNK_BYTES = 1 << 20
TMP = "tmp"
SUFFIX = ".blob"


def no_blob(oid: bytes) -> DhruvaKeyError:
    """The error for an oid without a blob as of the tid asked for (BLOB-011)."""
    return DhruvaKeyError(oid, f"no blob is stored for oid {int.from_bytes(oid, 'big')}")


def blobs_without_records(staged: Iterable[bytes], stored: Container[bytes]) -> DhruvaError | None:
    """The error for blobs staged for oids the transaction stores no record of (BLOB-010).

    ``stored`` is the transaction's pending records (looked up, not copied).
    None when every staged oid has its record; the caller drops what it
    staged, then raises the error.
    """
    orphans = sorted(int.from_bytes(oid, "big") for oid in staged if oid not in stored)
    if not orphans:
        return None
    return DhruvaError(
        f"a transaction stored blobs of objects whose records it did not store (oids {orphans})"
    )


def oid_name(oid: bytes) -> str:
    return oid.hex()


def tid_name(tid: int) -> str:
    return f"{tid:016x}{SUFFIX}"


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_stream(source: BinaryIO, target: BinaryIO) -> int:
    """Copy ``source`` from its position to its end into ``target``, in chunks."""
    copied = 0
    while True:
        chunk = source.read(CHUNK_BYTES)
        if not chunk:
            return copied
        target.write(chunk)
        copied += len(chunk)


class BlobStore:
    """The blob directory ``directory`` of one storage (see the module docstring)."""

    def __init__(self, directory: str, readonly: bool = False) -> None:
        self.directory = directory
        self.readonly = readonly
        self._staged: dict[bytes, str] = {}
        if not readonly:
            os.makedirs(os.path.join(directory, TMP), exist_ok=True)

    # -- writing -----------------------------------------------------------------------

    def stage(self, oid: bytes, source: BinaryIO) -> None:
        """Copy ``source`` into ``tmp/`` and fsync it: ``oid``'s blob if the transaction commits."""
        if self.readonly:
            raise DhruvaError(f"the blob directory {self.directory} is read-only")
        path = os.path.join(self.directory, TMP, f"{uuid.uuid4().hex}.part")
        try:
            with open(path, "wb") as target:
                copy_stream(source, target)
                target.flush()
                os.fsync(target.fileno())
        except BaseException:
            _remove(path)
            raise
        previous = self._staged.get(oid)
        if previous is not None:
            _remove(previous)
        self._staged[oid] = path

    def staged_oids(self) -> set[bytes]:
        return set(self._staged)

    def commit(self, tid: int) -> None:
        """Move every staged blob to ``<oid>/<tid>.blob``; durable when this returns."""
        staged, self._staged = self._staged, {}
        touched: set[str] = set()
        try:
            for oid, path in staged.items():
                folder = os.path.join(self.directory, oid_name(oid))
                if not os.path.isdir(folder):
                    os.mkdir(folder)
                    touched.add(self.directory)
                os.rename(path, os.path.join(folder, tid_name(tid)))
                touched.add(folder)
            touched.add(os.path.join(self.directory, TMP))
            for folder in sorted(touched):
                _fsync_directory(folder)
        except BaseException:
            # The transaction fails: no file of it may stay under its tid.
            for oid, path in staged.items():
                _remove(path)
                _remove(os.path.join(self.directory, oid_name(oid), tid_name(tid)))
            raise

    def discard(self) -> None:
        """Drop the staged blobs (the transaction was aborted or failed)."""
        staged, self._staged = self._staged, {}
        for path in staged.values():
            _remove(path)

    def undo(self, tid: int, oids: Iterable[bytes]) -> None:
        """Remove the blob files ``commit(tid)`` made (its transaction failed afterwards)."""
        for oid in oids:
            _remove(os.path.join(self.directory, oid_name(oid), tid_name(tid)))

    # -- reading -----------------------------------------------------------------------

    def versions(self, oid: bytes) -> list[int]:
        """Return the tids of ``oid``'s blob files, oldest first."""
        try:
            names = os.listdir(os.path.join(self.directory, oid_name(oid)))
        except FileNotFoundError:
            return []
        return sorted(int(name[: -len(SUFFIX)], 16) for name in names if name.endswith(SUFFIX))

    def open(self, oid: bytes, tid: int) -> BinaryIO:
        """Open ``oid``'s blob as of ``tid``; DhruvaKeyError if there is none."""
        chosen = [version for version in self.versions(oid) if version <= tid]
        if not chosen:
            raise no_blob(oid)
        return open(os.path.join(self.directory, oid_name(oid), tid_name(chosen[-1])), "rb")

    def oids(self) -> Iterator[bytes]:
        """Yield every oid that has a blob directory."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            if name != TMP and len(name) == 16:
                yield bytes.fromhex(name)

    # -- recovery and pack ---------------------------------------------------------------

    def recover(self, last_tid: int) -> None:
        """Delete what a crash left: staged files and blobs of uncommitted tids (BLOB-021)."""
        if self.readonly:
            return
        tmp = os.path.join(self.directory, TMP)
        for name in os.listdir(tmp):
            _remove(os.path.join(tmp, name))
        for oid in list(self.oids()):
            for version in self.versions(oid):
                if version > last_tid:
                    _remove(os.path.join(self.directory, oid_name(oid), tid_name(version)))
            self._remove_if_empty(oid)

    def collect(self, live: Callable[[bytes], bool], floor: int | None, last_tid: int) -> int:
        """Delete blobs no reader can reach; return how many files went (BLOB-013).

        ``live(oid)`` says whether the pack keeps ``oid``; ``floor`` is the
        oldest snapshot held (None: only the read point ``last_tid``).  Of a
        live oid's versions, the newest at or below the floor and every later
        one stay.
        """
        oldest = last_tid if floor is None else min(floor, last_tid)
        removed = 0
        for oid in list(self.oids()):
            versions = self.versions(oid)
            if not live(oid):
                doomed = versions
            else:
                below = [version for version in versions if version <= oldest]
                doomed = below[:-1]
            for version in doomed:
                _remove(os.path.join(self.directory, oid_name(oid), tid_name(version)))
                removed += 1
            self._remove_if_empty(oid)
        return removed

    def _remove_if_empty(self, oid: bytes) -> None:
        folder = os.path.join(self.directory, oid_name(oid))
        try:
            os.rmdir(folder)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise

    def remove_all(self) -> None:
        """Delete the whole directory (a storage that keeps nothing after close)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def blob_directory(data_path: str) -> str:
    """The blob directory of the data file ``data_path`` (BLOB-020): ``PATH.blobs``."""
    return os.fspath(data_path) + ".blobs"


def copy_blobs(source_dir: str, dest_dir: str, last_tid: int) -> int:
    """Copy every blob file of a tid at or below ``last_tid`` into the new ``dest_dir``.

    For backup and restore (BLOB-023): the copy of a data file up to
    ``last_tid`` gets the blobs of those transactions.  Each file is copied
    in chunks and fsynced, then the directories; returns how many files were
    copied.  Raises DhruvaError when ``dest_dir`` exists, and when a blob
    file vanishes while it is copied (a pack of the source removed it: run
    the backup again).
    """
    if os.path.exists(dest_dir):
        raise DhruvaError(f"{dest_dir} exists; choose a new name or remove it first")
    source = BlobStore(source_dir, readonly=True)
    os.makedirs(os.path.join(dest_dir, TMP))
    copied = 0
    for oid in sorted(source.oids()):
        versions = [tid for tid in source.versions(oid) if tid <= last_tid]
        if not versions:
            continue
        folder = os.path.join(dest_dir, oid_name(oid))
        os.mkdir(folder)
        for tid in versions:
            name = tid_name(tid)
            try:
                with (
                    open(os.path.join(source_dir, oid_name(oid), name), "rb") as reader,
                    open(os.path.join(folder, name), "wb") as writer,
                ):
                    copy_stream(reader, writer)
                    writer.flush()
                    os.fsync(writer.fileno())
            except FileNotFoundError as error:
                if error.filename and error.filename.startswith(dest_dir):
                    raise
                raise DhruvaError(
                    f"the blob {oid_name(oid)}/{name} of {source_dir} disappeared during the "
                    "copy (a pack ran): run it again"
                ) from None
            copied += 1
        _fsync_directory(folder)
    _fsync_directory(dest_dir)
    return copied
