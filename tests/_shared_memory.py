"""An in-memory database that several storage objects share: a test double.

Each :class:`SharedStorage` is one "client": it has its own read point and
sees the others' commits only at ``sync()``, exactly as the snapshot
contract of spec/storage-api.md says (SAPI-090..095): loads answer as of
the read point, ``end()`` refuses a transaction whose writes
(WriteConflictError) or declared reads (ReadConflictError) another storage
object committed after it.  It keeps every version, so any tid since the
start can be read.  The Connection's isolation tests use it to run several
connections in one process without a server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from dhruva.error import DhruvaError, DhruvaKeyError, ReadConflictError, WriteConflictError
from dhruva.storage import CAP_SNAPSHOTS, Record, Storage, check_record, check_snapshot_tid
from dhruva.utils import int8_to_str


class SharedDatabase:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tid = 0
        self.next_oid = 0
        # oid -> [(tid, record)], oldest first
        self.versions: dict[bytes, list[tuple[int, Record]]] = {}
        # (tid, oids) of every commit, oldest first
        self.commits: list[tuple[int, frozenset[bytes]]] = []

    def open(self) -> SharedStorage:
        return SharedStorage(self)

    def changed_since(self, tid: int) -> set[bytes]:
        changed: set[bytes] = set()
        for commit_tid, oids in reversed(self.commits):
            if commit_tid <= tid:
                break
            changed.update(oids)
        return changed


class SharedStorage(Storage):
    capabilities = frozenset({CAP_SNAPSHOTS})

    def __init__(self, db: SharedDatabase) -> None:
        self.db = db
        with db.lock:
            self.read_tid = db.tid
        self.pending: dict[bytes, Record] | None = None
        self.reads: list[bytes] = []
        self.unreported: set[bytes] = set()
        self.ends = 0

    def new_oid(self) -> bytes:
        with self.db.lock:
            oid = int8_to_str(self.db.next_oid)
            self.db.next_oid += 1
        return oid

    def load(self, oid: bytes) -> Record:
        return self.load_at(oid, self.read_tid)

    def load_at(self, oid: bytes, tid: int) -> Record:
        check_snapshot_tid(tid, self.read_tid)
        for version_tid, record in reversed(self.db.versions.get(oid, [])):
            if version_tid <= tid:
                return record
        raise DhruvaKeyError(oid)

    def last_tid(self) -> int:
        return self.read_tid

    def begin(self) -> None:
        if self.pending is not None:
            raise DhruvaError("a transaction is already open")
        self.pending = {}
        self.reads = []

    def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
        if self.pending is None:
            raise DhruvaError("store() outside a transaction")
        check_record(oid, data, refs)
        self.pending[oid] = Record(oid, bytes(data), refs)

    def note_reads(self, oids: Iterable[bytes]) -> None:
        if self.pending is None:
            raise DhruvaError("note_reads() outside a transaction")
        self.reads.extend(oids)

    def end(self) -> None:
        if self.pending is None:
            raise DhruvaError("end() without begin()")
        pending, self.pending = self.pending, None
        reads, self.reads = self.reads, []
        self.ends += 1
        db = self.db
        with db.lock:
            changed = db.changed_since(self.read_tid)
            written = sorted(oid for oid in pending if oid in changed)
            if written:
                raise WriteConflictError(written)
            read = sorted({oid for oid in reads if oid in changed})
            if read:
                raise ReadConflictError(read)
            if not pending:
                return
            db.tid += 1
            for oid, record in pending.items():
                db.versions.setdefault(oid, []).append((db.tid, record))
            db.commits.append((db.tid, frozenset(pending)))
            self.unreported |= changed
            self.read_tid = db.tid

    def abort_transaction(self) -> None:
        self.pending = None
        self.reads = []

    def sync(self) -> list[bytes]:
        with self.db.lock:
            changed = self.db.changed_since(self.read_tid) | self.unreported
            self.read_tid = self.db.tid
        self.unreported = set()
        return sorted(changed)

    def iter_oids(self) -> Iterator[bytes]:
        for oid in list(self.db.versions):
            try:
                self.load(oid)
            except DhruvaKeyError:
                continue
            yield oid
