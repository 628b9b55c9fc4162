"""The exceptions dhruva raises.

Every error is a :class:`DhruvaError`; each carries the context a user needs to
understand what happened (the oids, the path and offset, the frame) and says
what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable


def _format_oids(oids: Iterable[bytes], limit: int = 8) -> str:
    shown = [int.from_bytes(oid, "big") for oid in list(oids)[:limit]]
    text = ", ".join(str(n) for n in shown)
    return text


class DhruvaError(Exception):
    """The base class of every error dhruva raises on purpose."""


class DhruvaKeyError(KeyError, DhruvaError):
    """No object with this oid is stored.

    It is also a :class:`KeyError`, so ``except KeyError`` code from Durus
    keeps working.
    """

    def __init__(self, oid: bytes | None = None, message: str | None = None) -> None:
        self.oid = oid
        if message is None:
            if oid is None:
                message = "no such object"
            else:
                message = f"no object with oid {int.from_bytes(oid, 'big')} is stored"
        super().__init__(message)

    def __str__(self) -> str:
        # KeyError quotes its argument; a message reads better unquoted.
        return str(self.args[0])


class InvalidObjectReference(DhruvaError):
    """A persistent object was found in a state where it cannot be stored.

    Raised at commit for an object that belongs to another connection, or for
    a non-persistent object where a persistent one is required.
    """


class ConflictError(DhruvaError):
    """Another client changed objects this transaction depends on.

    ``oids`` lists the objects concerned.  Call ``connection.abort()`` and
    retry the transaction.
    """

    def __init__(self, oids: Iterable[bytes] = (), message: str | None = None) -> None:
        self.oids: list[bytes] = list(oids)
        if message is None:
            message = (
                f"objects [{_format_oids(self.oids)}]"
                + (" ..." if len(self.oids) > 8 else "")
                + " were changed by another client; call abort() and retry"
            )
        super().__init__(message)


class WriteConflictError(ConflictError):
    """A commit tried to store objects another client changed since the last sync."""


class ReadConflictError(ConflictError):
    """An object was loaded after another client changed it during this transaction."""


class SerializationConflictError(WriteConflictError, ReadConflictError):
    """A commit refused because objects it *read* were changed since its snapshot.

    Raised by ``Connection.commit()`` in serializable isolation (spec
    CONN-043); ``oids`` names the objects read.  It is a ReadConflictError,
    which is what happened, and a WriteConflictError, which is what Durus
    raises at commit in this case, so handlers written for either catch it.
    """


class ProtocolError(DhruvaError):
    """A peer sent bytes that break the wire protocol (spec: wire protocol)."""


class AuthenticationError(DhruvaError):
    """The storage server refused our credentials, or the peer could not prove its own.

    Raised by ClientStorage for a wrong or missing shared secret, a server
    that does not authenticate when a secret was given, and a server that
    requires TLS when none was used (spec: wire-protocol.md,
    "Authentication").  The message says which and what to do.
    """


class CorruptionError(DhruvaError):
    """A database file is damaged at a known place.

    ``path`` names the file, ``offset`` the byte where the damage was found
    (or None when it is not tied to one), ``reason`` what was wrong, for
    people.  ``code``, when set, names the failed check for programs (the
    reason codes of ``conformance/vectors/README.md``, such as ``txn-crc`` or
    ``record-crc``): decide by it, never by the reason's text.
    """

    def __init__(
        self, path: str, offset: int | None, reason: str, code: str | None = None
    ) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        self.code = code
        where = f"{path}" if offset is None else f"{path} at offset {offset}"
        super().__init__(f"{where}: {reason}")


class FormatError(CorruptionError):
    """A file is not a dhruva file of a version this code can read."""


class DiskReadError(DhruvaError, OSError):
    """The disk failed to read a database file (EIO, a bad sector): no data was returned.

    Both a DhruvaError (so a caller that handles storage failures handles it,
    and a server answers STORAGE_FAILURE) and an OSError with the original
    ``errno``, ``strerror`` and ``filename`` (the file's path).  ``path`` and
    ``offset`` say where the read was (spec: fault-model.md, FLT-084).
    """

    def __init__(self, errno: int | None, strerror: str, path: str, offset: int) -> None:
        OSError.__init__(self, errno, strerror, path)
        self.path = path
        self.offset = offset

    def __str__(self) -> str:
        return f"{self.path} at offset {self.offset}: {self.strerror} (the disk failed the read)"


class StorageLockedError(DhruvaError):
    """Another process holds the write lock on this database file."""


class ReadOnlyError(DhruvaError):
    """A write was attempted on a storage opened read-only."""


class SerializationError(DhruvaError):
    """An object's state could not be turned into bytes, or back.

    The message names the object's class and, where known, the attribute.
    """


class MissingClassError(SerializationError):
    """A record names a class that cannot be found (renamed, moved or removed).

    ``name`` is the dotted import path the record gives.  Map the old name
    to the class's new home with ``Connection(..., class_map={old: new})``.
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        super().__init__(
            f"cannot find class {name} ({reason}); if it was renamed or moved, map its "
            f"old name to the new class with Connection(..., class_map={{{name!r}: NewClass}})"
        )


class ForbiddenClassError(SerializationError):
    """A record names a class (or other global) that this connection may not load.

    Raised by restricted loading (spec: object-encoding.md, OBJ-020) before
    anything the record names is imported or called.  ``name`` is the dotted
    import path the record asked for.  Add it to the connection's
    ``allowed_classes`` if the database is trusted to use it.
    """

    def __init__(self, name: str, reason: str | None = None) -> None:
        self.name = name
        detail = reason or "it is not on this connection's allow-list"
        super().__init__(
            f"refusing to load {name}: {detail} (pass it in allowed_classes= "
            "only if you trust the database)"
        )


class UnallocatedOidError(DhruvaError):
    """A store of an oid that was never allocated to this storage object [SAPI-013].

    A storage that refuses such oids (the storage server's clients do, so that
    one client cannot overwrite objects another client is creating) raises
    this at ``store()`` or ``end()``; nothing of the transaction is stored.
    """


class PackNotSupportedError(DhruvaError):
    """The storage cannot pack (``Storage.pack`` of a storage without it).

    The server answers a PACK to such a storage with NOT_SUPPORTED
    (spec: server.md, "Packing"); ``storage`` names the storage's class.
    """

    def __init__(self, storage: str) -> None:
        self.storage = storage
        super().__init__(f"{storage} does not support pack")
class SnapshotTooOldError(ReadConflictError):
    """A read at a snapshot whose old versions are no longer kept [SAPI-094].

    A storage keeps the versions that snapshots still read only back to the
    oldest snapshot it was told about (``set_oldest_snapshot``), and within a
    memory bound; a reader holding an older snapshot gets this error instead
    of a wrong record.  ``tid`` is the snapshot asked for, ``oldest`` the
    oldest the storage can still serve.  Call ``abort()`` to move to the
    latest snapshot and retry.  It is a ReadConflictError, so
    ``run_transaction`` and code written for Durus's read conflicts retry it.
    """

    def __init__(self, tid: int, oldest: int) -> None:
        self.tid = tid
        self.oldest = oldest
        super().__init__(
            (),
            f"snapshot {tid} is too old: versions before transaction {oldest} are no "
            "longer kept; call abort() and retry",
        )


# --- Durus compatibility (docs/guide/durus.md) --------------------------------------------

DurusKeyError = DhruvaKeyError
"""Durus's name for :class:`DhruvaKeyError` (the same class, so either can be caught)."""


class EmptyBTreeError(DhruvaError, ValueError, AssertionError):
    """``get_min_item()`` or ``get_max_item()`` of an empty BTree.

    It is a ValueError (what dhruva documents) and an AssertionError (what
    Durus 4.3 raises), so ``except`` clauses written for either keep working
    (spec BT-024).
    """
