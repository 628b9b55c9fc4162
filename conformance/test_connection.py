"""The object layer on top of every back-end (spec: ``spec/connection.md``).

A Connection uses only the Storage interface, so a back-end that passes the
storage contract must also carry the object layer.  These tests check that
end to end: the root, object graphs with cycles, abort, reachability at
commit, lazy ghost loading and a small cache, across a reopen where the
back-end can reopen (otherwise through a second Connection on the same
storage object).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dhruva_conformance.backends import StorageFactory

from dhruva.connection import Connection
from dhruva.persistent import Persistent
from dhruva.persistent_dict import PersistentDict
from dhruva.persistent_list import PersistentList
from dhruva.persistent_set import PersistentSet
from dhruva.storage import Storage
from dhruva.utils import ROOT_OID


class Node(Persistent):
    """A persistent object with ordinary attributes (pickled by class reference)."""

    def __init__(self, name: str, other: Any = None) -> None:
        self.name = name
        self.other = other


class Session:
    """Opens connections on the back-end; ``reopen`` starts a fresh one on the same data."""

    def __init__(self, factory: StorageFactory) -> None:
        self.factory = factory
        self.can_reopen = "reopen" in factory.capabilities
        self.storage: Storage = factory.open()
        self.connection = Connection(self.storage)

    def reopen(self, cache_size: int = 100000) -> Connection:
        if self.can_reopen:
            self.connection.close()
            self.storage = self.factory.open(reopen=True)
        # Without reopen, a second Connection on the same storage object still
        # has to load everything from the storage: nothing is shared but records.
        self.connection = Connection(self.storage, cache_size=cache_size)
        return self.connection


@pytest.fixture
def session(storage_factory: StorageFactory) -> Iterator[Session]:
    session = Session(storage_factory)
    yield session
    session.connection.close()


@pytest.mark.req("CONN-014", "CONN-010")
def test_root_persists(session: Session) -> None:
    root = session.connection.get_root()
    assert isinstance(root, PersistentDict)
    root["greeting"] = "hello"
    root["numbers"] = PersistentList([1, 2, 3])
    session.connection.commit()
    connection = session.reopen()
    root = connection.get_root()
    assert root["greeting"] == "hello"
    assert list(root["numbers"]) == [1, 2, 3]
    assert connection.get(ROOT_OID) is root


@pytest.mark.req("CONN-010", "CONN-021")
def test_object_graph_with_cycles(session: Session) -> None:
    root = session.connection.get_root()
    a = Node("a")
    b = Node("b", a)
    a.other = b
    a.me = a
    root["a"] = a
    root["set"] = PersistentSet({"x", "y"})
    session.connection.commit()
    connection = session.reopen()
    root = connection.get_root()
    a = root["a"]
    assert a.name == "a"
    assert a.other.name == "b"
    assert a.other.other is a
    assert a.me is a
    assert set(root["set"]) == {"x", "y"}
    assert connection.get(a._p_oid) is a


@pytest.mark.req("CONN-011")
def test_abort_reverts_attributes_and_items(session: Session) -> None:
    connection = session.connection
    root = connection.get_root()
    node = Node("before")
    root["node"] = node
    root["list"] = PersistentList(["x"])
    connection.commit()
    node.name = "after"
    node.extra = 1
    root["list"].append("y")
    root["new"] = "item"
    del root["node"]
    connection.abort()
    root = connection.get_root()
    assert "new" not in root
    node = root["node"]
    assert node.name == "before"
    assert not hasattr(node, "extra")
    assert list(root["list"]) == ["x"]
    # An abort writes nothing: a fresh connection sees the same.
    connection = session.reopen()
    assert connection.get_root()["node"].name == "before"


@pytest.mark.req("CONN-010", "DM-003")
def test_new_reachable_objects_stored_in_the_same_commit(session: Session) -> None:
    connection = session.connection
    root = connection.get_root()
    leaf = Node("leaf")
    middle = Node("middle", leaf)
    root["middle"] = middle
    assert middle._p_oid is None
    connection.commit()
    storage = connection.get_storage()
    for obj in (middle, leaf):
        assert obj._p_oid is not None
        record = storage.load(obj._p_oid)
        assert record.data
    assert middle._p_oid is not None
    assert leaf._p_oid in storage.load(middle._p_oid).ref_oids()
    assert middle._p_oid in storage.load(ROOT_OID).ref_oids()


@pytest.mark.req("CONN-001")
def test_ghosts_load_lazily(session: Session) -> None:
    root = session.connection.get_root()
    for i in range(20):
        root[i] = Node(f"n{i}")
    session.connection.commit()
    connection = session.reopen()
    root = connection.get_root()
    before = connection.get_load_count()
    nodes = [root[i] for i in range(20)]
    # Reaching the nodes through the root loads none of them ...
    assert connection.get_load_count() == before
    # ... reading an attribute loads exactly that one.
    assert nodes[3].name == "n3"
    assert connection.get_load_count() == before + 1
    assert [n.name for n in nodes] == [f"n{i}" for i in range(20)]
    assert connection.get_load_count() == before + 20


@pytest.mark.req("CONN-020", "CONN-003")
def test_cache_shrink_keeps_things_correct(session: Session) -> None:
    connection = session.connection
    root = connection.get_root()
    for i in range(300):
        root[i] = Node(f"n{i}", PersistentList([i]))
    connection.commit()
    connection = session.reopen(cache_size=10)
    root = connection.get_root()
    for round_number in range(3):
        for i in range(300):
            node = root[i]
            assert node.name == f"n{i}"
            assert list(node.other) == [i + round_number]
            node.other[0] += 1
            if i % 50 == 49:
                connection.commit()
                connection.shrink_cache()
    connection.commit()
    connection.shrink_cache()
    connection = session.reopen(cache_size=10)
    root = connection.get_root()
    assert [list(root[i].other) for i in range(300)] == [[i + 3] for i in range(300)]


@pytest.mark.req("CONN-010")
def test_connection_context_manager_and_close(storage_factory: StorageFactory) -> None:
    with Connection(storage_factory.open()) as connection:
        connection.get_root()["x"] = 1
        connection.commit()
        assert connection.get_storage().load(ROOT_OID).data
    # Leaving the block closed it; closing again is harmless.
    connection.close()
    if "reopen" in storage_factory.capabilities:
        with Connection(storage_factory.open(reopen=True)) as connection:
            assert connection.get_root()["x"] == 1
