"""The versions that open snapshots still read: a ledger a storage keeps (SAPI-090..099).

Spec: ``spec/storage-api.md``, "Snapshots".

Theory of operation.  A storage with the capability ``snapshots`` answers
``load_at(oid, tid)``: the record of ``oid`` as the transaction ``tid`` left
it.  Its current records answer every snapshot at or after the last commit;
a snapshot before a later commit also needs the versions that commit
replaced.  The storage keeps those in a :class:`VersionLedger`:

* Each commit that replaces or creates records while a snapshot older than
  it is held (``wanted(tid)``) hands the ledger the *previous* version of
  each oid it stores (a Record, or None when the oid had no record), with
  the commit's tid: the version was current until that tid.
* ``lookup(oid, tid)`` walks the oid's entries from the oldest: the first
  entry superseded *after* ``tid`` is the version ``tid`` saw (None: the oid
  did not exist then); no such entry means the current record is it.
* ``set_floor(tid)`` says the oldest snapshot still held.  An entry
  superseded at or before the floor is read by no held snapshot and is
  dropped.  ``set_floor(None)`` (no snapshot older than the latest) drops all.
* ``kept_refs()`` yields the reference lists of the kept versions: a pack
  follows them as well as the current records' (SAPI-096), so that an
  object an old version references stays loadable at that version's tid.
* The ledger is memory only.  Nothing of it reaches a file, so a crash or a
  close forgets it, and a reopened storage answers snapshots from its last
  tid on (``start_tid``), which is all a new reader can hold.
* The ledger is bounded (``limit_bytes``).  Beyond it, the oldest entries
  are dropped and ``oldest`` moves past them: a snapshot older than
  ``oldest`` can no longer be answered correctly, so ``lookup`` raises
  SnapshotTooOldError for it (for every oid: which oids it would miss is
  not known), never a wrong record.  A commit made while no older snapshot
  was held moves ``oldest`` as well, for the same reason.

The ledger interprets nothing: records are opaque bytes (DM-004).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from dhruva.error import DhruvaKeyError, SnapshotTooOldError
from dhruva.record import Record

#: Default bound of the bytes the ledger keeps (record data and references).
DEFAULT_LIMIT_BYTES = 64 << 20

#: ``lookup`` answer meaning "the current record is the version asked for".
CURRENT = object()


def check_snapshot_tid(tid: int, last: int) -> None:
    """Refuse a ``load_at`` tid that is not an int or is past the read point (SAPI-092)."""
    if type(tid) is not int:
        raise TypeError(f"a tid is an int, not {type(tid).__name__}")
    if not 0 <= tid <= last:
        raise ValueError(f"tid {tid} is not a committed transaction up to the read point {last}")


class VersionLedger:
    """Records replaced since the oldest held snapshot, for ``load_at``.

    ``start_tid`` is the storage's last tid when the ledger starts: snapshots
    at or after it can be answered, older ones cannot.
    """

    def __init__(self, start_tid: int = 0, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        if limit_bytes < 0:
            raise ValueError(f"limit_bytes must be >= 0, not {limit_bytes}")
        self.limit_bytes = limit_bytes
        # oid -> [(superseded_at, previous record or None)], oldest first.
        self._versions: dict[bytes, list[tuple[int, Record | None]]] = {}
        # (superseded_at, oid, size) in commit order, for pruning.
        self._order: deque[tuple[int, bytes, int]] = deque()
        self._bytes = 0
        self._floor: int | None = None
        # The latest commit the ledger was told about.
        self._latest = start_tid
        #: The oldest snapshot the ledger can still answer.
        self.oldest = start_tid

    @property
    def floor(self) -> int | None:
        """The oldest snapshot a reader said it holds, or None."""
        return self._floor

    @property
    def kept_bytes(self) -> int:
        """The bytes of record data and references kept now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._order)

    def wanted(self, tid: int) -> bool:
        """Whether a commit with ``tid`` must hand over the versions it replaces."""
        return self._floor is not None and self._floor < tid and self.limit_bytes > 0

    def supersede(self, tid: int, previous: Iterable[tuple[bytes, Record | None]]) -> None:
        """Note that the commit ``tid`` replaced these versions (None: the oid was new).

        Call it for every commit, also when ``wanted(tid)`` is false (then
        with nothing): a commit whose old versions are not kept makes every
        snapshot before it unanswerable.
        """
        if tid > self._latest:
            self._latest = tid
        if not (self._floor is not None and self._floor < tid and self.limit_bytes > 0):
            # Not wanted(tid), inline: every commit comes here.
            if tid > self.oldest:
                self.oldest = tid
            return
        versions = self._versions
        order = self._order
        for oid, record in previous:
            size = 0 if record is None else len(record.data) + len(record.refs) + 64
            versions.setdefault(oid, []).append((tid, record))
            order.append((tid, oid, size))
            self._bytes += size
        if self._bytes > self.limit_bytes:
            self._drop_oldest_until(lambda: self._bytes <= self.limit_bytes)

    def lookup(self, oid: bytes, tid: int) -> object:
        """Return the version of ``oid`` snapshot ``tid`` reads.

        A Record, None (the oid had no record at ``tid``), or :data:`CURRENT`.
        Raises SnapshotTooOldError when ``tid`` is older than :attr:`oldest`.
        """
        if tid < self.oldest:
            raise SnapshotTooOldError(tid, self.oldest)
        entries = self._versions.get(oid)
        if entries:
            for superseded_at, record in entries:
                if superseded_at > tid:
                    return record
        return CURRENT

    def kept_refs(self) -> Iterator[bytes]:
        """Yield the packed reference list of every kept version (for pack, SAPI-096).

        The versions "the oid had no record" (None) reference nothing and are
        skipped.  The lists are those of the moment of the call; a pack that
        runs while commits continue also follows the records those commits
        write, which covers the versions they hand the ledger later.
        """
        for entries in list(self._versions.values()):
            for _superseded_at, record in entries:
                if record is not None and record.refs:
                    yield record.refs

    def forget_before(self, tid: int) -> None:
        """Make every snapshot before ``tid`` unanswerable (its versions could not be kept).

        For a storage that could not read what a commit replaced (a lost
        connection): those snapshots then get SnapshotTooOldError, never a
        version another tid saw.
        """
        self._latest = max(self._latest, tid)
        self.oldest = max(self.oldest, tid)
        order = self._order
        while order and order[0][0] <= tid:
            self._pop_oldest()

    def load_at(
        self, oid: bytes, tid: int, last_tid: int, load: Callable[[bytes], Record]
    ) -> Record:
        """``Storage.load_at`` for a storage whose current records ``load`` reads (SAPI-092).

        ``last_tid`` is the storage's read point; raises DhruvaKeyError when
        ``oid`` had no record at ``tid``, SnapshotTooOldError when the
        versions are no longer kept.
        """
        check_snapshot_tid(tid, last_tid)
        version = self.lookup(oid, tid)
        if version is CURRENT:
            return load(oid)
        if version is None:
            raise DhruvaKeyError(oid)
        assert isinstance(version, Record)
        return version

    def set_floor(self, tid: int | None) -> None:
        """Say the oldest snapshot still held (None: none older than the latest).

        Snapshots older than that are not answered any more (``oldest`` moves).
        """
        self._floor = tid
        if tid is None:
            self._versions.clear()
            self._order.clear()
            self._bytes = 0
            self.oldest = max(self.oldest, self._latest)
            return
        self.oldest = max(self.oldest, min(tid, self._latest))
        order = self._order
        while order and order[0][0] <= tid:
            self._pop_oldest()

    def _drop_oldest_until(self, enough: object) -> None:
        assert callable(enough)
        while self._order and not enough():
            superseded_at = self._pop_oldest()
            # A snapshot before superseded_at would now read a later version.
            self.oldest = max(self.oldest, superseded_at)

    def _pop_oldest(self) -> int:
        superseded_at, oid, size = self._order.popleft()
        entries = self._versions[oid]
        del entries[0]
        if not entries:
            del self._versions[oid]
        self._bytes -= size
        return superseded_at
