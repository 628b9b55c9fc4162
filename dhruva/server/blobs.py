"""The blobs a server session staged for its next COMMIT (spec: ``spec/server.md``, "Blobs").

Theory of operation.  BLOB_CHUNK frames [WIRE-132] arrive before their
COMMIT; each chunk is appended at once to an anonymous temporary file of
its oid (``tempfile.TemporaryFile``: unlinked when made, so that nothing is
left on disk when the session, or the whole server process, dies) and
never kept in memory [SRV-120].  At COMMIT the server hands the files to
the committer, which rewinds each and calls ``storage.store_blob`` in the
group's storage transaction [SRV-122]; :meth:`StagedBlobs.close` then
closes (and so deletes) them, whether the commit was written, refused, or
its session ended first [SRV-123].
"""

from __future__ import annotations

import tempfile
from typing import BinaryIO


class StagedBlobs:
    """The staged blobs of one transaction: a temporary file per oid, in arrival order.

    ``directory`` is where the temporary files go (None: ``tempfile``'s
    choice).
    """

    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory
        self._files: dict[bytes, BinaryIO] = {}
        self.size_bytes = 0
        """The bytes appended so far, over every oid."""

    def __len__(self) -> int:
        return len(self._files)

    def append(self, oid: bytes, data: bytes) -> None:
        """Append ``data`` to ``oid``'s staged blob (an empty ``data`` makes it exist)."""
        file = self._files.get(oid)
        if file is None:
            # Kept open until close(): the file is the staged blob.
            file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="dhruva-blob-", dir=self._directory
            )
            self._files[oid] = file
        file.write(data)
        self.size_bytes += len(data)

    def oids(self) -> list[bytes]:
        """The oids with a staged blob, in the order their first chunk came."""
        return list(self._files)

    def files(self) -> list[tuple[bytes, BinaryIO]]:
        """Each staged blob as ``(oid, file)``, the file rewound to its start."""
        for file in self._files.values():
            file.flush()
            file.seek(0)
        return list(self._files.items())

    def close(self) -> None:
        """Close (and so delete) every staged file; the spool is empty afterwards."""
        files, self._files = self._files, {}
        self.size_bytes = 0
        for file in files.values():
            file.close()
