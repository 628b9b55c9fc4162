"""The Connection: loads persistent objects, caches them, commits and aborts.

A :class:`Connection` is a view of one storage as a graph of persistent
objects: ``connection.root`` (or ``get_root()``) is the root object, changes
to loaded objects are written atomically by ``commit()`` and dropped by
``abort()``.  :func:`touch_every_reference` and :func:`gen_every_instance` are
Durus's helpers for renamed classes.  The contract is ``spec/connection.md``.

Theory of operation (for maintainers; the attributes named here are private):

State.  ``_objects`` maps oid to every persistent object of this connection
that is still alive anywhere (weakly held, ghosts included).  ``_loaded``
holds a strong reference to every object whose state is loaded, in the order
they were loaded; it is what ``cache_size`` bounds.  ``_changed`` maps oid to
each object changed since the last commit or abort.

Loading.  A ghost's first attribute access calls ``load_state``, which reads
the record, unpickles the state (references become ghosts via
``get_ghost``), installs it and appends the object to ``_loaded``.

Snapshots and reads (spec "Isolation").  On a storage with the capability
``snapshots`` every load returns the record as of the storage's read point,
which the connection moves only at transaction boundaries (the ``sync()``
of commit and abort): a transaction reads one committed state, its
snapshot, and a load never raises ReadConflictError.  ``_reads`` lists the
objects whose state this transaction used: every object loaded, and every
cached object the first time an attribute is read.  The second comes from
the tracked class of ``dhruva.persistent``: at each boundary the objects the
transaction used are moved back into their tracked class, so their first
use in the next transaction calls ``note_read``, and later uses cost
nothing.  The work per boundary is proportional to what the transaction
used, never to the cache.  At commit, in serializable isolation, the
oids of ``_reads`` go to the storage with ``note_reads``: a storage with
other writers refuses the commit when one of them changed since the
snapshot.  Reads are tracked (``_track_reads``) only where they are
checked, serializable isolation on a storage with other writers: on a
storage the connection owns alone nothing is re-armed, and a transaction
costs what it did before snapshots.

Commit.  (1) serialize every changed object and every new persistent object
reachable from one, attaching new objects (giving them oids); a failure here
detaches them again and leaves the connection as it was.  (2) store every
record in one storage transaction, with the read set; a failure (a
conflict, a full disk) aborts the storage transaction, detaches the new
objects, and leaves the changes in place for the application to
``abort()``.  A write conflict on objects whose classes define
``_p_resolve_conflict`` is resolved instead: the old, the committed and
this transaction's states are merged and the commit goes back to (1).
(3) mark the written objects saved, (4) synchronize: ghost every object
another client changed, (5) re-arm the objects used, (6) shrink the cache.

Abort.  Every changed object becomes a ghost, so its next access reloads the
committed state; then synchronize and shrink the cache.

Cache.  Shrinking runs at transaction boundaries only, never in the middle of
a transaction.  It is a CLOCK with a second chance: the hand walks
``_loaded`` from the oldest end; an object still in its tracked class (not
used since it was armed) becomes a ghost and leaves ``_loaded``; an object
in its real class is armed and moved to the young end.  When reads are
tracked, re-arming at each boundary already moved each used object to the
young end, so the clock evicts the least recently used first.  Changed
objects are never touched.
"""

from __future__ import annotations

import io
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from operator import itemgetter
from types import MappingProxyType, TracebackType
from typing import Any, BinaryIO, TypeVar

from dhruva import persistent, speedups
from dhruva.class_registry import AllowEntry, ClassMap, ClassRegistry
from dhruva.error import (
    ConflictError,
    DhruvaError,
    DhruvaKeyError,
    InvalidObjectReference,
    ReadConflictError,
    SerializationConflictError,
    SerializationError,
    SnapshotTooOldError,
    WriteConflictError,
)
from dhruva.persistent import GHOST, SAVED, UNSAVED, PersistentBase
from dhruva.serialize import (
    ObjectReader,
    ObjectWriter,
    Serializer,
    check_record_class,
    reading_registry,
    select_serializer,
)
from dhruva.storage import CAP_BLOBS, CAP_SNAPSHOTS, Record, Storage
from dhruva.utils import ROOT_OID, int8_to_str, str_to_int8

_setattr = object.__setattr__
_getattribute = object.__getattribute__
_c_install_state = speedups.install_state
_c_mark_all_saved = speedups.mark_all_saved
_c_record_sizes = speedups.record_sizes
_c_clock_batch = speedups.clock_batch
_c_add_object_refs = speedups.add_object_refs
_c_sweep_refs = speedups.sweep_refs
_oid_of = itemgetter(0)
_data_of = itemgetter(1)
# A weak reference without a callback, not tracked by the garbage collector with C.
_new_ref: Callable[[Any], weakref.ref[Any]] = speedups.object_ref or weakref.ref

ROOT_WAIT_S = 10.0
"""How long get_root() waits for another client's commit of a new root."""

SERIALIZABLE = "serializable"
"""Isolation level: a commit fails if anything it read changed since its snapshot (CONN-043)."""
SNAPSHOT = "snapshot"
"""Isolation level: a commit fails only if something it wrote changed (ZODB's; CONN-045)."""
ISOLATION_LEVELS = (SERIALIZABLE, SNAPSHOT)

RESOLVE_ROUNDS = 3
"""How many times one commit resolves conflicts before it gives up (CONN-047)."""
T = TypeVar("T")


def _as_oid(oid: bytes | int) -> bytes:
    if isinstance(oid, int):
        return int8_to_str(oid)
    if isinstance(oid, bytes) and len(oid) == 8:
        return oid
    raise TypeError(f"an oid is an int or 8 bytes, not {oid!r}")


#: An _ObjectMap sweeps out its dead entries once it holds more than this many, and
#: then whenever it has doubled since its last sweep.
SWEEP_MIN_ENTRIES = 1024


class _ObjectMap:
    """The connection's oid -> object map: weak references, dead ones found lazily.

    Each entry is a plain weak reference, without a callback.  An entry whose
    object is gone is dropped when it is next looked up, and all of them by a
    sweep each time the map has doubled since the last one (amortized O(1)
    an insert), so ``len()`` and ``in`` see only live objects.  A weak
    reference without a callback refers to nothing the garbage collector
    follows: with dhruva.speedups the map's references are not tracked by
    it, and a cache of n objects no longer adds n objects to every full
    collection (WeakValueDictionary's references, with their callback, are
    tracked and have to be).
    """

    __slots__ = ("_sweep_at", "data")

    def __init__(self) -> None:
        self.data: dict[bytes, weakref.ref[PersistentBase]] = {}
        self._sweep_at = SWEEP_MIN_ENTRIES

    def get(self, oid: bytes, default: PersistentBase | None = None) -> PersistentBase | None:
        ref = self.data.get(oid)
        if ref is not None:
            obj = ref()
            if obj is not None:
                return obj
            del self.data[oid]
        return default

    def __getitem__(self, oid: bytes) -> PersistentBase:
        obj = self.get(oid)
        if obj is None:
            raise KeyError(oid)
        return obj

    def __contains__(self, oid: object) -> bool:
        return type(oid) is bytes and self.get(oid) is not None

    def __setitem__(self, oid: bytes, obj: PersistentBase) -> None:
        data = self.data
        data[oid] = _new_ref(obj)
        if len(data) > self._sweep_at:
            self._sweep()

    def add_all(self, objects: list[PersistentBase]) -> None:
        """``self[obj._p_oid] = obj`` for each of ``objects`` (a commit's new objects)."""
        data = self.data
        if _c_add_object_refs is not None:
            _c_add_object_refs(data, objects)  # the loop below, in C
        else:
            for obj in objects:
                data[_getattribute(obj, "_p_oid")] = _new_ref(obj)
        if len(data) > self._sweep_at:
            self._sweep()

    def pop(self, oid: bytes, default: PersistentBase | None = None) -> PersistentBase | None:
        ref = self.data.pop(oid, None)
        obj = None if ref is None else ref()
        return default if obj is None else obj

    def __len__(self) -> int:
        self._sweep()
        return len(self.data)

    def _sweep(self) -> None:
        data = self.data
        if _c_sweep_refs is not None:
            _c_sweep_refs(data)  # the loop below, in C
        else:
            for oid in [oid for oid, ref in data.items() if ref() is None]:
                del data[oid]
        self._sweep_at = max(2 * len(data), SWEEP_MIN_ENTRIES)


class Connection:
    """A view of one storage as a graph of persistent objects (Durus's API).

    ``storage`` is a Storage, or a path string, which opens a FileStorage.
    ``cache_size`` is the number of loaded (non-ghost) objects the cache
    aims to keep between transactions; ``cache_bytes``, if given, also bounds
    the total record size of the loaded objects (CONN-022).  ``root_class`` is the class of the
    root object created in an empty database (PersistentDict by default).

    ``serializer`` writes every record this connection commits: a name
    (``"pickle"``, ``"pickle-restricted"``, ``"msgspec"``, ``"dill"``) or a
    Serializer object.  By default it is the serializer that wrote the root
    record, so a database keeps the serializer it was created with, and
    pickle for a new database (spec OBJ-023).  Records of every serializer
    are read whatever this choice.  ``allowed_classes`` (a ClassRegistry, or
    classes, modules and dotted names) restricts reading: a record naming
    anything else raises ForbiddenClassError before any of it runs
    (OBJ-020); ``"pickle-restricted"`` implies it.  ``class_map`` maps the
    old import paths of renamed or moved classes to the classes (or new
    paths) to load them as (OBJ-050); a record naming a class that cannot be
    found raises MissingClassError naming it.

    ``isolation`` is ``"serializable"`` (the default: a commit fails when
    anything the transaction read or wrote was changed by a commit after
    its snapshot) or ``"snapshot"`` (only what it wrote; ZODB's behaviour);
    see :meth:`set_isolation` and spec/connection.md, "Isolation".

    A Connection is not thread-safe: use one per thread.
    """

    def __init__(
        self,
        storage: Storage | str,
        cache_size: int = 100000,
        root_class: type[PersistentBase] | None = None,
        *,
        serializer: str | Serializer | None = None,
        allowed_classes: ClassRegistry | list[AllowEntry] | None = None,
        class_map: Mapping[str, type | str] | None = None,
        cache_bytes: int | None = None,
        isolation: str = SERIALIZABLE,
    ) -> None:
        opened_here = isinstance(storage, str)
        if isinstance(storage, str):
            from dhruva.file_storage import FileStorage

            storage = FileStorage(storage)
        if not isinstance(storage, Storage):
            raise TypeError(f"storage must be a Storage or a path, not {type(storage).__name__}")
        try:
            self._setup(
                storage,
                cache_size,
                root_class,
                serializer,
                allowed_classes,
                class_map,
                cache_bytes,
                isolation,
            )
        except BaseException:
            if opened_here:
                # A storage this constructor opened must not stay open (and
                # locked) behind a failed construction.
                storage.close()
            raise

    def _setup(
        self,
        storage: Storage,
        cache_size: int,
        root_class: type[PersistentBase] | None,
        serializer: str | Serializer | None,
        allowed_classes: ClassRegistry | list[AllowEntry] | None,
        class_map: Mapping[str, type | str] | None,
        cache_bytes: int | None,
        isolation: str,
    ) -> None:
        self._storage = storage
        # [CONN-040] Loads read the storage's read point, moved at boundaries only.
        self._snapshots = CAP_SNAPSHOTS in storage.capabilities
        # Only a snapshot storage with other writers checks reads (SAPI-095, CONN-046).
        self._checks_reads = self._snapshots and type(storage).note_reads is not Storage.note_reads
        # The objects this transaction used (CONN-042), in the order of first use.
        self._reads: list[PersistentBase] = []
        # Oids a savepoint gave to new objects: no committed record yet (CONN-052).
        self._savepoint_new: set[bytes] = set()
        # Called on the first change of a transaction (the transaction package's join).
        self._on_first_change: Callable[[], None] | None = None
        # The tid this transaction reads (CONN-040), where snapshots exist.
        self._snapshot_tid = storage.last_tid() if self._snapshots else 0
        self._refresh_pending = False
        self._isolation = SERIALIZABLE
        self._track_reads = False
        self._arm_all = False
        self.set_isolation(isolation)
        # The tracked class calls this on every first use: the list's own
        # append, so that no Python frame runs (the method below documents it).
        self.note_read = self._reads.append  # type: ignore[method-assign,assignment]
        self._objects = _ObjectMap()
        self._loaded: dict[bytes, PersistentBase] = {}
        # The record sizes of the loaded objects, for the byte bound of the
        # cache; each object keeps its own in ``_p_size`` (0 when not counted).
        self._loaded_bytes = 0
        self._cache_bytes: int | None = None
        self.set_cache_bytes(cache_bytes)
        self._changed: dict[bytes, PersistentBase] = {}
        self._cache_size = 0
        self.set_cache_size(cache_size)
        self._load_count = 0
        self._loads_at_start = 0
        self._conflicts: set[bytes] = set()
        self._transaction_serial = 1
        self._closed = False
        try:
            root_data: bytes | None = storage.load(ROOT_OID).data
        except DhruvaKeyError:
            root_data = None
        self._serializer = select_serializer(serializer, root_data)
        registry = reading_registry(self._serializer, allowed_classes)
        self._reader = ObjectReader(
            self.get_ghost,
            registry=registry,
            class_map=ClassMap(class_map) if class_map else None,
        )
        self._state_readers = self._reader.state_readers
        self._new_oid_source = self._oid_source()
        # The writer of every commit, restarted for each (one per connection:
        # building one per commit was a tenth of a one-object commit).
        self._writer = ObjectWriter(self, self._serializer, self._new_oid_source)
        self._root_class = root_class
        self._root_pending = False
        self._ensure_root(root_class, root_data is not None)

    # -- the root --------------------------------------------------------------------

    def _ensure_root(self, root_class: type[PersistentBase] | None, root_exists: bool) -> None:
        if root_class is None:
            from dhruva.persistent_dict import PersistentDict

            root_class = PersistentDict
        if not (isinstance(root_class, type) and issubclass(root_class, PersistentBase)):
            raise InvalidObjectReference(
                f"root_class must be a persistent class, not {root_class!r}"
            )
        if root_exists or getattr(self._storage, "readonly", False):
            return
        oid = self._storage.new_oid()
        if oid != ROOT_OID:
            # Another client was given oid 0 first (client storages): it is
            # creating the root, and get_root() waits for its commit.
            self._root_pending = True
            return
        root = root_class()
        _setattr(root, "_p_oid", ROOT_OID)
        _setattr(root, "_p_connection", self)
        _setattr(root, "_p_status", UNSAVED)
        self._objects[ROOT_OID] = root
        self._changed[ROOT_OID] = root
        self.commit()

    def get_root(self) -> Any:
        """Return the root object (oid 0).

        When another client of a shared storage is creating the root, wait up
        to ``ROOT_WAIT_S`` for its commit (CONN-017).
        """
        root = self.get(ROOT_OID)
        if root is None and self._root_pending:
            deadline = time.monotonic() + ROOT_WAIT_S
            while root is None and time.monotonic() < deadline:
                time.sleep(0.01)
                self._storage.sync()
                root = self.get(ROOT_OID)
        if root is None:
            raise DhruvaKeyError(ROOT_OID, "this database has no root object yet")
        self._root_pending = False
        return root

    # Durus exposes these three as plain attributes (CONN-031).  Here they are
    # read-only properties over the connection's own state, so that code
    # written for Durus reads them unchanged and cannot rebind them.

    @property
    def root(self) -> Any:
        """The root object: Durus's attribute for :meth:`get_root`."""
        return self.get_root()

    @property
    def storage(self) -> Storage:
        """The storage this connection uses: Durus's attribute for :meth:`get_storage`."""
        return self._storage

    @property
    def changed(self) -> Mapping[bytes, PersistentBase]:
        """The objects changed since the last commit or abort, by oid (Durus's attribute).

        A live read-only view: it follows the connection's state.
        """
        return MappingProxyType(self._changed)

    # -- loading ---------------------------------------------------------------------

    def get(self, oid: bytes | int) -> Any:
        """Return the object with ``oid`` (bytes or int), or None if none is stored."""
        oid = _as_oid(oid)
        obj = self._objects.get(oid)
        if obj is not None:
            return obj
        if self._refresh_pending:
            self._refresh_snapshot()
        try:
            record = self._load_record(oid)
        except DhruvaKeyError:
            return None
        data = record.data
        # One decoder pass gives the class and the state.  A reference in
        # the state back to this oid made its ghost meanwhile, and get_ghost
        # returns that one, so the cycle keeps its identity.
        try:
            cls, state = self._reader.get_class_and_state(data)
            cls = check_record_class(cls)
        except SerializationError as exc:
            exc.add_note(f"while loading the object with oid {str_to_int8(oid)}")
            raise
        obj = self.get_ghost(oid, cls)
        self._set_state(obj, oid, data, state)
        return obj

    def __getitem__(self, oid: bytes | int) -> Any:
        obj = self.get(oid)
        if obj is None:
            raise DhruvaKeyError(_as_oid(oid))
        return obj

    def get_ghost(self, oid: bytes, cls: type) -> PersistentBase:
        """Return the cached object for ``oid``, or a new ghost of ``cls``."""
        obj = self._objects.get(oid)
        if obj is None:
            real: type[PersistentBase] = cls._p_class  # type: ignore[attr-defined]
            obj = real.__new__(real)
            _setattr(obj, "_p_oid", oid)
            _setattr(obj, "_p_connection", self)
            _setattr(obj, "_p_status", GHOST)
            _setattr(obj, "__class__", real._p_ghost_class)
            self._objects[oid] = obj
        return obj

    def load_state(self, obj: PersistentBase) -> None:
        """Load the committed state of the ghost ``obj`` (called on first access)."""
        # The hot path of every cold read: slots are read without the ghost
        # class's __getattribute__, and a snapshot storage is asked directly.
        oid = _getattribute(obj, "_p_oid")
        if self._refresh_pending:
            self._refresh_snapshot()
        # [CONN-040] A snapshot storage answers as of the snapshot: no read conflict.
        if self._snapshots:
            record = self._storage.load(oid)
        else:
            # _load_record, inline: one Python call less on every cold read.
            try:
                record = self._storage.load(oid)
            except ReadConflictError as error:
                record = self._after_read_conflict(oid, error)
        data = record.data
        try:
            # The reference list lets a record that references nothing be
            # read without a Python-level unpickler (OBJ-009).  The reader's
            # state reader for the record's code, as get_state finds it.
            try:
                state = self._state_readers[data[0]](data, record.refs)
            except (KeyError, IndexError):
                state = self._reader.get_state(data, record.refs)
        except SerializationError as exc:
            exc.add_note(f"while loading the object with oid {str_to_int8(oid)}")
            raise
        if _c_install_state is None:
            self._set_state(obj, oid, data, state)
            return
        # _set_state's steps, the state installed by one C call (dhruva.speedups).
        size = len(data)
        try:
            previous = _c_install_state(obj, state, self._transaction_serial, size)
        except BaseException:
            obj._p_set_status_ghost()
            raise
        self._loaded[oid] = obj
        self._reads.append(obj)
        self._loaded_bytes += size - previous
        self._load_count += 1

    def _refresh_snapshot(self) -> None:
        """Move the snapshot to the latest commit at a transaction's first load (CONN-040).

        Only when the transaction has used no object yet: nothing it saw can
        then be older than the new snapshot.  Reads must be tracked for that
        to be known, so this runs only where they are (CONN-046).
        """
        self._refresh_pending = False
        if self._reads or self._changed:
            return
        self._sync()
        self._snapshot_tid = self._storage.last_tid()

    def _load_record(self, oid: bytes) -> Record:
        """Load ``oid``'s record, resolving a read conflict when it is safe to.

        A client storage raises ReadConflictError when another client changed
        ``oid`` since this connection last synchronized.  [CONN-015] If this
        transaction has not yet read or changed anything that could be stale,
        the connection synchronizes and loads again; otherwise the conflict is
        raised, because the transaction may already have seen older versions
        of other objects.  dhruva keeps no per-read hook on loaded objects, so
        every loaded object that was invalidated counts as possibly read.
        """
        if self._snapshots:
            # [CONN-040] The storage answers as of the snapshot; no read conflict.
            return self._storage.load(oid)
        try:
            return self._storage.load(oid)
        except ReadConflictError as error:
            return self._after_read_conflict(oid, error)

    def _after_read_conflict(self, oid: bytes, error: ReadConflictError) -> Record:
        """Synchronize after ``error``; load ``oid`` again, or raise ``error`` (CONN-015)."""
        conflict = bool(self._changed) or self._load_count != self._loads_at_start
        for other in self._storage.sync():
            obj = self._objects.get(other)
            if obj is None or obj._p_status == GHOST:
                continue
            conflict = True
            if other in self._changed:
                # The change was made on a stale state; commit must refuse it.
                self._conflicts.add(other)
            else:
                self._ghostify(obj)
        if conflict:
            raise error
        return self._storage.load(oid)

    def _install_state(self, obj: PersistentBase, data: bytes, oid: bytes | None = None) -> None:
        """Decode ``data`` and make it the state of the ghost ``obj`` (of oid ``oid``)."""
        # The class was fixed when the ghost was made; only the state is
        # decoded (one unpickler pass over the state pickle).
        if oid is None:
            oid = _getattribute(obj, "_p_oid")
            assert oid is not None
        try:
            state = self._reader.get_state(data)
        except SerializationError as exc:
            exc.add_note(f"while loading the object with oid {str_to_int8(oid)}")
            raise
        self._set_state(obj, oid, data, state)

    def _set_state(self, obj: PersistentBase, oid: bytes, data: bytes, state: Any) -> None:
        """Install the decoded ``state`` of record ``data`` in the ghost ``obj``; note the load."""
        _setattr(obj, "__class__", type(obj)._p_class)
        try:
            obj.__setstate__(state)
        except BaseException:
            obj._p_set_status_ghost()
            raise
        _setattr(obj, "_p_status", SAVED)
        _setattr(obj, "_p_serial", self._transaction_serial)
        size = len(data)
        previous = _getattribute(obj, "_p_size")
        _setattr(obj, "_p_size", size)
        self._loaded[oid] = obj
        self._reads.append(obj)
        self._loaded_bytes += size - previous
        self._load_count += 1

    def note_change(self, obj: PersistentBase) -> None:
        """Record that ``obj`` changed (called by ``_p_note_change``)."""
        oid = obj._p_oid
        assert oid is not None
        if not self._changed and self._on_first_change is not None:
            self._on_first_change()
        self._changed[oid] = obj

    def note_read(self, obj: PersistentBase) -> None:
        """Record that this transaction used ``obj``'s state (called on its first use)."""
        self._reads.append(obj)

    # -- isolation -------------------------------------------------------------------

    def get_isolation(self) -> str:
        """Return the isolation level: ``"serializable"`` or ``"snapshot"``."""
        return self._isolation

    def set_isolation(self, level: str) -> None:
        """Set the isolation level of this connection's commits (CONN-045).

        ``"serializable"``: a commit fails with ReadConflictError when an object
        the transaction read was changed after its snapshot, and with
        WriteConflictError when one it changed was.  ``"snapshot"``: only the
        second; two transactions that each read what the other writes may
        then both commit (write skew, see docs/guide/concurrency.md).  Takes
        effect from the next transaction.
        """
        if level not in ISOLATION_LEVELS:
            raise ValueError(
                f"isolation must be one of {', '.join(map(repr, ISOLATION_LEVELS))}, not {level!r}"
            )
        self._isolation = level
        # [CONN-046] Reads are tracked only where they are checked.
        track = level == SERIALIZABLE and self._checks_reads
        if track and not self._track_reads:
            # Objects used while reads were not tracked are not armed: the
            # next boundary arms every loaded object once.
            self._arm_all = True
        self._track_reads = track

    def get_read_oids(self) -> list[bytes]:
        """Return the oids whose state this transaction used so far (CONN-042), once each.

        Complete when reads are tracked: serializable isolation on a storage
        with other writers (CONN-046).  Otherwise it lists the objects loaded
        in this transaction and some of the cached ones used.
        """
        seen: dict[bytes, None] = {}
        for obj in self._reads:
            oid = obj._p_oid
            if oid is not None and obj._p_connection is self:
                seen[oid] = None
        return list(seen)

    # -- transactions ----------------------------------------------------------------

    def commit(self) -> None:
        """Write every change since the last commit or abort, atomically.

        New persistent objects reachable from a changed object are stored in
        the same transaction.  Raises WriteConflictError when another client
        changed a stored object since this transaction's snapshot, and (in
        serializable isolation) ReadConflictError when it changed an object
        this transaction read; call ``abort()`` and retry (``run_transaction``
        does).  A write conflict on objects whose class defines
        ``_p_resolve_conflict`` is resolved instead (CONN-047).  Raises
        SerializationError or InvalidObjectReference when a state cannot be
        stored.  In every failing case nothing is written and the connection
        stays usable.
        """
        if self._closed:
            self._check_open()  # raises; the check inline (every commit comes here)
        if self._conflicts:
            # [CONN-016] Changes made on states another client replaced.
            raise WriteConflictError(sorted(self._conflicts))
        if not self._changed:
            # [CONN-041] A transaction that changed nothing commits nothing,
            # and cannot conflict.
            self._sync()
            self._end_transaction()
            return
        rounds = 0
        writer = self._writer
        while True:
            writer.restart()
            try:
                records = self._write(writer)
                break
            except ConflictError as conflict:
                for obj in writer.attached:
                    self._detach(obj)
                rounds += 1
                if rounds > RESOLVE_ROUNDS or not self._resolve(conflict):
                    raise
            except BaseException:
                for obj in writer.attached:
                    self._detach(obj)
                raise
        objects = self._objects
        loaded = self._loaded
        # {oid: len(data)} of each record: one C call, or C iterators (a commit of many objects).
        sizes = _c_record_sizes(records) if _c_record_sizes is not None else None
        if sizes is None:
            sizes = dict(zip(map(_oid_of, records), map(len, map(_data_of, records)), strict=True))
        serial = self._transaction_serial
        written: list[PersistentBase] = list(self._changed.values())
        attached = writer.attached
        if attached:
            objects.add_all(attached)
            written.extend(attached)
        if _c_mark_all_saved is not None:
            # The loop below, in C.
            self._loaded_bytes += _c_mark_all_saved(written, sizes, serial, loaded)
        else:
            grown = 0
            for obj in written:
                written_oid = obj._p_oid
                assert written_oid is not None
                size = sizes[written_oid]
                obj._p_set_status_saved()
                _setattr(obj, "_p_serial", serial)
                grown += size - obj._p_size
                _setattr(obj, "_p_size", size)
                loaded[written_oid] = obj
            self._loaded_bytes += grown
        if persistent.blob_classes_defined:
            for obj in written:
                if type(obj)._p_blob:
                    obj._p_drop_file()  # type: ignore[attr-defined]
        self._changed.clear()
        self._savepoint_new.clear()
        self._transaction_serial += 1
        self._sync()
        self._end_transaction(written)

    def _write(self, writer: ObjectWriter) -> list[tuple[bytes, bytes, bytes]]:
        """Serialize the changes and store them in one storage transaction."""
        records = writer.records(list(self._changed.values()))
        blobs = self._blobs_to_store(writer) if persistent.blob_classes_defined else ()
        storage = self._storage
        storage.begin()
        try:
            storage.store_many(records)
            for oid, path in blobs:
                # [BLOB-010] The content streams from the temporary file.
                with open(path, "rb") as file:
                    storage.store_blob(oid, file)
            if self._checks_reads and self._isolation == SERIALIZABLE:
                # [CONN-043] The read set goes with the commit; the storage
                # refuses it if another writer changed one since the snapshot.
                reads = [oid for oid in self.get_read_oids() if oid not in self._changed]
                if reads:
                    storage.note_reads(reads)
            try:
                storage.end()
            except ReadConflictError as conflict:
                if isinstance(conflict, (WriteConflictError, SnapshotTooOldError)):
                    raise
                # [CONN-043] A stale read found at commit: both kinds, as Durus.
                raise SerializationConflictError(conflict.oids) from conflict
        except BaseException:
            storage.abort_transaction()
            raise
        return records

    def _blobs_to_store(self, writer: ObjectWriter) -> list[tuple[bytes, str]]:
        """Return (oid, temporary file) of every written Blob with new content.

        ``_write`` calls it only once a class of blobs exists
        (``persistent.blob_classes_defined``): until then none is written.
        """
        blobs: list[tuple[bytes, str]] = []
        for obj in (*self._changed.values(), *writer.attached):
            if type(obj)._p_blob:
                path = obj._p_blob_pending()  # type: ignore[attr-defined]
                if path is not None:
                    assert obj._p_oid is not None
                    blobs.append((obj._p_oid, path))
        if blobs and CAP_BLOBS not in self._storage.capabilities:
            # [BLOB-005] Refused before anything is written.
            raise DhruvaError(
                f"{type(self._storage).__name__} does not store blobs; use a storage "
                "with the capability 'blobs' (FileStorage, FileStorage2, SqliteStorage, "
                "PostgresStorage, MemoryStorage, or a server of one)"
            )
        return blobs

    def open_blob(self, blob: PersistentBase) -> BinaryIO:
        """Return a stream of ``blob``'s committed content as of this transaction's snapshot."""
        self._check_open()
        oid = blob._p_oid
        assert oid is not None
        try:
            return self._storage.open_blob(oid)
        except DhruvaKeyError:
            # A Blob committed with no content written has none stored.
            return io.BytesIO(b"")

    def _resolve(self, conflict: ConflictError) -> bool:
        """Resolve a write conflict with ``_p_resolve_conflict``; False if it cannot be.

        [CONN-047] Every conflicting oid must be one this transaction changed,
        of a class that defines ``_p_resolve_conflict``, and nothing else the
        transaction read or wrote may have changed since its snapshot.  Then
        each object's state becomes ``_p_resolve_conflict(old, committed,
        mine)``, the snapshot moves to the latest commit, and the caller
        commits again.  When it cannot be resolved, the synchronization that
        found it out (if any) has ghosted the objects it invalidated, and the
        conflict stands until ``abort()``.
        """
        if not self._snapshots or not isinstance(conflict, WriteConflictError):
            return False
        oids = list(dict.fromkeys(conflict.oids))
        targets: list[PersistentBase] = []
        for oid in oids:
            obj = self._changed.get(oid)
            if obj is None or getattr(type(obj), "_p_resolve_conflict", None) is None:
                return False
            targets.append(obj)
        if not targets:
            return False
        storage = self._storage
        # The versions the transaction started from: read at its snapshot
        # explicitly, wherever the failed commit left the read point.
        try:
            olds = [self._state_of(storage.load_at(oid, self._snapshot_tid)) for oid in oids]
        except SnapshotTooOldError:
            return False
        invalid = storage.sync()
        resolving = set(oids)
        used = set(self._changed)
        if self._isolation == SERIALIZABLE:
            used.update(self.get_read_oids())
        stale = sorted(oid for oid in invalid if oid in used and oid not in resolving)
        for oid in invalid:
            obj = self._objects.get(oid)
            if obj is None or obj._p_status == GHOST or oid in resolving:
                continue
            if oid in self._changed:
                self._conflicts.add(oid)
            else:
                self._ghostify(obj)
        if stale:
            if any(oid in self._changed for oid in stale):
                raise WriteConflictError(stale) from conflict
            raise ReadConflictError(stale) from conflict
        for obj, oid, old in zip(targets, oids, olds, strict=True):
            committed = self._state_of(storage.load(oid))
            mine = obj.__getstate__()
            try:
                resolved = obj._p_resolve_conflict(old, committed, mine)  # type: ignore[attr-defined]
            except ConflictError:
                # The class says these changes cannot be merged.
                self._conflicts.add(oid)
                return False
            obj.__setstate__(resolved)
            _setattr(obj, "_p_status", UNSAVED)
        return True

    def _state_of(self, record: Record) -> Any:
        """Return the state a record holds (references as this connection's objects)."""
        try:
            return self._reader.get_class_and_state(record.data)[1]
        except SerializationError as exc:
            exc.add_note(
                f"while resolving a conflict on the object with oid {str_to_int8(record.oid)}"
            )
            raise

    def run_transaction(self, work: Callable[[Connection], T], *, attempts: int = 10) -> T:
        """Run ``work(self)`` and commit, aborting and retrying after conflicts.

        See :func:`dhruva.retry.run_transaction` (spec CONN-030).
        """
        from dhruva.retry import run_transaction

        return run_transaction(self, work, attempts=attempts)

    def _detach(self, obj: PersistentBase) -> None:
        _setattr(obj, "_p_oid", None)
        _setattr(obj, "_p_connection", None)
        _setattr(obj, "_p_status", UNSAVED)

    def abort(self) -> None:
        """Drop every change since the last commit; changed objects reload on next use."""
        self._check_open()
        for oid, obj in self._changed.items():
            if oid in self._savepoint_new:
                # [CONN-052] A new object a savepoint attached has no record to reload.
                self._objects.pop(oid, None)
                self._detach(obj)
            else:
                self._ghostify(obj)
        self._changed.clear()
        self._savepoint_new.clear()
        self._conflicts.clear()
        self._storage.abort_transaction()
        self._transaction_serial += 1
        self._sync()
        self._end_transaction()

    def _end_transaction(self, written: list[PersistentBase] | None = None) -> None:
        """Re-arm the objects the transaction used and shrink the cache (CONN-042, CONN-020).

        When reads are tracked, each object the transaction read that is
        still loaded goes back into its tracked class, so that the next
        transaction sees its first use, and to the young end of ``_loaded``;
        so does each object it wrote (already at the young end).  An object
        in ``_reads`` twice, or no longer in its real class (a ghost, already
        tracked), is skipped.  When reads are not tracked, nothing is armed
        here: the cache's clock arms objects when it needs room.
        """
        if self._track_reads:
            loaded = self._loaded
            if self._arm_all:
                self._arm_all = False
                for obj in loaded.values():
                    obj._p_set_tracked()
            for obj in self._reads:
                cls = type(obj)
                if cls is not cls._p_class or obj._p_status != SAVED:
                    continue
                oid = obj._p_oid
                if loaded.pop(oid, None) is obj:  # type: ignore[arg-type]
                    loaded[oid] = obj  # type: ignore[index]
                _setattr(obj, "__class__", cls._p_tracked_class)
            if written:
                for obj in written:
                    cls = type(obj)
                    if cls is cls._p_class:
                        _setattr(obj, "__class__", cls._p_tracked_class)
        self._reads.clear()
        if self._snapshots:
            self._snapshot_tid = self._storage.last_tid()
        # The next transaction's first load may move its snapshot forward.
        self._refresh_pending = self._track_reads
        self.shrink_cache()
        self._loads_at_start = self._load_count

    def savepoint(self) -> Savepoint:
        """Capture this transaction's changes so far, to roll back to later (CONN-051).

        The changed objects are serialized now, as a commit would (new
        objects they reach are given oids); ``rollback()`` of the result puts
        every changed object back as it was here and reverts the objects
        changed since to their committed state.  The captured records stay
        in memory until the transaction ends.
        """
        self._check_open()
        if any(
            type(obj)._p_blob and obj._p_blob_pending() is not None  # type: ignore[attr-defined]
            for obj in self._changed.values()
        ):
            raise DhruvaError(
                "a savepoint cannot capture blob content written in this transaction; "
                "commit the blob first or take the savepoint before writing it"
            )
        writer = ObjectWriter(self, self._serializer, self._new_oid_source)
        try:
            records = writer.records(list(self._changed.values()))
        except BaseException:
            for obj in writer.attached:
                self._detach(obj)
            raise
        for obj in writer.attached:
            oid = obj._p_oid
            assert oid is not None
            self._objects[oid] = obj
            self._changed[oid] = obj
            self._savepoint_new.add(oid)
        return Savepoint(self, {oid: data for oid, data, _refs in records})

    def _rollback(self, savepoint: Savepoint) -> None:
        if savepoint.serial != self._transaction_serial:
            raise DhruvaError("this savepoint belongs to a transaction that has ended")
        states = savepoint.states
        for oid, obj in list(self._changed.items()):
            data = states.get(oid)
            if data is not None:
                state = self._reader.get_class_and_state(data)[1]
                obj.__setstate__(state)
                _setattr(obj, "_p_status", UNSAVED)
                continue
            # Changed after the savepoint: back to the committed state.
            del self._changed[oid]
            if oid in self._savepoint_new:
                self._savepoint_new.discard(oid)
                self._objects.pop(oid, None)
                self._detach(obj)
            else:
                self._ghostify(obj)

    def _ghostify(self, obj: PersistentBase) -> None:
        oid = obj._p_oid
        obj._p_set_status_ghost()
        if oid is not None:
            self._loaded.pop(oid, None)
        self._loaded_bytes -= obj._p_size
        _setattr(obj, "_p_size", 0)

    def _sync(self) -> None:
        invalid = self._storage.sync()
        for oid in invalid:
            obj = self._objects.get(oid)
            if obj is not None and obj._p_status != GHOST:
                self._changed.pop(oid, None)
                self._ghostify(obj)

    # -- cache -----------------------------------------------------------------------

    def get_cache_count(self) -> int:
        """Return the number of objects in the cache, ghosts included."""
        return len(self._objects)

    def get_cache_size(self) -> int:
        """Return the target number of loaded objects."""
        return self._cache_size

    def set_cache_size(self, size: int) -> None:
        """Set the target number of loaded (non-ghost) objects kept between transactions."""
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"cache size must be a non-negative int, not {size!r}")
        self._cache_size = size

    def get_cache_bytes(self) -> int | None:
        """Return the bound on the loaded objects' total record bytes, or None."""
        return self._cache_bytes

    def set_cache_bytes(self, size_bytes: int | None) -> None:
        """Bound the total record bytes of loaded objects kept between transactions.

        None (the default) leaves only the count bound of ``cache_size``.
        """
        if size_bytes is not None and (not isinstance(size_bytes, int) or size_bytes < 0):
            raise ValueError(f"cache bytes must be a non-negative int or None, not {size_bytes!r}")
        self._cache_bytes = size_bytes

    def get_loaded_bytes(self) -> int:
        """Return the total record bytes of the objects loaded now."""
        return self._loaded_bytes

    def get_load_count(self) -> int:
        """Return how many object states this connection has loaded from storage."""
        return self._load_count

    def _over_limit(self) -> bool:
        if len(self._loaded) > self._cache_size:
            return True
        cache_bytes = self._cache_bytes
        return cache_bytes is not None and self._loaded_bytes > cache_bytes

    def shrink_cache(self) -> None:
        """Ghost least recently used objects until the cache is within its bounds.

        The bounds are ``cache_size`` objects and, if set, ``cache_bytes``
        bytes of records (CONN-020, CONN-022).  Changed objects are never
        ghosted.
        """
        cache_bytes = self._cache_bytes
        if len(self._loaded) <= self._cache_size and (
            cache_bytes is None or self._loaded_bytes <= cache_bytes
        ):
            return  # within bounds: _over_limit, inline (every commit comes here)
        loaded = self._loaded
        changed = self._changed
        # A clock with a second chance, at most two passes of the hand: an
        # object still tracked was not used since it was armed and goes; one
        # in its real class is armed and moves to the young end, and so does
        # one that cannot go now (changed, or not saved).  With reads tracked
        # every object is armed at each boundary, so this is LRU by
        # transaction.  The hand takes the oldest entries in batches a little
        # larger than the excess, so a commit that adds a few objects to a
        # full cache costs in proportion to them, not to the cache.
        budget = 2 * len(loaded)
        while budget > 0:
            batch = list(islice(loaded.items(), max(len(loaded) - self._cache_size, 0) + 64))
            if not batch:
                return
            if _c_clock_batch is not None:
                # The same steps in C (the arming pass of a cache that
                # filled up touches every object once); None: not done.
                cache_bytes = self._cache_bytes
                done = _c_clock_batch(
                    batch,
                    loaded,
                    changed,
                    self._cache_size,
                    -1 if cache_bytes is None else cache_bytes,
                    self._loaded_bytes,
                    budget,
                )
                if done is not None:
                    self._loaded_bytes, budget, within = done
                    if within:
                        return
                    continue
            for oid, obj in batch:
                if budget <= 0 or not self._over_limit():
                    return
                budget -= 1
                if oid not in changed and obj._p_status == SAVED and obj._p_is_tracked():
                    obj._p_set_status_ghost()
                    del loaded[oid]
                    self._loaded_bytes -= obj._p_size
                    _setattr(obj, "_p_size", 0)
                    continue
                if oid not in changed and obj._p_status == SAVED:
                    obj._p_set_tracked()
                del loaded[oid]
                loaded[oid] = obj

    # -- misc ------------------------------------------------------------------------

    def new_oid(self) -> bytes:
        """Return a new oid from the storage."""
        return self._storage.new_oid()

    def _oid_source(self) -> Callable[[], bytes]:
        """The new-oid call of a commit's writer: the storage's, unless new_oid is overridden."""
        if type(self).new_oid is Connection.new_oid:
            return self._storage.new_oid
        return self.new_oid

    def get_serializer(self) -> Serializer:
        """Return the serializer this connection writes records with."""
        return self._serializer

    def get_storage(self) -> Storage:
        """Return the storage this connection uses."""
        return self._storage

    def pack(self) -> None:
        """Remove unreachable objects and old revisions from the storage."""
        self._check_open()
        self._storage.pack()

    def get_transaction_serial(self) -> int:
        """Return the number of the current transaction (it grows at every commit and abort)."""
        return self._transaction_serial

    @property
    def transaction_serial(self) -> int:
        """Durus's attribute for :meth:`get_transaction_serial` (read-only here)."""
        return self._transaction_serial

    def get_crawler(self, start_oid: bytes = ROOT_OID, batch_size: int = 100) -> Iterator[Any]:
        """Yield every object reachable from ``start_oid`` (loading each)."""
        for oid, _record in self._storage.gen_oid_record(start_oid, batch_size):
            yield self.get(oid)

    def _check_open(self) -> None:
        if self._closed:
            raise DhruvaError("this connection is closed")

    def close(self) -> None:
        """Drop uncommitted changes and close the storage.  Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._changed.clear()
        self._loaded.clear()
        self._loaded_bytes = 0
        self._storage.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


if speedups.configure_connection is not None:
    # The C ghost hook then loads a Connection's ghost with load_state's own
    # steps in C, while Connection.load_state is this very function; a
    # subclass, or a load_state replaced, is called as a method.
    speedups.configure_connection(
        Connection, Connection.load_state, ReadConflictError, SerializationError
    )


def touch_every_reference(connection: Connection, *words: str | bytes) -> None:
    """Mark changed every stored object whose record data contains one of ``words``.

    Durus's tool for renamed or moved classes (CONN-032): after mapping the
    old name (``Connection(..., class_map=...)``), touching the objects whose
    records name it and committing rewrites them under the new name.  Words
    are matched as bytes (str words as UTF-8) in the whole record data, class
    and state; the walk loads only the matching objects.
    """
    patterns = [word.encode("utf-8") if isinstance(word, str) else bytes(word) for word in words]
    for oid, record in connection.get_storage().gen_oid_record():
        data = record.data
        if any(pattern in data for pattern in patterns):
            obj = connection.get(oid)
            if obj is not None:
                obj._p_note_change()


def gen_every_instance(connection: Connection, *classes: type) -> Iterator[Any]:
    """Yield every stored object that is an instance of one of ``classes`` (Durus's helper).

    Every object is loaded to be tested, as in Durus.
    """
    for oid, _record in connection.get_storage().gen_oid_record():
        obj = connection.get(oid)
        if isinstance(obj, classes):
            yield obj


class Savepoint:
    """A point in a transaction to roll back to (``Connection.savepoint()``, CONN-051)."""

    def __init__(self, connection: Connection, states: dict[bytes, bytes]) -> None:
        self.connection = connection
        self.states = states
        self.serial = connection.get_transaction_serial()

    def rollback(self) -> None:
        """Put the changed objects back as they were at this savepoint.

        Raises DhruvaError when the transaction it belongs to has ended.  A
        savepoint can be rolled back to more than once.
        """
        self.connection._rollback(self)
