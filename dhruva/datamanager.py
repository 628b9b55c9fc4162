"""A Connection in the ``transaction`` package's two-phase commit (spec CONN-050..057).

ZODB applications (Pyramid's pyramid_tm, Zope, repoze) commit through a
``transaction`` manager and let other resources, a SQL session or a mail
queue, join the same transaction.  :func:`join` makes a dhruva Connection
one of them::

    import transaction
    from dhruva.datamanager import join

    join(connection)                  # transaction.manager, the thread's
    connection.root["visits"] = 1
    transaction.commit()              # dhruva commits with the others

Theory of operation.  The transaction package commits its resources in
three rounds, each over all resources sorted by ``sortKey()``: ``commit``,
then ``tpc_vote``, then ``tpc_finish``; a failure before the last round makes
it call ``tpc_abort`` on all of them.  A vote must guarantee the finish.
dhruva's data manager sorts *last* and does the whole commit in its vote:
every other resource has voted (and so promised its finish) before dhruva
writes anything, a conflict, a full disk or a refused write of dhruva's
fails the vote and aborts the others, and dhruva's finish has nothing left
to do, so it cannot fail.  This is the "last resource" form of two-phase
commit; it needs no prepared state in the storage and works on every
back-end.  Only one resource in a transaction can be last: a second
resource that also claims it is refused at ``tpc_begin``.

The manager joins the connection to each transaction when the first object
changes in it, and a new transaction (``manager.begin()``) starts on a fresh
snapshot (the connection aborts); after every transaction the connection
is synchronized, so the next one reads the latest commit.

The ``transaction`` package is an optional extra: ``pip install
'dhruva[transaction]'``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dhruva.error import DhruvaError

if TYPE_CHECKING:
    from dhruva.connection import Connection, Savepoint

log = logging.getLogger("dhruva")

#: The prefix of the data manager's sort key: "~" sorts after every letter
#: and digit, so dhruva votes after resources with ordinary keys (CONN-053).
SORT_KEY_PREFIX = "~~dhruva:"


def _transaction_module() -> Any:
    try:
        import transaction
    except ImportError:
        raise DhruvaError(
            "dhruva.datamanager needs the transaction package: pip install 'dhruva[transaction]'"
        ) from None
    return transaction


class DataManager:
    """The data manager of one Connection (``transaction.interfaces.IDataManager``).

    Use :func:`join` rather than constructing it.
    """

    def __init__(self, connection: Connection, transaction_manager: Any) -> None:
        self.connection = connection
        self.transaction_manager = transaction_manager
        self._joined: Any = None
        self._voted = False

    def __repr__(self) -> str:
        return f"<DataManager of {self.connection.get_storage()!r}>"

    # -- joining -----------------------------------------------------------------------

    def join_current(self) -> None:
        """Join the manager's current transaction unless already joined (CONN-050)."""
        current = self.transaction_manager.get()
        if self._joined is not current:
            current.join(self)
            self._joined = current

    # ISynchronizer: the manager calls these around every transaction.

    def newTransaction(self, transaction: Any) -> None:
        """A new transaction starts: it reads a fresh snapshot (CONN-055)."""
        self._voted = False
        self._joined = None
        self.connection.abort()

    def beforeCompletion(self, transaction: Any) -> None:
        """Nothing to do before the transaction commits or aborts."""

    def afterCompletion(self, transaction: Any) -> None:
        """The transaction ended: synchronize so the next one reads the latest commit."""
        voted, self._voted = self._voted, False
        self._joined = None
        if not voted and not self.connection._closed:
            # Committed (nothing of ours) or aborted: drop what is left.
            self.connection.abort()

    # -- IDataManager ------------------------------------------------------------------

    def abort(self, transaction: Any) -> None:
        """Drop this transaction's changes (the transaction aborted before voting)."""
        self.connection.abort()

    def tpc_begin(self, transaction: Any) -> None:
        """Start the two-phase commit; refuse a second resource that also sorts last."""
        self._voted = False
        for resource in getattr(transaction, "_resources", ()):
            if resource is self:
                continue
            key = getattr(resource, "sortKey", None)
            if callable(key) and str(key()).startswith(SORT_KEY_PREFIX):
                raise DhruvaError(
                    "two dhruva connections joined one transaction; each commits in its "
                    "vote and only one can vote last: use one connection per transaction"
                )

    def commit(self, transaction: Any) -> None:
        """First round: nothing to write yet (dhruva writes in its vote)."""

    def tpc_vote(self, transaction: Any) -> None:
        """Commit the connection: conflicts and write failures surface here (CONN-054).

        Every other resource has voted already (dhruva sorts last); when this
        returns, dhruva's part is durable and the finish cannot fail.
        """
        self.connection.commit()
        self._voted = True

    def tpc_finish(self, transaction: Any) -> None:
        """Second round: dhruva's part committed at the vote; nothing can fail here."""

    def tpc_abort(self, transaction: Any) -> None:
        """Abort the two-phase commit.

        Before dhruva's vote this drops its changes.  After it, a resource
        sorted after dhruva failed (which :meth:`tpc_begin` refuses to let
        happen with dhruva's own kind); dhruva's part is committed and the
        event is logged.
        """
        if self._voted:
            log.critical(
                "a resource failed after dhruva's vote: dhruva's part of the transaction "
                "is committed, the other resources' may not be"
            )
            return
        self.connection.abort()

    def sortKey(self) -> str:
        """Sort after every ordinary resource: dhruva votes last (CONN-053)."""
        return f"{SORT_KEY_PREFIX}{id(self.connection):x}"

    def savepoint(self) -> DataManagerSavepoint:
        """Return a savepoint of the connection's changes (CONN-051, CONN-056)."""
        return DataManagerSavepoint(self.connection.savepoint())


class DataManagerSavepoint:
    """A data-manager savepoint (``transaction.interfaces.IDataManagerSavepoint``)."""

    def __init__(self, savepoint: Savepoint) -> None:
        self._savepoint = savepoint

    def rollback(self) -> None:
        """Roll the connection back to the savepoint."""
        self._savepoint.rollback()


def join(connection: Connection, transaction_manager: Any = None) -> DataManager:
    """Make ``connection`` commit and abort with ``transaction_manager`` (CONN-050).

    ``transaction_manager`` defaults to ``transaction.manager`` (the
    thread-local manager); with pyramid_tm pass ``request.tm``.  From now on
    the connection joins every transaction of that manager in which an
    object changes, commits in that transaction's vote and aborts with it.
    Call ``transaction_manager.commit()`` / ``abort()`` instead of the
    connection's own; :func:`leave` undoes this.
    """
    if transaction_manager is None:
        transaction_manager = _transaction_module().manager
    manager = DataManager(connection, transaction_manager)
    transaction_manager.registerSynch(manager)
    connection._on_first_change = manager.join_current
    if connection.changed:
        manager.join_current()
    return manager


def leave(manager: DataManager) -> None:
    """Stop ``manager``'s connection from joining transactions."""
    manager.transaction_manager.unregisterSynch(manager)
    manager.connection._on_first_change = None
