"""Conformance back-ends that reach their storage through a dhruva storage server.

Spec: ``spec/conformance.md`` (back-ends) and ``spec/server.md``.

``server-memory`` serves a MemoryStorage, ``server-file`` a FileStorage; the
suite talks to either only through :class:`~dhruva.client_storage.ClientStorage`,
so the server is held to exactly the storage contract of the back-end it
serves.  Each ``open()`` starts a :class:`~dhruva.server.storage_server.StorageServer`
on a Unix socket in the factory's directory, running in a thread of the test
process, and returns a client storage; closing that client stops the server
and closes the served storage, so the database can be reopened.
``crash()`` stops the server without an orderly close of the served storage
and then leaves the files as a killed process would (the inner factory's
crash).
"""

from __future__ import annotations

import threading
from typing import Any

from dhruva_conformance.backends import (
    CAP_READONLY,
    CAP_REOPEN,
    CAP_REPAIR,
    BaseFactory,
    FileFactory,
    register_backend,
)

from dhruva.client_storage import ClientStorage
from dhruva.server.storage_server import StorageServer
from dhruva.storage import (
    CAP_BLOBS,
    CAP_DURABLE,
    CAP_RAW_FILE,
    CAP_SNAPSHOTS,
    MemoryStorage,
    Storage,
)


class ServedStorage(ClientStorage):
    """A ClientStorage that owns the in-process server it talks to."""

    def __init__(self, inner: Storage, socket_path: str, readonly: bool = False) -> None:
        self.inner = inner
        # The storage interface lets a caller store oids of its own choosing
        # (the suite does); the server's unallocated-oid check (SRV-022) is a
        # server policy on top of it, tested in tests/test_server.py.
        self.server = StorageServer(inner, socket_path, readonly=readonly, check_oids=False)
        self._thread = threading.Thread(
            target=self.server.serve, name="dhruva-conformance-server", daemon=True
        )
        self._thread.start()
        try:
            super().__init__(socket_path)
        except BaseException:
            self.stop_serving(close_inner=True)
            raise
        self.readonly = readonly

    @property
    def _ledger(self) -> Any:
        """The served storage's VersionLedger (None without one).

        conformance/test_snapshots.py sets its bound white-box (SAPI-094);
        through the server that checks that SNAPSHOT_TOO_OLD reaches the
        client as SnapshotTooOldError, never a wrong record.
        """
        return getattr(self.inner, "_ledger", None)

    def stop_serving(self, close_inner: bool) -> None:
        """Stop the server thread; close the served storage when asked."""
        self.server.stop()
        self._thread.join()
        if close_inner:
            self.inner.close()

    def close(self) -> None:
        already = self._closed
        super().close()
        if not already:
            self.stop_serving(close_inner=True)


class _ServerFactory(BaseFactory):
    """Shared machinery: an inner storage served through a Unix socket."""

    def _inner(self, reopen: bool, **options: Any) -> Storage:
        raise NotImplementedError

    def _open(self, reopen: bool, **options: Any) -> Storage:
        readonly = bool(options.get("readonly", False))
        inner = self._inner(reopen, **options)
        return ServedStorage(inner, str(self.directory / "server.sock"), readonly=readonly)

    def crash(self, storage: Storage) -> None:
        assert isinstance(storage, ServedStorage)
        # The client and the server die together; the served storage gets no
        # orderly close, its files stay as the process left them.
        storage._closed = True
        storage._sock.close()
        storage.stop_serving(close_inner=False)
        self._crash_inner(storage.inner)

    def _crash_inner(self, inner: Storage) -> None:
        inner.close()


class ServerMemoryFactory(_ServerFactory):
    """A MemoryStorage behind a storage server."""

    name = "server-memory"
    # Blobs too: the server carries them when its storage has them (SRV-120).
    capabilities = MemoryStorage.capabilities

    def _inner(self, reopen: bool, **options: Any) -> Storage:
        if reopen:
            raise NotImplementedError("MemoryStorage keeps nothing across close")
        if options:
            raise TypeError(f"server-memory takes no options, not {sorted(options)}")
        return MemoryStorage()


class ServerFileFactory(_ServerFactory):
    """A FileStorage behind a storage server."""

    name = "server-file"
    # Not "subprocess": a child process would open the file, not the server.
    # Not "file-layer": a simulated crash inside the server thread cannot reach
    # the caller as the exception those tests expect.
    capabilities = frozenset(
        {
            CAP_REOPEN,
            CAP_RAW_FILE,
            CAP_DURABLE,
            CAP_REPAIR,
            CAP_READONLY,
            "readonly-open",
            "pack",
        }
    ) | (FileFactory.capabilities & {CAP_SNAPSHOTS, CAP_BLOBS})
    # (snapshots and blobs: served when the FileStorage has them, WIRE-100, SRV-120)

    def __init__(self, directory: Any) -> None:
        super().__init__(directory)
        self._file = FileFactory(self.directory)

    def _inner(self, reopen: bool, **options: Any) -> Storage:
        return self._file._open(reopen, **options)

    def _crash_inner(self, inner: Storage) -> None:
        self._file.crash(inner)

    def _files(self) -> list[Any]:
        # The socket file is the server's, not the database's.
        return [p for p in super()._files() if p.name != "server.sock"]

    def paths(self) -> list[str]:
        return [p for p in self._file.paths() if not p.endswith("server.sock")]


register_backend("server-memory", ServerMemoryFactory)
register_backend("server-file", ServerFileFactory)


def add_server_options(group: Any) -> None:
    """Add the wire transcript options to the conformance plugin's option group."""
    group.addoption(
        "--dhruva-server-address",
        dest="dhruva_server_address",
        default=None,
        metavar="HOST:PORT|SOCKET",
        help="replay the wire transcripts against the dhruva server at this address",
    )
    group.addoption(
        "--dhruva-server-fresh",
        dest="dhruva_server_fresh",
        action="store_true",
        help="the server at --dhruva-server-address has an empty database",
    )
    group.addoption(
        "--dhruva-server-auth",
        dest="dhruva_server_auth",
        action="store_true",
        help="the server at --dhruva-server-address has the wire transcripts' secret: "
        "replay only the authentication transcripts",
    )
