"""The transaction package's two-phase commit on every back-end (spec: CONN-050..054).

``dhruva.datamanager.join`` makes a Connection commit in the vote of a
``transaction`` manager's two-phase commit.  These cases run it on the
back-end under test: what the manager commits is in the storage, and a
second resource that fails at any step before dhruva's vote leaves nothing
of dhruva's written, on every back-end.  They skip when the ``transaction``
package is not installed (extra ``transaction``).
"""

from __future__ import annotations

from typing import Any

import pytest

from dhruva.connection import Connection
from dhruva.datamanager import join
from dhruva.persistent_dict import PersistentDict
from dhruva.storage import Storage

transaction = pytest.importorskip("transaction")


class FailingResource:
    """Another resource of the same transaction (a SQL session, say) that fails at ``step``."""

    def __init__(self, manager: Any, step: str) -> None:
        self.transaction_manager = manager
        self.step = step
        self.finished = False

    def _run(self, name: str) -> None:
        if name == self.step:
            raise RuntimeError(f"the other resource failed in {name}")

    def abort(self, txn: Any) -> None:
        self._run("abort")

    def tpc_begin(self, txn: Any) -> None:
        self._run("tpc_begin")

    def commit(self, txn: Any) -> None:
        self._run("commit")

    def tpc_vote(self, txn: Any) -> None:
        self._run("tpc_vote")

    def tpc_finish(self, txn: Any) -> None:
        self.finished = True

    def tpc_abort(self, txn: Any) -> None:
        pass

    def sortKey(self) -> str:
        return "another resource"


def joined(storage: Storage) -> tuple[Any, Connection]:
    manager = transaction.TransactionManager()
    connection = Connection(storage)
    join(connection, manager)
    manager.begin()
    return manager, connection


def committed_root(storage: Storage) -> Any:
    """The root as the storage has it now, read by a connection of its own."""
    return Connection(storage).root


@pytest.mark.req("CONN-050", "CONN-054")
def test_a_manager_commit_reaches_the_storage(storage: Storage) -> None:
    manager, connection = joined(storage)
    connection.root["settings"] = PersistentDict(theme="dark")
    manager.commit()
    assert committed_root(storage)["settings"]["theme"] == "dark"
    connection.root["settings"]["theme"] = "light"
    manager.abort()
    assert connection.root["settings"]["theme"] == "dark"
    assert committed_root(storage)["settings"]["theme"] == "dark"


@pytest.mark.req("CONN-053", "CONN-054")
@pytest.mark.parametrize("step", ["tpc_begin", "commit", "tpc_vote"])
def test_a_failing_resource_leaves_nothing_of_dhruva(storage: Storage, step: str) -> None:
    manager, connection = joined(storage)
    connection.root["kept"] = 1
    manager.commit()
    other = FailingResource(manager, step)
    manager.get().join(other)
    connection.root["lost"] = PersistentDict(value=2)
    with pytest.raises(RuntimeError, match=step):
        manager.commit()
    manager.abort()
    root = committed_root(storage)
    assert root["kept"] == 1 and "lost" not in root
    assert not other.finished
    # The connection goes on: the next transaction commits.
    connection.root["after"] = 3
    manager.commit()
    assert committed_root(storage)["after"] == 3
