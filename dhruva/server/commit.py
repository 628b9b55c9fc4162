"""Group commit: the storage server's committer (spec: ``spec/server.md``, "Commit").

Theory of operation.  A COMMIT is not executed at once.  :meth:`Committer.check`
refuses it when it stores an oid another client committed since this
client's last sync (a write conflict [SRV-020]) or an oid the server never
allocated to this client [SRV-022]; otherwise :meth:`Committer.queue` holds
it, and the client's session waits (its later requests stay queued, so that
answers keep their order).  When every readable socket has been read, the
server calls :meth:`Committer.run_group`: the queued commits form one
*group*, written as one ``begin()``, the stores of every commit in the
group, one ``end()`` [SRV-030].  The storage makes that one transaction
durable with a single flush, so clients that commit together share one
fsync.  Only after ``end()`` returns are the commits answered, so a client
never hears COMMITTED for data that is not durable [SRV-031].  Two commits
in one group never store the same oid: the second is refused with a write
conflict, exactly as if the first had been executed before it.  If
``end()`` raises, every commit in the group is answered with
STORAGE_FAILURE (READ_ONLY for a read-only storage) and nothing of the group
is visible.

Blobs [SRV-122].  A commit may carry staged blobs, ``(oid, file)`` pairs
(:mod:`dhruva.server.blobs`): after its records, each is passed to
``storage.store_blob`` in the same storage transaction, so the group's
records and blobs become durable together or not at all.  The files stay
the server's; it closes them once the group is answered.

The committer owns the queue and a bounded cache of oids known to be stored
(so that the allocation check rarely loads); it does not answer clients
itself: :meth:`run_group` returns the outcome of every commit and the server
sends the answers, invalidates the other clients [SRV-023] and resumes the
sessions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Generic, TypeVar

from dhruva import wire
from dhruva.error import DhruvaKeyError, ReadOnlyError
from dhruva.record import Record
from dhruva.storage import Storage
from dhruva.utils import ROOT_OID

log = logging.getLogger("dhruva.server")

_KNOWN_OIDS_MAX = 1 << 20
"""The most oids :class:`Committer` remembers as stored before it starts over."""

C = TypeVar("C")

BlobFiles = Sequence[tuple[bytes, BinaryIO]]
"""A commit's staged blobs: ``(oid, file)`` pairs, each file rewound [SRV-122]."""

QueuedCommit = tuple[C, list[Record], Sequence[bytes], BlobFiles]
"""A checked commit: the client, its records, its read set, its blobs."""


@dataclass(frozen=True)
class Refusal:
    """Why a commit is refused: an ERROR ``code``, its ``message`` and the ``oids`` at fault."""

    code: wire.ErrorCode
    message: str
    oids: list[bytes]


_CONFLICT = "objects changed by another client since your last sync"
_READ_CONFLICT = "objects this transaction read were changed by another client since your snapshot"


def conflict_refusal(
    written: Iterable[bytes], read: Iterable[bytes], changed: Container[bytes]
) -> Refusal | None:
    """The refusal of a commit whose ``written`` or ``read`` oids are in ``changed``, or None.

    Writes take precedence [SRV-105]: WRITE_CONFLICT names every written oid
    in ``changed``; without one, READ_CONFLICT names every read oid in it.
    """
    conflicts = sorted(oid for oid in written if oid in changed)
    if conflicts:
        return Refusal(wire.ErrorCode.WRITE_CONFLICT, _CONFLICT, conflicts)
    conflicts = sorted({oid for oid in read if oid in changed})
    if conflicts:
        return Refusal(wire.ErrorCode.READ_CONFLICT, _READ_CONFLICT, conflicts)
    return None


@dataclass
class Outcome(Generic[C]):
    """What became of one queued commit: ``stored`` oids, or ``refusal``."""

    client: C
    stored: set[bytes]
    refusal: Refusal | None = None


class _WrittenByOthers(Container[bytes], Generic[C]):
    """The oids an earlier commit of the group, by another client than ``client``, stores."""

    __slots__ = ("_client", "_written")

    def __init__(self, written: dict[bytes, C], client: C) -> None:
        self._written = written
        self._client = client

    def __contains__(self, oid: object) -> bool:
        writer = self._written.get(oid, self._client)  # type: ignore[call-overload]
        return writer is not self._client


class Committer(Generic[C]):
    """Checks commits, queues them, and writes each group in one storage transaction.

    ``C`` is whatever the server uses to name a client (the committer only
    keeps it and gives it back).  ``check_oids=False`` turns off the
    unallocated-oid check [SRV-022].
    """

    def __init__(self, storage: Storage, readonly: bool = False, check_oids: bool = True) -> None:
        self.storage = storage
        self.readonly = readonly
        self.check_oids = check_oids
        self._queue: list[QueuedCommit[C]] = []
        self._known_oids: set[bytes] = set()
        self.pending = False
        """True while commits wait for the next group."""

    def check(
        self,
        records: list[Record],
        invalid: set[bytes],
        allocated: set[bytes],
        reads: Sequence[bytes] = (),
    ) -> tuple[list[Record], Refusal | None]:
        """The records to write (last store of an oid wins), or why the commit is refused.

        ``invalid`` is the client's invalidation set, ``allocated`` the oids
        it was given, ``reads`` the oids its transaction read (READS).
        """
        if self.readonly and records:
            return [], Refusal(wire.ErrorCode.READ_ONLY, "the server is read-only", [])
        by_oid = {record.oid: record for record in records}
        if invalid:
            # [SRV-020] A commit storing an oid another client committed since
            # this client's last sync is refused; nothing of it is written.
            # [SRV-104] So is one that read such an oid.
            refusal = conflict_refusal(by_oid, reads, invalid)
            if refusal is not None:
                return [], refusal
        # [SRV-022] Only oids this client was given, or that are stored, may be
        # stored; the root oid is always allowed, since every database has one.
        if self.check_oids:
            unallocated = sorted(
                oid
                for oid in by_oid
                if oid not in allocated and oid != ROOT_OID and not self._exists(oid)
            )
            if unallocated:
                return [], Refusal(
                    wire.ErrorCode.UNALLOCATED_OID,
                    "the server never allocated these oids to this client",
                    unallocated,
                )
        return list(by_oid.values()), None

    def queue(
        self,
        client: C,
        records: list[Record],
        reads: Sequence[bytes] = (),
        blobs: BlobFiles = (),
    ) -> None:
        """Hold a checked commit (with its read set and its blobs) for the next group."""
        self._queue.append((client, records, reads, blobs))
        self.pending = True

    def take_group(self) -> list[QueuedCommit[C]]:
        """The queued commits, oldest first; the queue starts over empty."""
        group, self._queue = self._queue, []
        self.pending = False
        return group

    def _exists(self, oid: bytes) -> bool:
        if oid in self._known_oids:
            return True
        try:
            self.storage.load(oid)
        except DhruvaKeyError:
            return False
        self._remember([oid])
        return True

    def _remember(self, oids: Iterable[bytes]) -> None:
        if len(self._known_oids) >= _KNOWN_OIDS_MAX:
            self._known_oids.clear()
        self._known_oids.update(oids)

    def run_group(
        self,
        group: list[QueuedCommit[C]],
        before_write: Callable[[list[Outcome[C]]], None] | None = None,
    ) -> list[Outcome[C]]:
        """Write ``group`` (see the module docstring); the outcome of each commit, in order.

        ``before_write`` is called with the accepted commits once the
        conflicts are checked and before the storage transaction begins
        (the server sets the oldest snapshot then [SRV-101]).
        """
        outcomes: list[Outcome[C]] = []
        accepted: list[Outcome[C]] = []
        accepted_records: list[tuple[list[Record], BlobFiles]] = []
        written: dict[bytes, C] = {}
        for client, records, reads, blobs in group:
            if written:
                # As if the earlier commits of the group had run first [SRV-030]:
                # what they wrote is what this commit must not have written
                # [SRV-020] or read [SRV-104] at its snapshot.
                changed = _WrittenByOthers(written, client)
                refusal = conflict_refusal((r.oid for r in records), reads, changed)
                if refusal is not None:
                    outcomes.append(Outcome(client, set(), refusal))
                    continue
            for record in records:
                written[record.oid] = client
            outcome = Outcome(client, {record.oid for record in records})
            outcomes.append(outcome)
            accepted.append(outcome)
            accepted_records.append((records, blobs))
        if before_write is not None and accepted:
            before_write(accepted)
        if accepted and written:
            storage = self.storage
            try:
                storage.begin()
                try:
                    for records, blobs in accepted_records:
                        storage.store_many(records)
                        # [SRV-122] The blobs in the same transaction as the records.
                        for oid, file in blobs:
                            storage.store_blob(oid, file)
                    # [SRV-031] Nobody hears COMMITTED before end() returned.
                    storage.end()
                except BaseException:
                    storage.abort_transaction()
                    raise
            except Exception as error:
                # A failing storage must not take the server down; the group's
                # clients hear of it and nothing of the group was acknowledged.
                log.error("commit of %d clients failed: %s", len(accepted), error)
                code = wire.ErrorCode.STORAGE_FAILURE
                if isinstance(error, ReadOnlyError):
                    code = wire.ErrorCode.READ_ONLY
                refusal = Refusal(code, f"the storage failed to commit: {error}", [])
                for outcome in accepted:
                    outcome.stored = set()
                    outcome.refusal = refusal
                return outcomes
        for outcome in accepted:
            self._remember(outcome.stored)
        return outcomes
