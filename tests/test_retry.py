"""run_transaction: abort, run, commit, retry after conflicts (spec CONN-030)."""

from __future__ import annotations

import pytest

from dhruva.connection import Connection
from dhruva.error import WriteConflictError
from dhruva.retry import run_transaction
from dhruva.storage import MemoryStorage
from dhruva.utils import ROOT_OID


class FlakyStorage(MemoryStorage):
    """Refuses the first ``conflicts`` commits with a write conflict."""

    def __init__(self, conflicts: int) -> None:
        super().__init__()
        self.conflicts = conflicts
        self.armed = False

    def end(self) -> None:
        if self.armed and self.conflicts > 0:
            self.conflicts -= 1
            self.abort_transaction()
            raise WriteConflictError([ROOT_OID])
        super().end()


def _increment(connection: Connection) -> int:
    root = connection.get_root()
    root["count"] = root.get("count", 0) + 1
    return int(root["count"])


@pytest.mark.req("CONN-030")
def test_conflicts_are_retried_until_the_commit_succeeds() -> None:
    storage = FlakyStorage(conflicts=3)
    connection = Connection(storage)
    storage.armed = True
    calls: list[int] = []

    def work(conn: Connection) -> int:
        calls.append(1)
        return _increment(conn)

    assert run_transaction(connection, work, backoff_s=0) == 1
    assert len(calls) == 4
    assert Connection(storage).get_root()["count"] == 1


@pytest.mark.req("CONN-030")
def test_the_last_conflict_is_raised_after_the_attempts() -> None:
    storage = FlakyStorage(conflicts=5)
    connection = Connection(storage)
    storage.armed = True
    with pytest.raises(WriteConflictError):
        run_transaction(connection, _increment, attempts=2, backoff_s=0)
    assert storage.conflicts == 3
    # The connection was aborted and stays usable.
    assert connection.get_root().get("count") is None


@pytest.mark.req("CONN-030")
def test_other_errors_abort_and_propagate_at_once() -> None:
    connection = Connection(MemoryStorage())
    calls: list[int] = []

    def work(conn: Connection) -> None:
        calls.append(1)
        conn.get_root()["half"] = True
        raise ValueError("application error")

    with pytest.raises(ValueError, match="application error"):
        connection.run_transaction(work)
    assert calls == [1]
    assert "half" not in connection.get_root()


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempts"):
        run_transaction(Connection(MemoryStorage()), _increment, attempts=0)
