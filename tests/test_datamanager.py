"""The Connection in the transaction package's two-phase commit (spec CONN-050..057)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from _shared_memory import SharedDatabase

from dhruva.connection import Connection
from dhruva.datamanager import join, leave
from dhruva.error import DhruvaError, WriteConflictError
from dhruva.persistent import Persistent
from dhruva.storage import MemoryStorage

transaction = pytest.importorskip("transaction")


class Item(Persistent):
    def __init__(self, value: Any) -> None:
        self.value = value


class Resource:
    """Another resource in the same transaction (a SQL session, say) that may fail."""

    def __init__(self, manager: Any, fail_in: str | None = None) -> None:
        self.transaction_manager = manager
        self.fail_in = fail_in
        self.calls: list[str] = []
        self.committed = False

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_in:
            raise RuntimeError(f"the other resource failed in {name}")

    def abort(self, txn: Any) -> None:
        self._step("abort")

    def tpc_begin(self, txn: Any) -> None:
        self._step("tpc_begin")

    def commit(self, txn: Any) -> None:
        self._step("commit")

    def tpc_vote(self, txn: Any) -> None:
        self._step("tpc_vote")

    def tpc_finish(self, txn: Any) -> None:
        self._step("tpc_finish")
        self.committed = True

    def tpc_abort(self, txn: Any) -> None:
        self._step("tpc_abort")

    def sortKey(self) -> str:
        return "sql:1"


def setup(storage: Any = None) -> tuple[Any, Connection]:
    manager = transaction.TransactionManager()
    connection = Connection(storage if storage is not None else MemoryStorage())
    join(connection, manager)
    manager.begin()
    return manager, connection


@pytest.mark.req("CONN-050")
def test_the_manager_commits_and_aborts_the_connection() -> None:
    manager, connection = setup()
    connection.root["x"] = Item(1)
    manager.commit()
    assert connection.changed == {}
    storage = connection.get_storage()
    assert Connection(storage).root["x"].value == 1
    connection.root["x"].value = 2
    manager.abort()
    assert connection.root["x"].value == 1


@pytest.mark.req("CONN-050")
def test_the_connection_joins_each_transaction_it_changes() -> None:
    manager, connection = setup()
    for value in range(3):
        connection.root["v"] = value
        manager.commit()  # implicit new transactions, no begin()
        assert Connection(connection.get_storage()).root["v"] == value


@pytest.mark.req("CONN-053", "CONN-054")
@pytest.mark.parametrize("fail_in", ["tpc_begin", "commit", "tpc_vote"])
def test_a_failing_resource_leaves_nothing_of_dhruva(fail_in: str) -> None:
    manager, connection = setup()
    other = Resource(manager, fail_in)
    manager.get().join(other)
    connection.root["x"] = Item("lost")
    with pytest.raises(RuntimeError, match=fail_in):
        manager.commit()
    # dhruva sorts last: it had not written anything when the other failed.
    assert "x" not in Connection(connection.get_storage()).root
    assert "tpc_abort" in other.calls and not other.committed
    manager.abort()
    assert "x" not in connection.root


@pytest.mark.req("CONN-054")
def test_a_conflict_of_dhruva_aborts_the_other_resource() -> None:
    db = SharedDatabase()
    manager, connection = setup(db.open())
    connection.root["x"] = Item(0)
    manager.commit()
    rival = Connection(db.open())
    connection.root["x"].value = 1
    rival.root["x"].value = 2
    rival.commit()
    other = Resource(manager)
    manager.get().join(other)
    with pytest.raises(WriteConflictError):
        manager.commit()
    assert other.calls[-1] == "tpc_abort" and "tpc_finish" not in other.calls
    manager.abort()
    assert connection.root["x"].value == 2


class FullDiskStorage(MemoryStorage):
    full = False

    def end(self) -> None:
        if self.full:
            self.abort_transaction()
            raise OSError(28, "No space left on device")
        super().end()


@pytest.mark.req("CONN-054")
def test_a_full_disk_is_found_at_the_vote() -> None:
    storage = FullDiskStorage()
    manager, connection = setup(storage)
    storage.full = True
    other = Resource(manager)
    manager.get().join(other)
    connection.root["x"] = Item(1)
    with pytest.raises(OSError):
        manager.commit()
    assert "tpc_vote" in other.calls and not other.committed
    manager.abort()
    storage.full = False
    assert "x" not in connection.root


@pytest.mark.req("CONN-051", "CONN-052", "CONN-056")
def test_savepoints_roll_back_changes_and_new_objects() -> None:
    manager, connection = setup()
    root = connection.root
    root["kept"] = Item(1)
    manager.commit()
    root["kept"].value = 2
    root["new"] = Item("before")
    savepoint = manager.savepoint()
    root["kept"].value = 3
    root["new"].value = "after"
    root["later"] = Item("gone")
    savepoint.rollback()
    assert root["kept"].value == 2
    assert root["new"].value == "before"
    assert "later" not in root
    savepoint.rollback()  # again: still the same point
    assert root["new"].value == "before"
    manager.commit()
    fresh = Connection(connection.get_storage()).root
    assert fresh["kept"].value == 2 and fresh["new"].value == "before"


@pytest.mark.req("CONN-052")
def test_abort_after_a_savepoint_detaches_its_new_objects() -> None:
    manager, connection = setup()
    item = Item(1)
    connection.root["new"] = item
    manager.savepoint()
    assert item._p_oid is not None
    manager.abort()
    assert item._p_oid is None and item._p_connection is None
    assert "new" not in connection.root
    connection.root["again"] = item
    manager.commit()
    assert Connection(connection.get_storage()).root["again"].value == 1


@pytest.mark.req("CONN-051")
def test_a_savepoint_of_an_ended_transaction_is_refused() -> None:
    connection = Connection(MemoryStorage())
    savepoint = connection.savepoint()
    connection.abort()
    with pytest.raises(DhruvaError, match="ended"):
        savepoint.rollback()


@pytest.mark.req("CONN-055")
def test_a_new_transaction_reads_a_fresh_snapshot() -> None:
    db = SharedDatabase()
    manager, connection = setup(db.open())
    connection.root["x"] = Item(0)
    manager.commit()
    assert connection.root["x"].value == 0
    writer = Connection(db.open())
    writer.root["x"].value = 5
    writer.commit()
    manager.begin()
    assert connection.root["x"].value == 5


@pytest.mark.req("CONN-053")
def test_two_connections_in_one_transaction_are_refused() -> None:
    manager, first = setup()
    second = Connection(MemoryStorage())
    join(second, manager)
    first.root["a"] = 1
    second.root["b"] = 2
    with pytest.raises(DhruvaError, match="one connection per transaction"):
        manager.commit()
    manager.abort()
    assert "a" not in first.root and "b" not in second.root


@pytest.mark.req("CONN-050")
def test_leave_stops_joining() -> None:
    manager = transaction.TransactionManager()
    connection = Connection(MemoryStorage())
    data_manager = join(connection, manager)
    leave(data_manager)
    connection.root["x"] = 1
    manager.commit()
    assert "x" not in Connection(connection.get_storage()).root


@pytest.mark.req("CONN-057")
def test_without_the_package_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transaction", None)
    with pytest.raises(DhruvaError, match=r"dhruva\[transaction\]"):
        join(Connection(MemoryStorage()))
