"""Blobs kept as numbered chunks in a database table (SQLite, PostgreSQL).

Spec: ``spec/blobs.md``, "Blobs in a database" (BLOB-030..034).

A back-end that keeps its records in a database keeps each blob version as
rows ``(oid, tid, n, data)``: chunk ``n`` holds the bytes from
``n * CHUNK_BYTES`` on; every chunk but the last holds exactly
``CHUNK_BYTES`` bytes, the last one 1 to ``CHUNK_BYTES`` bytes, and an empty
blob is the one chunk 0 with no bytes.  So a version's size follows from its
last chunk alone, and any offset names its chunk without reading the others.

This module owns that layout, the two directions of it and nothing of a
particular database: :func:`write_chunks` cuts a stream into chunks and
hands each to the back-end; :class:`ChunkReader` is the readable, seekable
stream a back-end's ``open_blob`` returns, asking the back-end for one chunk
at a time, so memory holds one chunk whatever the blob's size (BLOB-015).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO

from dhruva.blob_store import CHUNK_BYTES
from dhruva.error import CorruptionError, DhruvaError

#: ``fetch(n)`` returns chunk ``n`` of the version being read, or None when it is gone.
ChunkFetch = Callable[[int], "bytes | None"]


def write_chunks(source: BinaryIO, put: Callable[[int, bytes], object]) -> int:
    """Cut ``source`` (from its position to its end) into chunks; return the size.

    ``put(n, data)`` is called once per chunk, in order, each a full
    ``CHUNK_BYTES`` but the last (BLOB-030).  A source that returns short
    reads is read again until a chunk is full, so the layout does not depend
    on how the source reads.
    """
    size = 0
    number = 0
    while True:
        parts: list[bytes] = []
        filled = 0
        while filled < CHUNK_BYTES:
            part = source.read(CHUNK_BYTES - filled)
            if not part:
                break
            parts.append(part)
            filled += len(part)
        if filled == 0 and number > 0:
            return size
        put(number, parts[0] if len(parts) == 1 else b"".join(parts))
        size += filled
        number += 1
        if filled < CHUNK_BYTES:
            return size


class ChunkReader(io.RawIOBase):
    """A read-only, seekable stream over one blob version's chunks (BLOB-031).

    ``count`` and ``last_size`` come from the version's last chunk, read
    when the blob was opened; ``where`` names the blob in errors.  A chunk
    that has gone since (a pack removed the version, BLOB-033) raises
    DhruvaError; one of the wrong length raises CorruptionError.  Neither
    ever returns bytes of another version.
    """

    def __init__(self, fetch: ChunkFetch, count: int, last_size: int, where: str) -> None:
        super().__init__()
        self._fetch = fetch
        self._count = count
        self._last_size = last_size
        self._size = (count - 1) * CHUNK_BYTES + last_size  # [BLOB-030]
        self._where = where
        self._position = 0
        self._chunk_number = -1
        self._chunk = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._position + offset
        elif whence == io.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"whence must be 0, 1 or 2, not {whence!r}")
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        self._position = target
        return target

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._check_open()
        position = self._position
        if position >= self._size or not len(buffer):
            return 0
        number, start = divmod(position, CHUNK_BYTES)
        chunk = self._load(number)
        taken = min(len(buffer), len(chunk) - start)
        view = memoryview(buffer).cast("B")
        view[:taken] = chunk[start : start + taken]
        self._position = position + taken
        return taken

    def _load(self, number: int) -> bytes:
        if number != self._chunk_number:
            chunk = self._fetch(number)
            if chunk is None:
                raise DhruvaError(
                    f"chunk {number} of {self._where} is gone: a pack removed this version "
                    "while it was read; open the blob again"
                )
            expected = CHUNK_BYTES if number < self._count - 1 else self._last_size
            if len(chunk) != expected:
                raise CorruptionError(
                    self._where, None, f"chunk {number} holds {len(chunk)} bytes, not {expected}"
                )
            self._chunk, self._chunk_number = chunk, number
        return self._chunk

    def close(self) -> None:
        self._chunk = b""
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed blob")


def open_reader(fetch: ChunkFetch, count: int, last_size: int, where: str) -> BinaryIO:
    """Return a buffered stream over a version's chunks (what ``open_blob`` returns)."""
    raw = ChunkReader(fetch, count, last_size, where)
    return io.BufferedReader(raw, CHUNK_BYTES)
