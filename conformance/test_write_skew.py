"""Write skew: refused by serializable commits, allowed by snapshot isolation (CONF-064).

Two clients share one database: through the storage server on a server
back-end, or as two storage objects on a back-end with other writers
(PostgreSQL).  The rule is "at least one of the two doctors stays on call";
each transaction checks it and signs one doctor out.  Under snapshot
isolation both commit and the rule breaks; serializable commits refuse the
second (spec/connection.md, CONN-043 and CONN-045).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dhruva_conformance.backends import StorageFactory
from dhruva_conformance.bank import Account
from dhruva_conformance.server_backends import ServedStorage

from dhruva.client_storage import ClientStorage
from dhruva.connection import Connection
from dhruva.error import ReadConflictError
from dhruva.storage import CAP_SNAPSHOTS, Storage


@pytest.fixture
def two_storages(storage_factory: StorageFactory) -> Iterator[tuple[Storage, Storage]]:
    first = storage_factory.open()
    second: Storage | None = None
    try:
        if isinstance(first, ServedStorage):
            second = ClientStorage(first.server.address)
        elif type(first).note_reads is not Storage.note_reads:
            second = storage_factory.open(reopen=True)
        else:
            pytest.skip(f"back-end {storage_factory.name!r} has one writer per database")
        if not {CAP_SNAPSHOTS} <= first.capabilities & second.capabilities:
            pytest.skip(f"back-end {storage_factory.name!r} has no snapshots")
        yield first, second
    finally:
        if second is not None:
            second.close()
        first.close()


def _sign_out_both(first: Connection, second: Connection) -> None:
    for connection in (first, second):
        connection.abort()
    one, two = first.root, second.root
    if one["b"].balance:  # "b stays": a may leave
        one["a"].balance = 0
    if two["a"].balance:  # "a stays": b may leave
        two["b"].balance = 0
    first.commit()
    second.commit()


def _doctors(storages: tuple[Storage, Storage], isolation: str) -> tuple[Connection, Connection]:
    first = Connection(storages[0], isolation=isolation)
    first.root["a"] = Account(1)
    first.root["b"] = Account(1)
    first.commit()
    second = Connection(storages[1], isolation=isolation)
    return first, second


@pytest.mark.req("CONF-064", "CONN-045")
def test_write_skew_under_snapshot_isolation(two_storages: tuple[Storage, Storage]) -> None:
    first, second = _doctors(two_storages, "snapshot")
    _sign_out_both(first, second)
    first.abort()
    assert first.root["a"].balance + first.root["b"].balance == 0  # the rule is broken


@pytest.mark.req("CONF-064", "CONN-043")
def test_write_skew_refused_by_serializable_commits(
    two_storages: tuple[Storage, Storage],
) -> None:
    first, second = _doctors(two_storages, "serializable")
    with pytest.raises(ReadConflictError) as caught:
        _sign_out_both(first, second)
    assert caught.value.oids == [second.root["a"]._p_oid]
    second.abort()
    assert second.root["a"].balance + second.root["b"].balance == 1
    # Retried, the second transaction sees that a left, and b stays.
    _sign_out_both(first, second)
    second.abort()
    assert second.root["a"].balance + second.root["b"].balance == 1
