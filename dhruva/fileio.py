"""The thin file layer under FileStorage and FileStorage2.

Spec: ``spec/fault-model.md`` (what is assumed of the disk) and
``spec/file-format.md`` (RCV: setting torn tails aside).

The storages touch the file system only through a :class:`FileLayer`, so tests
can substitute one that injects faults.  A fault-injecting layer is expected to
hold every ``pwrite``/``append``/``truncate``/``allocate`` of a file in memory until that
file's ``sync()``, and at a simulated crash keep, drop or tear the unsynced
writes; ``rename`` and ``remove`` take effect in the directory at once but are
durable only after ``sync_directory``.  That is exactly the disk the fault model
assumes, so a layer obeying it can exercise every crash the storages must
survive.

Contract of the methods (all raise OSError for I/O failures):

* ``FileLayer.open(path, create, readonly)`` opens a file for reading and, unless
  ``readonly``, writing; ``create`` creates it when missing.
* ``DataFile.append(data)`` writes at the current end (its own notion of the
  size: the size at open plus what it appended, minus truncations) and returns
  the offset written at.  ``pwrite`` writes at an offset.  Neither is durable
  before ``sync()``.
* ``DataFile.allocate(size)`` makes the file at least ``size`` bytes long with
  its blocks reserved on the disk (``posix_fallocate``), so that later writes
  below ``size`` cannot fail for want of space; on a full disk it raises
  OSError (ENOSPC) itself.  Bytes it adds read as zeros.  Not durable before
  ``sync()``, like a write.
* ``DataFile.read_map()`` returns a read-only memory map of the whole file as
  it is now, or None when the layer cannot map (a fault-injecting layer); the
  caller then reads with ``pread``.  The map sees later ``pwrite`` calls (one
  page cache), is never written through (a write through a map of a full
  disk is a SIGBUS, not an error), and is closed by the caller before the
  file shrinks or closes.
* ``DataFile.lock(exclusive)`` takes a non-blocking advisory lock on the whole
  file, shared or exclusive, and raises StorageLockedError when another process
  holds a conflicting one, or FileReplacedError (a StorageLockedError) when
  the path names another file once the lock is held.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
from typing import Protocol

from dhruva.error import StorageLockedError

log = logging.getLogger("dhruva.fileio")


class FileReplacedError(StorageLockedError):
    """The path was renamed to another file (a pack) between our open and our lock.

    Raised by ``DataFile.lock``; the opener closes the file and retries, so a
    caller sees it only when the path keeps being replaced.
    """


class DataFile(Protocol):
    """An open file (see the module docstring for the contract)."""

    path: str

    def size(self) -> int: ...
    def pread(self, length: int, offset: int) -> bytes: ...
    def pwrite(self, data: bytes, offset: int) -> None: ...
    def append(self, data: bytes) -> int: ...
    def sync(self) -> None: ...
    def truncate(self, size: int) -> None: ...
    def allocate(self, size: int) -> None: ...
    def read_map(self) -> mmap.mmap | None: ...
    def lock(self, exclusive: bool) -> None: ...
    def close(self) -> None: ...


class FileLayer(Protocol):
    """Opens files and changes directories (see the module docstring)."""

    def open(self, path: str, create: bool, readonly: bool) -> DataFile: ...
    def exists(self, path: str) -> bool: ...
    def rename(self, source: str, target: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def sync_directory(self, path: str) -> None: ...


_fdatasync = getattr(os, "fdatasync", os.fsync)
_posix_fallocate = getattr(os, "posix_fallocate", None)


class OSFile:
    """A DataFile on a real file descriptor: ``fd`` (-1 once closed)."""

    fd: int

    def __init__(self, path: str, create: bool, readonly: bool) -> None:
        flags = os.O_RDONLY if readonly else os.O_RDWR
        if create and not readonly:
            flags |= os.O_CREAT
        flags |= getattr(os, "O_CLOEXEC", 0)
        self.path = path
        self.fd = os.open(path, flags, 0o644)
        status = os.fstat(self.fd)
        if stat.S_ISDIR(status.st_mode):
            # A read-only open of a directory succeeds; its first read would
            # fail with an error that does not name the path.
            os.close(self.fd)
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        self._size = status.st_size

    def size(self) -> int:
        return self._size

    def pread(self, length: int, offset: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) == length or len(data) == 0:
            return data
        # A short read that is not at end of file; ask again for the rest.
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(self.fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def pwrite(self, data: bytes, offset: int) -> None:
        end = offset + len(data)
        written = os.pwrite(self.fd, data, offset)
        if written != len(data):
            # A short write (a signal, a full disk on the way): write the rest.
            view = memoryview(data)[written:]
            offset += written
            while view:
                written = os.pwrite(self.fd, view, offset)
                view = view[written:]
                offset += written
        if end > self._size:
            self._size = end

    def append(self, data: bytes) -> int:
        offset = self._size
        self.pwrite(data, offset)
        return offset

    def sync(self) -> None:
        # [FLT-004] fdatasync suffices: appends change the size, which
        # fdatasync flushes along with the data.
        _fdatasync(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self._size = size

    def allocate(self, size: int) -> None:
        if size <= self._size:
            return
        if _posix_fallocate is not None:
            try:
                _posix_fallocate(self.fd, self._size, size - self._size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            else:
                self._size = size
                return
        # No fallocate here (macOS, some file systems): real zeros reserve the blocks too.
        while self._size < size:
            self.pwrite(bytes(min(COPY_CHUNK_BYTES, size - self._size)), self._size)

    def read_map(self) -> mmap.mmap | None:
        if self._size == 0:
            return None  # an empty file cannot be mapped
        return mmap.mmap(self.fd, self._size, access=mmap.ACCESS_READ)

    def lock(self, exclusive: bool) -> None:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageLockedError(
                f"{self.path} is locked by another process; close the other storage "
                "(or connect through its server) and retry"
            ) from None
        # pack() renames a new file over the path; a lock taken on the old,
        # replaced inode protects nothing, so check we locked what the path names.
        try:
            same = os.path.samestat(os.fstat(self.fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            raise FileReplacedError(f"{self.path} was replaced while it was being opened; retry")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the flock
            self.fd = -1


class OSFileLayer:
    """The FileLayer of the real file system."""

    def open(self, path: str, create: bool, readonly: bool) -> DataFile:
        return OSFile(path, create, readonly)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def rename(self, source: str, target: str) -> None:
        os.replace(source, target)

    def remove(self, path: str) -> None:
        os.unlink(path)

    def sync_directory(self, path: str) -> None:
        """fsync the directory holding ``path`` so a create or rename there is durable."""
        directory = os.path.dirname(os.path.abspath(path))
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


OS_FILES: FileLayer = OSFileLayer()
"""The default file layer."""

#: Bytes copied per read and write by :func:`copy_span`.
COPY_CHUNK_BYTES = 1 << 20


def copy_span(
    source: DataFile,
    dest: DataFile,
    start: int,
    end: int,
    chunk_bytes: int = COPY_CHUNK_BYTES,
) -> int:
    """Append bytes ``[start, end)`` of ``source`` to ``dest``, at most ``chunk_bytes`` at a time.

    Returns the offset of ``source`` reached: ``end``, or less when
    ``source`` ended first (the caller decides whether that is an error).
    Nothing is synced.
    """
    position = start
    while position < end:
        chunk = source.pread(min(chunk_bytes, end - position), position)
        if not chunk:
            break
        dest.append(chunk)
        position += len(chunk)
    return position


def set_aside(layer: FileLayer, data_file: DataFile, offset: int, reason: str) -> str:
    """Move bytes ``[offset, end)`` of ``data_file`` into ``PATH.trN``; return its path.

    Order (RCV-005): copy the bytes to the first free ``PATH.tr0``, ``.tr1``,
    ... and fsync it, fsync the directory, then truncate the data file to
    ``offset`` and fsync it.  A crash before the truncation leaves the bytes in
    both places; recovery then sets them aside again into the next ``.trN``.
    """
    path = data_file.path
    number = 0
    while layer.exists(f"{path}.tr{number}"):
        number += 1
    tail_path = f"{path}.tr{number}"
    end = data_file.size()
    tail = layer.open(tail_path, create=True, readonly=False)
    try:
        copy_span(data_file, tail, offset, end)
        tail.sync()
    finally:
        tail.close()
    layer.sync_directory(tail_path)
    data_file.truncate(offset)
    data_file.sync()
    log.warning(
        "%s: %d bytes at offset %d were not a complete transaction (%s); "
        "they were moved to %s and the file was cut there",
        path,
        end - offset,
        offset,
        reason,
        tail_path,
    )
    return tail_path
