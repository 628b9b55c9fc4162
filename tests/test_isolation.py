"""Snapshot reads, read tracking and serializable commits of the Connection.

Spec: spec/connection.md, "Isolation" (CONN-040..049).  Several connections
share one in-memory database through tests/_shared_memory.py, a storage
double that follows the snapshot contract of spec/storage-api.md; the same
behaviour through the storage server and PostgreSQL is checked by
conformance/test_bank.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from _shared_memory import SharedDatabase

from dhruva.connection import Connection
from dhruva.error import (
    ConflictError,
    ReadConflictError,
    SerializationConflictError,
    WriteConflictError,
)
from dhruva.persistent import Persistent
from dhruva.persistent_dict import PersistentDict
from dhruva.storage import MemoryStorage


class Account(Persistent):
    def __init__(self, balance: int) -> None:
        self.balance = balance


class Counter(Persistent):
    """A counter whose concurrent increments merge (the docs' example)."""

    def __init__(self) -> None:
        self.value = 0

    def _p_resolve_conflict(self, old: Any, committed: Any, mine: Any) -> Any:
        merged = dict(mine)
        merged["value"] = committed["value"] + mine["value"] - old["value"]
        return merged


class Refusing(Persistent):
    def __init__(self) -> None:
        self.value = 0

    def _p_resolve_conflict(self, old: Any, committed: Any, mine: Any) -> Any:
        raise ConflictError()


def two_connections(**options: Any) -> tuple[Connection, Connection]:
    db = SharedDatabase()
    first = Connection(db.open(), **options)
    root = first.get_root()
    root["a"] = Account(1)
    root["b"] = Account(1)
    root["c"] = Counter()
    root["r"] = Refusing()
    root["other"] = Account(0)
    first.commit()
    second = Connection(db.open(), **options)
    second.get_root()
    return first, second


@pytest.mark.req("CONN-040")
def test_a_transaction_reads_its_snapshot_whatever_others_commit() -> None:
    reader, writer = two_connections(cache_size=0)
    reader.abort()
    # The reader's cache holds nothing loaded but the root: every account is a ghost.
    root = reader.get_root()
    before = root["a"].balance
    for _step in range(3):
        writer.get_root()["a"].balance += 10
        writer.get_root()["b"].balance -= 10
        writer.commit()
    # No ReadConflictError: the ghost b loads as of the reader's snapshot.
    assert root["b"].balance + root["a"].balance == 2
    assert root["a"].balance == before
    reader.commit()  # [CONN-041] read-only: never fails
    assert root["a"].balance == 31 and root["b"].balance == -29


@pytest.mark.req("CONN-041")
def test_a_read_only_transaction_never_fails() -> None:
    reader, writer = two_connections()
    root = reader.get_root()
    total = root["a"].balance + root["b"].balance
    writer.get_root()["a"].balance = 100
    writer.commit()
    assert root["a"].balance + root["b"].balance == total
    reader.commit()
    assert root["a"].balance == 100


def _skew(first: Connection, second: Connection) -> None:
    """Each transaction checks "a + b >= 1" and then takes one down (the write-skew example)."""
    r1, r2 = first.get_root(), second.get_root()
    if r1["a"].balance + r1["b"].balance >= 2:
        r1["a"].balance -= 1
    if r2["a"].balance + r2["b"].balance >= 2:
        r2["b"].balance -= 1
    first.commit()
    second.commit()


@pytest.mark.req("CONN-043", "CONN-045")
def test_write_skew_commits_under_snapshot_isolation() -> None:
    first, second = two_connections(isolation="snapshot")
    _skew(first, second)
    first.abort()
    root = first.get_root()
    # Both commits passed: the invariant a + b >= 1 is broken.
    assert root["a"].balance + root["b"].balance == 0


@pytest.mark.req("CONN-043")
def test_write_skew_is_refused_by_serializable_commits() -> None:
    first, second = two_connections()
    with pytest.raises(ReadConflictError) as caught:
        _skew(first, second)
    a_oid = first.get_root()["a"]._p_oid
    assert caught.value.oids == [a_oid]
    second.abort()
    root = second.get_root()
    assert root["a"].balance + root["b"].balance == 1


@pytest.mark.req("CONN-042")
def test_reads_of_cached_objects_count() -> None:
    first, second = two_connections()
    root = first.get_root()
    account = root["a"]
    assert account.balance == 1  # loaded and cached
    first.commit()
    # A new transaction reads the cached account: no load, still a read.
    assert account.balance == 1
    assert account._p_oid in first.get_read_oids()
    second.get_root()["a"].balance = 5
    second.commit()
    root["other"].balance = 1
    with pytest.raises(ReadConflictError):
        first.commit()
    first.abort()
    assert account.balance == 5


@pytest.mark.req("CONN-042")
def test_objects_not_used_are_not_reads() -> None:
    first, second = two_connections()
    root = first.get_root()
    assert root["a"].balance == 1
    first.commit()
    # This transaction does not use the account: another client's change to
    # it is no conflict (Durus would have raised on the stale cached object).
    second.get_root()["a"].balance = 5
    second.commit()
    root["other"].balance = 7
    first.commit()
    assert root["a"]._p_oid not in first.get_read_oids()


@pytest.mark.req("CONN-042")
def test_boundary_re_arms_only_what_was_used() -> None:
    connection = Connection(SharedDatabase().open())
    root = connection.get_root()
    for name in "xyz":
        root[name] = Account(0)
    connection.commit()
    x, y, z = (root[name] for name in "xyz")
    connection.abort()
    assert connection.get_read_oids() == []
    assert all(obj._p_is_tracked() for obj in (root, x, y, z))
    assert x.balance == 0
    assert not x._p_is_tracked()
    assert y._p_is_tracked()
    assert connection.get_read_oids() == [x._p_oid]
    connection.abort()
    assert x._p_is_tracked()
    assert connection.get_read_oids() == []


@pytest.mark.req("CONN-044")
def test_write_write_conflicts_name_the_objects() -> None:
    first, second = two_connections()
    first.get_root()["a"].balance = 2
    second.get_root()["a"].balance = 3
    first.commit()
    with pytest.raises(WriteConflictError) as caught:
        second.commit()
    assert caught.value.oids == [second.get_root()["a"]._p_oid]
    second.abort()
    assert second.get_root()["a"].balance == 2


@pytest.mark.req("CONN-047")
def test_conflicts_are_resolved_by_the_class() -> None:
    first, second = two_connections()
    first.get_root()["c"].value += 1
    second.get_root()["c"].value += 2
    first.commit()
    second.commit()  # resolved: 0 + 1 + 2
    assert second.get_root()["c"].value == 3
    first.abort()
    assert first.get_root()["c"].value == 3


@pytest.mark.req("CONN-047")
def test_a_resolution_that_refuses_keeps_the_conflict() -> None:
    first, second = two_connections()
    first.get_root()["r"].value = 1
    second.get_root()["r"].value = 2
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()
    with pytest.raises(WriteConflictError):
        second.commit()  # until abort
    second.abort()
    assert second.get_root()["r"].value == 1


@pytest.mark.req("CONN-047")
def test_no_resolution_when_a_read_is_stale_too() -> None:
    first, second = two_connections()
    # second reads b and bumps the counter; first changes both.
    assert second.get_root()["b"].balance == 1
    second.get_root()["c"].value += 1
    first.get_root()["c"].value += 1
    first.get_root()["b"].balance = 9
    first.commit()
    with pytest.raises(ConflictError):
        second.commit()
    second.abort()
    assert second.get_root()["c"].value == 1


@pytest.mark.req("CONN-048")
def test_run_transaction_retries_serialization_failures() -> None:
    first, second = two_connections()
    attempts = []

    def take_from_a(connection: Connection) -> None:
        attempts.append(1)
        root = connection.get_root()
        if len(attempts) == 1:
            # Another client commits a change this attempt read.
            second.get_root()["a"].balance = 10
            second.commit()
        root["b"].balance = root["a"].balance

    first.run_transaction(take_from_a)
    assert len(attempts) == 2
    first.abort()
    assert first.get_root()["b"].balance == 10


@pytest.mark.req("CONN-045")
def test_isolation_level_is_checked() -> None:
    with pytest.raises(ValueError, match="isolation"):
        Connection(MemoryStorage(), isolation="read-committed")
    connection = Connection(MemoryStorage())
    assert connection.get_isolation() == "serializable"
    connection.set_isolation("snapshot")
    assert connection.get_isolation() == "snapshot"


@pytest.mark.req("CONN-046")
def test_reads_are_not_tracked_where_nobody_checks_them() -> None:
    for connection in (
        Connection(MemoryStorage()),
        Connection(SharedDatabase().open(), isolation="snapshot"),
    ):
        root = connection.get_root()
        root["x"] = Account(0)
        connection.commit()
        x = root["x"]
        assert x.balance == 0
        connection.abort()
        # Not re-armed: reading x next costs what a plain object's read costs.
        assert not x._p_is_tracked()
        assert not root._p_is_tracked()


@pytest.mark.req("CONN-045", "CONN-046")
def test_switching_to_serializable_arms_the_cache_once() -> None:
    first, second = two_connections(isolation="snapshot")
    account = first.get_root()["a"]
    assert account.balance == 1
    first.set_isolation("serializable")
    first.abort()  # the boundary arms every loaded object
    assert account._p_is_tracked()
    assert account.balance == 1  # a read of the new transaction
    second.get_root()["a"].balance = 5
    second.commit()
    first.get_root()["other"].balance = 3
    with pytest.raises(ReadConflictError):
        first.commit()


@pytest.mark.req("CONN-046")
def test_a_storage_without_other_writers_is_not_sent_reads() -> None:
    storage = MemoryStorage()
    connection = Connection(storage)
    root = connection.get_root()
    root["x"] = PersistentDict()
    connection.commit()
    calls: list[list[bytes]] = []
    storage.note_reads = lambda oids: calls.append(list(oids))  # type: ignore[method-assign]
    root["x"]["k"] = 1
    connection.commit()
    assert calls == []


class Tally(PersistentDict):
    """The docs' dictionary of counters (docs/guide/concurrency.md)."""

    def _p_resolve_conflict(self, old: Any, committed: Any, mine: Any) -> Any:
        before, theirs, ours = old["data"], committed["data"], mine["data"]
        merged = dict(theirs)
        for key in theirs.keys() | ours.keys():
            merged[key] = theirs.get(key, 0) + ours.get(key, 0) - before.get(key, 0)
        return {**mine, "data": merged}


@pytest.mark.req("CONN-047")
def test_the_docs_tally_merges_per_key() -> None:
    first, second = two_connections()
    first.get_root()["tally"] = Tally(x=1)
    first.commit()
    second.abort()
    first.get_root()["tally"]["x"] += 1
    first.get_root()["tally"]["y"] = 5
    second.get_root()["tally"]["x"] += 10
    first.commit()
    second.commit()
    second.abort()
    assert dict(second.get_root()["tally"]) == {"x": 12, "y": 5}


@pytest.mark.req("CONN-048")
def test_a_durus_style_loop_sees_only_conflicts_it_knows() -> None:
    """Code written for Durus's conflicts: fewer errors, and only ConflictErrors."""
    first, second = two_connections()
    errors: list[type] = []
    for step in range(20):
        try:
            first.abort()
            root = first.get_root()
            total = root["a"].balance + root["b"].balance
            if step % 2:
                root["a"].balance = total
            # Another client writes in the middle of every transaction.
            second.abort()
            second.get_root()["b"].balance += 1
            second.commit()
            first.commit()
        except ConflictError as error:
            errors.append(type(error))
    # Read-only steps never fail; a writing step fails at commit only, with
    # an error that is both of Durus's kinds: Durus raises WriteConflictError
    # at commit for a stale read, ZODB code expects ReadConflictError.
    assert len(errors) == 10
    assert set(errors) == {SerializationConflictError}
    assert issubclass(SerializationConflictError, WriteConflictError)
    assert issubclass(SerializationConflictError, ReadConflictError)


@pytest.mark.req("CONN-040")
def test_the_first_load_of_a_transaction_reads_the_latest_commit() -> None:
    reader, writer = two_connections(cache_size=0)
    reader.abort()  # everything is a ghost now: the next transaction loads first
    writer.get_root()["a"].balance = 7
    writer.commit()
    # The reader used nothing since its abort: its first load moves its
    # snapshot to the latest commit, as a Durus client would see it.
    assert reader.get_root()["a"].balance == 7


@pytest.mark.req("CONN-040")
def test_a_transaction_that_used_an_object_keeps_its_snapshot() -> None:
    reader, writer = two_connections()
    root = reader.get_root()
    account = root["a"]
    assert account.balance == 1
    reader.abort()
    assert root["b"]._p_oid is not None  # uses the cached root: a read
    writer.get_root()["a"].balance = 7
    writer.commit()
    reader_b = root["b"]
    reader_b._p_set_status_ghost()  # force a load later in the transaction
    assert reader_b.balance == 1
    assert account.balance == 1  # still the snapshot of the abort
