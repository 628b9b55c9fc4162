"""A file layer for tests: a disk that fills up on demand and sectors that fail to read.

It wraps the OS file layer (``dhruva.fileio.OS_FILES``), so the storages on
it write real files; errors are raised as the system calls raise them (an
``OSError`` with the errno and no file name), so the tests also prove that
the storages name the file themselves.  Used by tests/test_full_disk.py and
tests/test_fault_pack_backup.py.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable

from dhruva.fileio import OS_FILES, DataFile


class FaultFile:
    """A real file; writes fail with ENOSPC while the layer is full for its path,
    and reads that touch a bad span fail with EIO."""

    def __init__(self, layer: FaultLayer, inner: DataFile) -> None:
        self._layer = layer
        self._inner = inner
        self.path = inner.path

    def _check_space(self) -> None:
        if self._layer.is_full(self.path):
            self._layer.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as os.pwrite: no name

    def size(self) -> int:
        return self._inner.size()

    def pread(self, length: int, offset: int) -> bytes:
        for bad_path, start, stop in self._layer.bad_spans:
            if bad_path == self.path and offset < stop and start < offset + length:
                self._layer.failed_reads += 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))  # as os.pread: no name
        return self._inner.pread(length, offset)

    def pwrite(self, data: bytes, offset: int) -> None:
        self._check_space()
        room = self._layer.room
        if room is not None and offset + len(data) > self._inner.size() + room:
            self._layer.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._inner.pwrite(data, offset)

    def append(self, data: bytes) -> int:
        self._check_space()
        return self._inner.append(data)

    def sync(self) -> None:
        self._inner.sync()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def allocate(self, size: int) -> None:
        if size > self._inner.size():
            self._check_space()
        self._inner.allocate(size)

    def read_map(self) -> mmap.mmap | None:
        # No map of a file with bad spans: every read must go through pread.
        if any(bad_path == self.path for bad_path, _, _ in self._layer.bad_spans):
            return None
        return self._inner.read_map()

    def lock(self, exclusive: bool) -> None:
        self._inner.lock(exclusive)

    def close(self) -> None:
        self._inner.close()


class FaultLayer:
    """The OS file layer with faults: a full disk and bad spans.

    ``full`` is True (every write refused), False, or a predicate on the
    file's path (a disk full only for some files); ``bad_spans`` lists
    ``(path, start, stop)`` byte ranges whose reads fail with EIO.  ``room``,
    when set, is how many bytes a ``pwrite`` may grow a file by (a disk
    nearly full); a longer one is refused with ENOSPC and writes nothing.
    ``refused`` and ``failed_reads`` count the faults delivered.
    """

    def __init__(self) -> None:
        self.full: bool | Callable[[str], bool] = False
        self.room: int | None = None
        self.bad_spans: list[tuple[str, int, int]] = []
        self.refused = 0
        self.failed_reads = 0

    def is_full(self, path: str) -> bool:
        return self.full(path) if callable(self.full) else self.full

    def open(self, path: str, create: bool, readonly: bool) -> DataFile:
        return FaultFile(self, OS_FILES.open(path, create, readonly))

    def exists(self, path: str) -> bool:
        return OS_FILES.exists(path)

    def rename(self, source: str, target: str) -> None:
        OS_FILES.rename(source, target)

    def remove(self, path: str) -> None:
        OS_FILES.remove(path)

    def sync_directory(self, path: str) -> None:
        OS_FILES.sync_directory(path)
