"""Blob: a persistent large binary value, streamed in and out (spec: blobs.md).

A ``Blob`` is a persistent object whose bytes are not in its record: they
live in the storage's blob area (capability ``blobs``), are written through
a temporary file and read as a stream, so a blob of any size costs memory
bounded by a chunk::

    from dhruva.blob import Blob

    root["video"] = blob = Blob()
    with blob.open("w") as f:
        for chunk in source:
            f.write(chunk)
    connection.commit()              # streamed into the storage

    with root["video"].open("r") as f:
        header = f.read(1024)

Theory of operation.  The record of a Blob is an empty state; the only
per-object field is ``_p_blob_file``, the path of the temporary file that
holds content written in the current transaction (a ``_p_`` slot: never
part of the state, never loading a ghost).  Opening for writing creates
that file (copying the committed content first for ``"a"`` and ``"r+"``)
and marks the blob changed; the Connection's commit hands the file to
``storage.store_blob`` together with the record, and after the commit, or
at abort, the file is deleted.  Reading opens the temporary file when there
is one, else asks the connection for the committed blob as of the
transaction's snapshot.

This module never moves: records name ``dhruva.blob.Blob``.
"""

from __future__ import annotations

import io
import os
import tempfile
import weakref
from typing import Any, BinaryIO, ClassVar

from dhruva.blob_store import copy_stream
from dhruva.persistent import PersistentObject

MODES = ("r", "w", "a", "r+")


class Blob(PersistentObject):
    """A large binary value stored outside the records (BLOB-001..006)."""

    __slots__ = ("_p_blob_file",)

    #: Where the temporary files of written content go (None: tempfile's choice).
    temp_dir: ClassVar[str | None] = None
    _p_blob: ClassVar[bool] = True

    def __init__(self, data: bytes = b"") -> None:
        object.__setattr__(self, "_p_blob_file", None)
        if data:
            with self.open("w") as file:
                file.write(data)

    # -- the state: nothing but the blob itself ----------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._p_drop_file()

    def _p_clear_state(self) -> None:
        self._p_drop_file()

    def _p_blob_pending(self) -> str | None:
        """The temporary file with this transaction's content, or None (for the connection)."""
        try:
            return object.__getattribute__(self, "_p_blob_file")  # type: ignore[no-any-return]
        except AttributeError:
            return None

    def _p_drop_file(self) -> None:
        """Delete this transaction's temporary file (after commit or abort)."""
        path = self._p_blob_pending()
        object.__setattr__(self, "_p_blob_file", None)
        if path is not None:
            _remove_quietly(path)

    # -- the public interface ----------------------------------------------------------

    def open(self, mode: str = "r") -> BinaryIO:
        """Return a binary file object on the blob: ``"r"``, ``"w"``, ``"a"`` or ``"r+"``."""
        if mode not in MODES:
            raise ValueError(f"a blob opens with one of {', '.join(MODES)}, not {mode!r}")
        pending = self._p_blob_pending()
        if mode == "r":
            if pending is not None:
                return open(pending, "rb")
            return self._committed()
        if pending is None:
            descriptor, path = tempfile.mkstemp(prefix="dhruva-blob-", dir=self.temp_dir)
            with os.fdopen(descriptor, "wb") as target:
                if mode in ("a", "r+"):
                    with self._committed() as source:
                        copy_stream(source, target)
            self._p_note_change()
            object.__setattr__(self, "_p_blob_file", path)
            # A blob dropped without commit or abort must not leave its file.
            weakref.finalize(self, _remove_quietly, path)
            pending = path
        elif mode != "r+":
            self._p_note_change()
        if mode == "w":
            return open(pending, "wb")
        if mode == "a":
            return open(pending, "ab")
        return open(pending, "r+b")

    def size(self) -> int:
        """Return the length of the content ``open("r")`` reads (BLOB-006)."""
        with self.open("r") as file:
            return file.seek(0, io.SEEK_END)

    def _committed(self) -> BinaryIO:
        connection = self._p_connection
        if connection is None or self._p_oid is None:
            return io.BytesIO(b"")  # a new blob that was never written
        return connection.open_blob(self)  # type: ignore[attr-defined, no-any-return]

    def __repr__(self) -> str:
        return f"<Blob {self._p_format_oid()}>"


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
