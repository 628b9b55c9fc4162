"""Unit tests of the Connection and the pickle object encoding (spec: connection.md,
object-encoding.md, data-model.md)."""

from __future__ import annotations

import gc
import pickle
from typing import Any

import pytest

from dhruva.connection import Connection
from dhruva.error import (
    DhruvaError,
    DhruvaKeyError,
    FormatError,
    InvalidObjectReference,
    ReadConflictError,
    SerializationError,
    WriteConflictError,
)
from dhruva.persistent import GHOST, SAVED, UNSAVED, Persistent, PersistentObject
from dhruva.serialize import PICKLE_CODE, ObjectReader
from dhruva.storage import MemoryStorage
from dhruva.utils import ROOT_OID, int8_to_str, split_oids, str_to_int8


class Root(Persistent):
    pass


class Item(Persistent):
    def __init__(self, n: int = 0) -> None:
        self.n = n


class Slotted(PersistentObject):
    __slots__ = ("a", "b")


def connect(storage: MemoryStorage | None = None, **kwargs: Any) -> Connection:
    if storage is None:
        storage = MemoryStorage()
    return Connection(storage, root_class=Root, **kwargs)


@pytest.mark.req("DM-001")
def test_oids_are_eight_byte_big_endian() -> None:
    assert int8_to_str(1) == b"\x00" * 7 + b"\x01"
    assert str_to_int8(int8_to_str(2**64 - 1)) == 2**64 - 1
    assert sorted([int8_to_str(300), int8_to_str(2)]) == [int8_to_str(2), int8_to_str(300)]
    with pytest.raises(ValueError):
        split_oids(b"123")


@pytest.mark.req("DM-002", "CONN-014")
def test_new_database_gets_a_root_of_root_class() -> None:
    storage = MemoryStorage()
    connection = connect(storage)
    root = connection.get_root()
    assert isinstance(root, Root)
    assert root._p_oid == ROOT_OID
    assert storage.load(ROOT_OID).oid == ROOT_OID


@pytest.mark.req("CONN-014")
def test_root_class_must_be_persistent() -> None:
    with pytest.raises(InvalidObjectReference, match="persistent class"):
        Connection(MemoryStorage(), root_class=dict)  # type: ignore[arg-type]


@pytest.mark.req("CONN-010", "OBJ-006", "OBJ-005")
def test_commit_stores_new_reachable_objects_in_the_same_transaction() -> None:
    storage = MemoryStorage()
    connection = connect(storage)
    root = connection.get_root()
    first, second = Item(1), Item(2)
    first.other = second
    root.items = [first, first]
    connection.commit()
    assert first._p_oid is not None and second._p_oid is not None
    assert first._p_status == SAVED
    root_record = storage.load(ROOT_OID)
    # The list holds the same object twice; the reference list names it once.
    assert split_oids(root_record.refs) == [first._p_oid]
    assert split_oids(storage.load(first._p_oid).refs) == [second._p_oid]
    other = connect(storage)
    items = other.get_root().items
    assert items[0] is items[1]
    assert items[0].other.n == 2


@pytest.mark.req("CONN-011")
def test_abort_reverts_attributes_and_new_attributes() -> None:
    connection = connect()
    root = connection.get_root()
    root.value = 1
    root.item = Item(5)
    connection.commit()
    root.value = 2
    root.extra = "x"
    root.item.n = 6
    del root.item
    connection.abort()
    assert root.value == 1
    assert not hasattr(root, "extra")
    assert root.item.n == 5


@pytest.mark.req("CONN-001", "CONN-021")
def test_ghosts_load_lazily_and_identity_is_kept() -> None:
    storage = MemoryStorage()
    writer = connect(storage)
    writer.get_root().items = [Item(i) for i in range(10)]
    writer.commit()
    reader = connect(storage)
    items = reader.get_root().items
    loads = reader.get_load_count()
    ghost = items[3]
    assert ghost._p_status == GHOST
    assert ghost._p_oid is not None  # _p_ attributes do not load
    assert reader.get_load_count() == loads
    assert ghost.n == 3
    assert reader.get_load_count() == loads + 1
    assert ghost._p_status == SAVED
    assert reader.get(ghost._p_oid) is ghost
    assert reader.get(str_to_int8(ghost._p_oid)) is ghost
    assert reader.get(10**6) is None
    with pytest.raises(DhruvaKeyError):
        reader[10**6]


@pytest.mark.req("CONN-002")
def test_assignment_to_a_ghost_loads_it_first_and_keeps_other_attributes() -> None:
    storage = MemoryStorage()
    writer = connect(storage)
    root = writer.get_root()
    root.item = Item(1)
    root.item.label = "kept"
    writer.commit()
    reader = connect(storage)
    ghost = reader.get_root().item
    assert ghost._p_status == GHOST
    ghost.n = 2
    assert ghost._p_status == UNSAVED
    reader.commit()
    third = connect(storage).get_root().item
    assert (third.n, third.label) == (2, "kept")


@pytest.mark.req("CONN-003")
def test_class_swapping_is_invisible() -> None:
    storage = MemoryStorage()
    writer = connect(storage)
    writer.get_root().item = Item(1)
    writer.commit()
    reader = connect(storage)
    ghost = reader.get_root().item
    assert ghost._p_status == GHOST
    assert isinstance(ghost, Item)
    assert ghost.__class__ is Item
    assert repr(ghost).startswith("<Item ")
    assert ghost.n == 1
    assert type(ghost) is Item


@pytest.mark.req("CONN-004")
def test_persistent_objects_pickle_outside_a_database() -> None:
    connection = connect()
    root = connection.get_root()
    root.item = Item(7)
    connection.commit()
    copy = pickle.loads(pickle.dumps(root.item))
    assert copy.n == 7
    assert copy._p_oid is None and copy._p_status == UNSAVED
    plain = pickle.loads(pickle.dumps(Item(3)))
    assert plain.n == 3


@pytest.mark.req("CONN-012", "OBJ-008")
def test_unpicklable_attribute_names_class_and_attribute_and_writes_nothing() -> None:
    storage = MemoryStorage()
    connection = connect(storage)
    root = connection.get_root()
    root.value = 1
    connection.commit()
    size = storage.get_size()
    bad = Item(1)
    bad.callback = lambda: None
    root.bad = bad
    root.value = 2
    with pytest.raises(SerializationError, match=r"Item.*'callback'"):
        connection.commit()
    assert storage.get_size() == size
    assert bad._p_oid is None and bad._p_connection is None
    connection.abort()
    assert root.value == 1 and not hasattr(root, "bad")
    root.value = 3
    connection.commit()
    assert connect(storage).get_root().value == 3


@pytest.mark.req("OBJ-007", "CONN-012")
def test_object_of_another_connection_is_refused() -> None:
    one, two = connect(), connect()
    one.get_root().item = Item(1)
    one.commit()
    two.get_root().foreign = one.get_root().item
    with pytest.raises(InvalidObjectReference, match="another connection"):
        two.commit()
    two.abort()
    two.get_root().ok = Item(2)
    two.commit()


@pytest.mark.req("CONN-012")
def test_failed_storage_commit_detaches_new_objects() -> None:
    class FailingStorage(MemoryStorage):
        fail = False

        def end(self) -> None:
            if self.fail:
                raise WriteConflictError([ROOT_OID])
            super().end()

    storage = FailingStorage()
    connection = connect(storage)
    root = connection.get_root()
    item = Item(1)
    root.item = item
    storage.fail = True
    with pytest.raises(WriteConflictError):
        connection.commit()
    assert item._p_oid is None
    assert storage.get_size() == 1
    connection.abort()
    storage.fail = False
    root.item = Item(2)
    connection.commit()
    assert connect(storage).get_root().item.n == 2


class SyncingStorage(MemoryStorage):
    """A storage with "other writers" in the Durus model: no snapshots (SAPI-097)."""

    capabilities = frozenset({"pack"})

    def __init__(self) -> None:
        super().__init__()
        self.invalid: list[bytes] = []

    def sync(self) -> list[bytes]:
        invalid, self.invalid = self.invalid, []
        return invalid


@pytest.mark.req("CONN-013")
def test_commit_and_abort_ghost_objects_changed_elsewhere() -> None:
    storage = SyncingStorage()
    connection = connect(storage)
    root = connection.get_root()
    root.item = Item(1)
    connection.commit()
    item = root.item
    # Another writer changes the item behind the connection's back.
    other = connect(storage)
    other.get_root().item.n = 2
    other.commit()
    assert item.n == 1
    storage.invalid = [item._p_oid]
    connection.abort()
    assert item._p_status == GHOST
    assert item.n == 2
    storage.invalid = [item._p_oid]
    connection.commit()
    assert item._p_status == GHOST


@pytest.mark.req("CONN-020")
def test_cache_shrinks_to_cache_size_and_keeps_recently_used_objects() -> None:
    storage = MemoryStorage()
    writer = connect(storage)
    writer.get_root().items = [Item(i) for i in range(50)]
    writer.commit()
    reader = connect(storage, cache_size=10)
    items = reader.get_root().items
    assert sum(item.n for item in items) == sum(range(50))
    reader.shrink_cache()
    loaded = [item for item in items if item._p_status == SAVED]
    assert len(loaded) <= 10
    hot = items[-1]
    for _ in range(3):
        assert hot.n == 49
        reader.abort()
    assert hot._p_status == SAVED
    assert [item.n for item in items] == list(range(50))


@pytest.mark.req("CONN-020")
def test_cache_never_ghosts_changed_objects() -> None:
    storage = MemoryStorage()
    connection = connect(storage, cache_size=0)
    root = connection.get_root()
    root.items = [Item(i) for i in range(5)]
    connection.commit()
    item = root.items[0]
    item.n = 100
    connection.shrink_cache()
    assert item._p_status == UNSAVED
    connection.commit()
    assert connect(storage).get_root().items[0].n == 100


@pytest.mark.req("CONN-020")
def test_changed_objects_at_the_old_end_do_not_stop_the_cache_shrinking() -> None:
    # The clock takes the oldest entries in batches; more changed objects at
    # the old end than one batch holds must not keep it from the rest.
    storage = MemoryStorage()
    writer = connect(storage)
    writer.get_root().items = [Item(i) for i in range(600)]
    writer.commit()
    reader = connect(storage, cache_size=1000)
    items = reader.get_root().items
    assert sum(item.n for item in items) == sum(range(600))
    for item in items[:300]:
        item.n += 1000  # the oldest 300 are changed
    reader.set_cache_size(350)
    reader.shrink_cache()
    assert all(item._p_status == UNSAVED for item in items[:300])
    assert sum(1 for item in items if item._p_status == SAVED) <= 50
    reader.commit()
    assert [item.n for item in connect(storage).get_root().items][:2] == [1000, 1001]


def test_cache_drops_unreferenced_objects() -> None:
    storage = MemoryStorage()
    writer = connect(storage)
    writer.get_root().items = [Item(i) for i in range(20)]
    writer.commit()
    reader = connect(storage, cache_size=0)
    assert len(reader.get_root().items) == 20
    reader.abort()
    reader.abort()
    gc.collect()
    assert reader.get_cache_count() <= 22


def test_slotted_persistent_objects_round_trip() -> None:
    storage = MemoryStorage()
    connection = connect(storage)
    obj = Slotted()
    obj.a = [1, 2]
    connection.get_root().obj = obj
    connection.commit()
    obj.b = "b"
    connection.abort()
    assert not hasattr(obj, "b")
    assert obj.a == [1, 2]
    loaded = connect(storage).get_root().obj
    assert loaded.a == [1, 2]


@pytest.mark.req("OBJ-001")
def test_unknown_serializer_code_is_refused() -> None:
    reader = ObjectReader(lambda oid, cls: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(FormatError, match="unknown serializer code 0x5a"):
        reader.get_class(b"Zjunk")


@pytest.mark.req("OBJ-002", "OBJ-003", "OBJ-004")
def test_record_data_is_code_class_pickle_state_pickle() -> None:
    storage = MemoryStorage()
    connection = connect(storage)
    root = connection.get_root()
    root.item = Item(4)
    connection.commit()
    data = storage.load(ROOT_OID).data
    assert data[:1] == PICKLE_CODE
    found: list[Any] = []

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            found.append(pid)
            return pid

    import io

    unpickler = Unpickler(io.BytesIO(data[1:]))
    assert unpickler.load() is Root
    state = unpickler.load()
    assert found == [(root.item._p_oid, Item)]
    assert state["item"] == (root.item._p_oid, Item)


def test_closed_connection_refuses_work_and_closes_twice() -> None:
    connection = connect()
    connection.close()
    connection.close()
    with pytest.raises(DhruvaError, match="closed"):
        connection.commit()


def test_context_manager_closes_the_storage(tmp_path: Any) -> None:
    storage = MemoryStorage()
    with connect(storage) as connection:
        connection.get_root().x = 1
        connection.commit()
    with pytest.raises(DhruvaError):
        storage.load(ROOT_OID)


class ConflictingStorage(SyncingStorage):
    """A storage that refuses loads of oids in ``stale`` until the next sync."""

    def __init__(self) -> None:
        super().__init__()
        self.stale: set[bytes] = set()

    def load(self, oid: bytes) -> Any:
        if oid in self.stale:
            raise ReadConflictError([oid])
        return super().load(oid)

    def sync(self) -> list[bytes]:
        self.stale.clear()
        return super().sync()


def _two_items(storage: MemoryStorage) -> None:
    writer = connect(storage)
    root = writer.get_root()
    root.a, root.b = Item(1), Item(2)
    writer.commit()


@pytest.mark.req("CONN-015")
def test_read_conflict_is_resolved_when_the_transaction_has_read_nothing() -> None:
    storage = ConflictingStorage()
    _two_items(storage)
    reader = connect(storage)
    reader.abort()
    root_oid = ROOT_OID
    storage.stale = {root_oid}
    storage.invalid = [root_oid]
    # Nothing was read in this transaction yet: sync and load again.
    assert reader.get_root().a.n == 1


@pytest.mark.req("CONN-015")
def test_read_conflict_is_raised_after_reading_in_the_transaction() -> None:
    storage = ConflictingStorage()
    _two_items(storage)
    reader = connect(storage)
    root = reader.get_root()
    a = root.a
    assert a.n == 1  # a state loaded in this transaction
    b_oid = root.b._p_oid
    storage.stale = {b_oid}
    storage.invalid = [b_oid]
    with pytest.raises(ReadConflictError):
        root.b.n  # noqa: B018
    reader.abort()
    assert root.b.n == 2


@pytest.mark.req("CONN-016")
def test_changed_object_invalidated_at_sync_fails_the_next_commit() -> None:
    storage = ConflictingStorage()
    _two_items(storage)
    connection = connect(storage)
    root = connection.get_root()
    a = root.a
    a.n = 10
    b_oid = root.b._p_oid
    storage.stale = {b_oid}
    storage.invalid = [a._p_oid, b_oid]
    with pytest.raises(ReadConflictError):
        root.b.n  # noqa: B018
    with pytest.raises(WriteConflictError):
        connection.commit()
    connection.abort()
    assert a.n == 1
    a.n = 11
    connection.commit()
    assert connect(storage).get_root().a.n == 11


@pytest.mark.req("CONN-022")
def test_cache_bytes_bounds_loaded_record_bytes_independently_of_the_count() -> None:
    storage = MemoryStorage()
    writer = connect(storage)
    writer.get_root().items = [Item(i) for i in range(40)]
    for item in writer.get_root().items:
        item.payload = "x" * 1000
    writer.commit()
    reader = connect(storage, cache_size=1000, cache_bytes=10_000)
    items = reader.get_root().items
    assert sum(len(item.payload) for item in items) == 40_000
    assert reader.get_loaded_bytes() > 40_000
    reader.abort()
    reader.abort()
    assert reader.get_loaded_bytes() <= 10_000
    loaded = [item for item in items if item._p_status == SAVED]
    record_bytes = sum(len(storage.load(item._p_oid).data) for item in loaded)
    record_bytes += len(storage.load(ROOT_OID).data) if reader.get_root()._p_status == SAVED else 0
    assert reader.get_loaded_bytes() == record_bytes
    # Everything still reads correctly after eviction.
    assert [item.n for item in items] == list(range(40))
    with pytest.raises(ValueError):
        reader.set_cache_bytes(-1)


def test_failed_construction_closes_a_storage_it_opened(tmp_path: Any) -> None:
    path = str(tmp_path / "db.dhruva")
    with pytest.raises(InvalidObjectReference):
        Connection(path, root_class=dict)  # type: ignore[arg-type]
    # The file is not left locked: it opens again at once.
    with Connection(path) as connection:
        assert connection.get_root() == {}


@pytest.mark.req("CONN-017")
def test_get_root_waits_for_another_client_creating_the_root() -> None:
    import threading

    storage = MemoryStorage()
    assert storage.new_oid() == ROOT_OID  # "another client" holds oid 0

    def create_root_later() -> None:
        storage.begin()
        writer_root = Root()
        writer_root.made_by = "other"
        from dhruva.serialize import ObjectWriter

        data, refs = ObjectWriter(connect(MemoryStorage())).get_state(writer_root)
        storage.store(ROOT_OID, data, refs)
        storage.end()

    connection = connect(storage)
    timer = threading.Timer(0.1, create_root_later)
    timer.start()
    try:
        assert connection.get_root().made_by == "other"
    finally:
        timer.join()


@pytest.mark.req("CONN-020")
def test_the_object_map_holds_objects_weakly() -> None:
    # The connection's oid -> object map holds plain weak references, found
    # dead lazily; an object nothing else holds must still leave it.
    connection = Connection(MemoryStorage())
    connection.root["kept"] = kept = Persistent()
    connection.root["dropped"] = Persistent()
    connection.commit()
    kept_oid, dropped_oid = kept._p_oid, connection.root["dropped"]._p_oid
    assert connection._objects.get(dropped_oid) is connection.root["dropped"]
    del connection.root["dropped"]
    connection.commit()
    connection._loaded.pop(dropped_oid, None)  # the cache's own strong reference
    gc.collect()
    assert connection._objects.get(dropped_oid) is None
    assert dropped_oid not in connection._objects
    assert connection._objects[kept_oid] is kept
    ghost = connection.get_ghost(int8_to_str(999), Persistent)
    assert connection._objects[int8_to_str(999)] is ghost
    del ghost
    gc.collect()
    assert int8_to_str(999) not in connection._objects


class _Item(Persistent):
    def __init__(self, a: Any) -> None:
        self.a = a


@pytest.mark.req("CONN-020")
def test_the_object_map_sweeps_its_dead_entries_and_counts_only_live_ones() -> None:
    from dhruva import connection as connection_module

    connection = Connection(MemoryStorage())
    objects = connection._objects
    ghosts = [connection.get_ghost(int8_to_str(n), Persistent) for n in range(1000, 1100)]
    assert connection.get_cache_count() == 101  # the root too
    del ghosts[50:]
    gc.collect()
    assert connection.get_cache_count() == 51
    assert len(objects.data) == 51  # counting swept them out
    # An insert sweeps once the map has doubled since its last sweep.
    many = [
        connection.get_ghost(int8_to_str(n), Persistent)
        for n in range(2000, 2000 + 2 * connection_module.SWEEP_MIN_ENTRIES)
    ]
    del many
    gc.collect()
    assert len(objects.data) > 2 * connection_module.SWEEP_MIN_ENTRIES  # dead, not swept yet
    # Ghosts that die at once, until the insert that crosses the bound sweeps.
    for number in range(5000, 5000 + objects._sweep_at - len(objects.data) + 1):
        connection.get_ghost(int8_to_str(number), Persistent)
    assert len(objects.data) == 52  # the last ghost swept in before it died
    assert connection.get_cache_count() == 51
    assert objects.pop(int8_to_str(1000)) is ghosts[0]
    assert objects.pop(int8_to_str(1000)) is None
    with pytest.raises(KeyError):
        objects[int8_to_str(1000)]


def test_an_object_of_the_cache_in_cyclic_garbage_is_collected() -> None:
    # The map's weak references have no callback (with the C extension the
    # collector does not track them): a ghost that only a reference cycle
    # holds is collected, and its entry leaves the map.
    storage = MemoryStorage()
    writer = Connection(storage)
    writer.root["a"] = _Item(1)
    writer.commit()
    connection = Connection(storage)
    root = connection.root
    ghost = root["a"]
    oid = ghost._p_oid
    assert ghost._p_status == GHOST and oid not in connection._loaded
    cycle: list[Any] = [ghost]
    cycle.append(cycle)
    del ghost, root
    connection.set_cache_size(0)
    for _ in range(3):
        connection.shrink_cache()  # the root too becomes a ghost, and lets go of "a"
    del cycle
    assert gc.collect() > 0
    assert connection._objects.get(oid) is None
    assert connection.root["a"].a == 1  # a new ghost, loaded


def test_each_commit_starts_its_writer_afresh() -> None:
    # The connection keeps one ObjectWriter; every commit restarts it, so what
    # one commit attached (or a failed one queued) does not reach the next.
    connection = connect()
    root = connection.get_root()
    root.a = first = Item(1)
    connection.commit()
    writer = connection._writer
    attached = writer.attached
    assert attached == [first]
    bad = Item(2)
    bad.callback = lambda: None  # a state pickle refuses
    root.bad = bad
    with pytest.raises(SerializationError):
        connection.commit()
    assert attached == [first]  # the list the first commit left is untouched
    connection.abort()
    root = connection.get_root()
    root.b = second = Item(2)
    connection.commit()
    assert connection._writer is writer and writer.attached == [second]
    assert writer.queue == [] and attached == [first]
    assert connect(connection._storage).get_root().b.n == 2
