"""The storage interface every back-end implements, and MemoryStorage.

Theory of operation (spec: ``spec/storage-api.md``):

A storage maps 8-byte oids to records.  A record is the oid, the object's state
as opaque bytes, and the packed list of oids that state references.  Storages
never look inside the state: packing follows the reference lists alone.

Writes happen in transactions: ``begin()``, any number of ``store()`` calls,
then ``end()``.  ``end()`` returns only once the whole transaction is durable
(for durable back-ends); if it raises, none of the transaction is visible.
``abort_transaction()`` drops a transaction that was begun but not ended.

``sync()`` returns the oids that other writers changed since the previous
``sync()`` of this storage object; a Connection uses it to invalidate its
cache.  Single-process storages have no other writers and return ``[]``.

Snapshots (capability ``snapshots``, spec "Snapshots").  Every committed
transaction has a *tid*, increasing in commit order.  A storage object
reads the database as of one tid, its *read point* (``last_tid()``): the
latest commit when it was opened, last synchronized or last committed.
``load`` returns records as of the read point and never a later version;
``load_at(oid, tid)`` returns them as of an older tid, for a reader that
holds an older snapshot (the storage server serves many clients from one
storage object).  The versions those reads need are kept back to the tid
given to ``set_oldest_snapshot`` (dhruva.snapshots.VersionLedger).
``note_reads(oids)`` makes ``end()`` refuse the transaction when another
writer committed one of those oids after the read point, which is what
serializable commits need from a storage with other writers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from dhruva.blob_store import BlobStore, blobs_without_records, no_blob
from dhruva.error import DhruvaError, DhruvaKeyError, PackNotSupportedError

# Re-exported: Record and its checks were defined here before dhruva.record.
from dhruva.record import Record as Record
from dhruva.record import check_oid as check_oid
from dhruva.record import check_record as check_record
from dhruva.record_class import record_class_name
from dhruva.snapshots import VersionLedger
from dhruva.snapshots import check_snapshot_tid as check_snapshot_tid
from dhruva.utils import int8_to_str, iter_oids, str_to_int8

# Capability names a storage may declare (spec: storage-api.md, "Capabilities").
CAP_PACK = "pack"
CAP_RAW_FILE = "raw-file"
CAP_HISTORY = "history"
CAP_DURABLE = "durable"
CAP_READONLY_OPEN = "readonly-open"
CAP_SNAPSHOTS = "snapshots"
CAP_BLOBS = "blobs"


class Storage:
    """The abstract storage; see the module docstring for the contract.

    Subclasses implement ``load``, ``new_oid``, ``begin``, ``store``, ``end``,
    ``sync`` and ``close``; the rest have generic implementations.
    """

    #: Capabilities this back-end provides (``CAP_*`` names).
    capabilities: frozenset[str] = frozenset()

    def new_oid(self) -> bytes:
        """Return an oid never returned before by this storage and never stored.

        [SAPI-010] An oid handed out is never handed out again, even after reopen,
        once any transaction of this storage has stored it.
        """
        raise NotImplementedError

    def load(self, oid: bytes) -> Record:
        """Return the current record of ``oid``; raise DhruvaKeyError if there is none."""
        raise NotImplementedError

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[Record]:
        """Yield the records of ``oids`` in order; raise DhruvaKeyError for a missing one."""
        for oid in oids:
            yield self.load(oid)

    def begin(self) -> None:
        """Start a transaction.  Raise DhruvaError if one is already open."""
        raise NotImplementedError

    def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
        """Add a record to the open transaction (last store of an oid wins)."""
        raise NotImplementedError

    def store_many(self, records: Iterable[tuple[bytes, bytes, bytes]]) -> None:
        """``store(oid, data, refs)`` for each triple of ``records``, in order (SAPI-038).

        The first triple ``store`` refuses raises what ``store`` raises, with
        the triples before it stored and none after.  A back-end may stage
        the triples in one step; this generic version calls ``store``.
        """
        store = self.store
        for oid, data, refs in records:
            store(oid, data, refs)

    def end(self) -> None:
        """Commit the open transaction: durable and visible when this returns.

        Raises WriteConflictError (client storages) when another client changed
        a stored object since this storage's last sync; nothing is then written.
        """
        raise NotImplementedError

    def abort_transaction(self) -> None:
        """Drop the open transaction, if any, without writing anything."""
        raise NotImplementedError

    def sync(self) -> list[bytes]:
        """Return the oids changed by other writers since the previous sync."""
        return []

    # -- snapshots (capability "snapshots"; spec: storage-api.md, "Snapshots") --------

    def last_tid(self) -> int:
        """Return the read point: the tid of the latest commit this object reads (SAPI-090).

        0 for a database with no transaction.  It moves forward at ``sync()``
        and at this object's own ``end()``, never by itself.
        """
        raise DhruvaError(f"{type(self).__name__} does not support snapshots")

    def load_at(self, oid: bytes, tid: int) -> Record:
        """Return ``oid``'s record as the committed transaction ``tid`` left it (SAPI-092).

        ``tid`` is at most ``last_tid()``.  Raise DhruvaKeyError when ``oid``
        had no record then, SnapshotTooOldError when the versions ``tid``
        needs are no longer kept (SAPI-094).
        """
        raise DhruvaError(f"{type(self).__name__} does not support snapshots")

    def set_oldest_snapshot(self, tid: int | None) -> None:
        """Say the oldest snapshot a reader of this object still holds (SAPI-093).

        The storage keeps every version a snapshot at or after ``tid`` reads
        (within its memory bound) and may drop older ones; None means no
        snapshot older than the read point is held.
        """

    def note_reads(self, oids: Iterable[bytes]) -> None:
        """Declare oids the open transaction read: ``end()`` checks them (SAPI-095).

        ``end()`` MUST raise ReadConflictError naming the oids that another
        writer committed after this object's read point.  A storage with no
        other writers has nothing to check; one that has MUST raise
        DhruvaError outside a transaction.
        """

    # -- blobs (capability "blobs"; spec: blobs.md) -----------------------------------

    def store_blob(self, oid: bytes, file: BinaryIO) -> None:
        """Make ``file``'s content (from its position on) ``oid``'s blob in this transaction.

        [BLOB-010] The transaction must store ``oid``'s record as well.
        """
        raise DhruvaError(f"{type(self).__name__} does not store blobs")

    def open_blob(self, oid: bytes, tid: int | None = None) -> BinaryIO:
        """Return a readable stream of ``oid``'s blob as of the read point or ``tid`` (BLOB-011)."""
        raise DhruvaError(f"{type(self).__name__} does not store blobs")

    def pack(self) -> None:
        """Remove records unreachable from the root and superseded revisions."""
        raise PackNotSupportedError(type(self).__name__)

    def close(self) -> None:
        """Release files, locks and sockets.  Closing twice is harmless."""

    def get_size(self) -> int:
        """Return the number of objects stored."""
        return sum(1 for _ in self.iter_oids())

    def iter_oids(self) -> Iterator[bytes]:
        """Yield every stored oid (order unspecified)."""
        raise NotImplementedError

    def gen_oid_record(
        self, start_oid: bytes | None = None, batch_size: int = 100
    ) -> Iterator[tuple[bytes, Record]]:
        """Yield ``(oid, record)`` for every stored object (Durus's name).

        With ``start_oid`` the walk follows references from that oid (every
        reachable object once); without, it yields every stored object.
        """
        if start_oid is None:
            for oid in self.iter_oids():
                yield oid, self.load(oid)
            return
        seen = {start_oid}
        todo = [start_oid]
        while todo:
            batch, todo = todo[:batch_size], todo[batch_size:]
            for record in self.bulk_load(batch):
                yield record.oid, record
                for ref in iter_oids(record.refs):
                    if ref not in seen:
                        seen.add(ref)
                        todo.append(ref)

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reachable_oids(storage: Storage, root: bytes = b"\x00" * 8) -> set[bytes]:
    """Return the set of oids reachable from ``root`` through reference lists.

    Missing referenced oids (dangling references) are skipped, not raised.
    """
    seen: set[bytes] = set()
    todo = [root]
    while todo:
        oid = todo.pop()
        if oid in seen:
            continue
        try:
            record = storage.load(oid)
        except DhruvaKeyError:
            continue
        seen.add(oid)
        todo.extend(ref for ref in iter_oids(record.refs) if ref not in seen)
    return seen


class MemoryStorage(Storage):
    """A storage that keeps everything in a dict; nothing survives close.

    Useful for tests and for caches of throw-away objects.  It has one
    writer, itself, so its read point is always its last commit; it keeps
    the versions older snapshots read in a VersionLedger (SAPI-090..095).
    """

    capabilities = frozenset({CAP_PACK, CAP_SNAPSHOTS, CAP_BLOBS})

    def __init__(self) -> None:
        self._records: dict[bytes, Record] = {}
        # Blobs live in files even here (BLOB-015), in a directory removed at close.
        self._blob_store: BlobStore | None = None
        self._pending: dict[bytes, Record] | None = None
        self._next_oid = 0
        self._tid = 0
        self._ledger = VersionLedger()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise DhruvaError("the storage is closed")

    def new_oid(self) -> bytes:
        self._check_open()
        oid = int8_to_str(self._next_oid)
        self._next_oid += 1
        return oid

    def load(self, oid: bytes) -> Record:
        self._check_open()
        try:
            return self._records[oid]
        except KeyError:
            check_oid(oid)  # [SAPI-006] checked where it costs nothing: on a miss
            raise DhruvaKeyError(oid) from None

    def last_tid(self) -> int:
        self._check_open()
        return self._tid

    def load_at(self, oid: bytes, tid: int) -> Record:
        self._check_open()
        return self._ledger.load_at(oid, tid, self._tid, self.load)

    def set_oldest_snapshot(self, tid: int | None) -> None:
        self._ledger.set_floor(tid)

    def _blobs(self) -> BlobStore:
        if self._blob_store is None:
            self._blob_store = BlobStore(tempfile.mkdtemp(prefix="dhruva-memory-blobs-"))
        return self._blob_store

    def store_blob(self, oid: bytes, file: BinaryIO) -> None:
        if self._pending is None:
            raise DhruvaError("store_blob() outside a transaction; call begin() first")
        check_oid(oid)
        self._blobs().stage(oid, file)

    def open_blob(self, oid: bytes, tid: int | None = None) -> BinaryIO:
        self._check_open()
        if tid is None:
            tid = self._tid
        else:
            check_snapshot_tid(tid, self._tid)
        if self._blob_store is None:
            raise no_blob(oid)
        return self._blob_store.open(oid, tid)

    def begin(self) -> None:
        self._check_open()
        if self._pending is not None:
            raise DhruvaError("a transaction is already open")
        self._pending = {}

    def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
        if self._pending is None:
            raise DhruvaError("store() outside a transaction; call begin() first")
        check_record(oid, data, refs)
        self._pending[oid] = Record(oid, bytes(data), refs)

    def end(self) -> None:
        if self._pending is None:
            raise DhruvaError("end() without begin()")
        pending, self._pending = self._pending, None
        blobs = self._blob_store
        staged = blobs.staged_oids() if blobs is not None else set()
        orphans = blobs_without_records(staged, pending)
        if orphans is not None:
            assert blobs is not None
            blobs.discard()
            raise orphans
        if not pending:
            return  # [SAPI-036] an empty transaction changes nothing, the tid included
        tid = self._tid + 1
        if blobs is not None and staged:
            blobs.commit(tid)
        records = self._records
        self._ledger.supersede(
            tid, [(oid, records.get(oid)) for oid in pending] if self._ledger.wanted(tid) else ()
        )
        records.update(pending)
        self._tid = tid
        # [SAPI-010] Oids stored here must never be handed out again.
        highest = max(str_to_int8(oid) for oid in pending)
        self._next_oid = max(self._next_oid, highest + 1)

    def abort_transaction(self) -> None:
        self._pending = None
        if self._blob_store is not None:
            self._blob_store.discard()

    def iter_oids(self) -> Iterator[bytes]:
        self._check_open()
        return iter(list(self._records))

    def get_size(self) -> int:
        return len(self._records)

    def pack(self) -> None:
        self._check_open()
        keep = reachable_oids(self)
        # [SAPI-096] The versions held snapshots read stay in the ledger;
        # what they reference is kept as what the root reaches is.
        for refs in self._ledger.kept_refs():
            for ref in iter_oids(refs):
                if ref not in keep:
                    keep |= reachable_oids(self, ref)
        for oid in [oid for oid in self._records if oid not in keep]:
            del self._records[oid]
        if self._blob_store is not None:
            self._blob_store.collect(keep.__contains__, self._ledger.floor, self._tid)

    def close(self) -> None:
        self._closed = True
        if self._blob_store is not None:
            self._blob_store.remove_all()
            self._blob_store = None


# --- Durus's storage helpers (docs/guide/durus.md) ----------------------------------------
#
# Durus 4.3 defines these in durus.storage; they live at the same path here.
# They walk a storage's records; the class names come from the record bytes
# through the sans-IO codec dhruva.record_class (nothing is unpickled), so the
# storages themselves still never interpret a record (DM-004).


def gen_oid_class(storage: Storage, *classes: str) -> Iterator[tuple[bytes, str]]:
    """Yield ``(oid, dotted class name)`` for every stored object (SAPI-084).

    With ``classes`` (dotted names), only objects of those classes.  A record
    whose class cannot be read from its bytes is yielded with the name "?",
    as Durus does.
    """
    for oid, record in storage.gen_oid_record():
        try:
            name = record_class_name(record.data)
        except ValueError:
            name = "?"
        if not classes or name in classes:
            yield oid, name


def get_census(storage: Storage) -> dict[str, int]:
    """Return ``{dotted class name: number of stored instances}`` (SAPI-084).

    Durus keys the census by the bare class name as bytes
    (``b"PersistentDict"``); dhruva by the dotted name as str
    (``"dhruva.persistent_dict.PersistentDict"``), which cannot be ambiguous.
    """
    census: dict[str, int] = {}
    for _oid, name in gen_oid_class(storage):
        census[name] = census.get(name, 0) + 1
    return census


def get_reference_index(storage: Storage) -> dict[bytes, list[bytes]]:
    """Return ``{oid: [oids of the records that reference it]}`` (SAPI-085).

    It holds every reference in memory: as Durus warns, it may be large.
    """
    index: dict[bytes, list[bytes]] = {}
    for oid, record in storage.gen_oid_record():
        for ref in iter_oids(record.refs):
            index.setdefault(ref, []).append(oid)
    return index


def gen_referring_oid_record(
    storage: Storage, referred_oid: bytes
) -> Iterator[tuple[bytes, Record]]:
    """Yield ``(oid, record)`` for every record that references ``referred_oid`` (SAPI-085)."""
    for oid, record in storage.gen_oid_record():
        if referred_oid in iter_oids(record.refs):
            yield oid, record
