"""SqliteStorage: a durable storage in one SQLite database (WAL mode).

Spec: ``spec/sqlite-storage.md`` (requirement prefix ``SQL``).

Theory of operation.  The database holds two tables: ``objects`` (one row per
oid: the record's data and packed reference list) and ``meta`` (named values;
today only the oid high-water mark).  The oid column is SQLite's rowid, the
oid's eight bytes read as a signed big-endian integer, so that lookups use the
table's own B-tree and small oids read naturally in the ``sqlite3`` shell.
``meta`` also holds ``last_tid``, the tid of the last commit (SQL-080).
Schema version 2 adds ``blob_chunks``: the blobs, one row per chunk of
each (oid, tid) version (SQL-090); a database gets it, and version 2, with
the first commit that stores a blob, so one without blobs stays version 1.

State of a storage object:

* ``_conn``: one sqlite3 connection in autocommit mode; this module issues
  ``BEGIN``/``COMMIT`` itself so that a dhruva transaction is exactly one
  SQLite transaction.
* ``_lock_fd``: a writable storage holds an exclusive ``flock`` on
  ``PATH.lock`` for as long as it is open (one writer per database).
* ``_next_oid``: the next oid ``new_oid()`` hands out.  It is above every
  stored oid and every oid this object handed out.  Each commit writes the
  high-water mark (``_next_oid - 1``) into ``meta`` inside the same SQLite
  transaction as its records, so an oid is never handed out again after a
  reopen or a crash, nor after a pack removed it.
* ``_pending``: the records of the open transaction, kept in Python until
  ``end()``; nothing of them reaches SQLite before then.  Blobs are the
  exception: ``store_blob`` writes its chunks at once, inside a write
  transaction it opens then and ``end()`` commits (``abort_transaction``
  rolls back), so a blob is never held in memory (SQL-091).
* ``_last_tid``: the read point (SAPI-090).  One writer per database, so it
  is the last commit; each commit writes it into ``meta`` in the same SQLite
  transaction as its records (SQL-080).  ``_ledger``: the versions older
  snapshots read (a VersionLedger, memory only), fed by ``end()`` only while
  one is held (SQL-081).

A read-only storage opens the file with ``mode=ro`` and keeps one read
transaction open from open to close: it sees one consistent snapshot even
while a writer in another process commits, and its ``last_tid()`` is that
snapshot's, fixed until close (SQL-082).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from dhruva.blob_chunks import open_reader, write_chunks
from dhruva.blob_store import blobs_without_records, no_blob
from dhruva.error import (
    CorruptionError,
    DhruvaError,
    DhruvaKeyError,
    FormatError,
    ReadOnlyError,
    StorageLockedError,
)
from dhruva.snapshots import VersionLedger, check_snapshot_tid
from dhruva.storage import (
    CAP_BLOBS,
    CAP_DURABLE,
    CAP_PACK,
    CAP_READONLY_OPEN,
    CAP_SNAPSHOTS,
    Record,
    Storage,
    check_oid,
    check_record,
)
from dhruva.utils import OID_SIZE, ROOT_OID, iter_oids, str_to_int8

#: The schema version of a database without blobs, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1
#: The schema version with the table ``blob_chunks`` (SQL-090).
BLOB_SCHEMA_VERSION = 2
#: The schema versions this module reads and writes.
SCHEMA_VERSIONS = (SCHEMA_VERSION, BLOB_SCHEMA_VERSION)
#: ``PRAGMA application_id``: "DHRV" as a big-endian u32, marks a dhruva database.
APPLICATION_ID = int.from_bytes(b"DHRV", "big")
assert APPLICATION_ID == 0x44485256
#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
assert len(SQLITE_MAGIC) == 16
#: Oids fetched per SELECT with an IN list; below the oldest SQLite limit of 999 variables.
BATCH_SIZE = 500
#: Name of the ``meta`` row holding the highest oid ever handed out or stored.
HIGH_WATER = "oid_high_water"
#: Name of the ``meta`` row holding the tid of the last commit (SQL-080).
LAST_TID = "last_tid"
#: Largest WAL file kept after a checkpoint (bytes); larger ones are truncated.
JOURNAL_SIZE_LIMIT_BYTES = 64 << 20

_OID_SPACE = 1 << 64

SCHEMA = (
    "CREATE TABLE objects (oid INTEGER PRIMARY KEY, data BLOB NOT NULL, refs BLOB NOT NULL)",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
)
#: What schema version 2 adds (SQL-090): chunk n of the blob oid stored by transaction tid.
BLOB_SCHEMA = (
    "CREATE TABLE blob_chunks (oid INTEGER NOT NULL, tid INTEGER NOT NULL, "
    "n INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (oid, tid, n))",
)


def oid_to_key(oid: bytes) -> int:
    """Return the rowid that stores ``oid``: its 8 bytes as a signed big-endian integer.

    Raises ValueError for anything but 8 bytes [SAPI-006]: ``int.from_bytes``
    would read b"\\0" * 9 as oid 0 and load the root for it.
    """
    check_oid(oid)
    return int.from_bytes(oid, "big", signed=True)


def key_to_oid(key: int) -> bytes:
    """Return the oid stored under rowid ``key`` (the inverse of :func:`oid_to_key`)."""
    return key.to_bytes(OID_SIZE, "big", signed=True)


def _unsigned(key: int) -> int:
    return key % _OID_SPACE


def _signed(number: int) -> int:
    return number - _OID_SPACE if number >= 1 << 63 else number


class SqliteStorage(Storage):
    """A durable storage kept in a SQLite database file (spec ``sqlite-storage.md``).

    ``SqliteStorage(path)`` creates the database when ``path`` does not exist.
    One writable storage per database at a time: a second one, in this
    process or another, raises :class:`StorageLockedError`.  Read-only opens
    (``readonly=True``) take no lock and see the database as it was when they
    opened, also while a writer commits.  :meth:`backup` writes a consistent
    copy while commits continue.
    """

    capabilities = frozenset({CAP_DURABLE, CAP_PACK, CAP_READONLY_OPEN, CAP_SNAPSHOTS, CAP_BLOBS})

    #: Test hook (spec PACK-040, SQL-064): called with each pack step's name.
    _pack_step_hook: Callable[[str], object] | None = None

    def __init__(self, path: str | os.PathLike[str], readonly: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self._pending: dict[bytes, tuple[int, bytes, bytes]] | None = None
        self._next_oid = 0
        self._stored_high_water: int | None = None
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._broken: str | None = None
        self._last_tid = 0
        # The schema version: 2 once the database has blob_chunks (SQL-090).
        self._schema_version = SCHEMA_VERSION
        # The oids whose blobs the open write transaction holds (SQL-091),
        # and why that transaction was lost, when a failed blob write lost it.
        self._staged_blobs: set[bytes] = set()
        self._blobs_lost: str | None = None
        try:
            if readonly:
                self._conn = self._open_readonly()
            else:
                self._lock_fd = self._take_write_lock()
                self._conn = self._open_writable()
            self._next_oid = self._find_next_oid()
            self._last_tid = self._find_last_tid()
        except BaseException:
            self._release()
            raise
        # [SAPI-098] Memory only: snapshots are answered from the open's last tid on.
        self._ledger = VersionLedger(self._last_tid)

    # --- opening ------------------------------------------------------------------

    def _take_write_lock(self) -> int:
        """Hold an exclusive flock on ``PATH.lock``; raise StorageLockedError if taken."""
        lock_path = self.path + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            # [SQL-030] One writer per database, across processes and within one.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageLockedError(
                f"{self.path} is open for writing elsewhere ({lock_path} is locked); close "
                "that storage, connect through its server, or open this one read-only"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_magic(self) -> None:
        """Refuse a file that is not a SQLite database before SQLite reads it."""
        try:
            with open(self.path, "rb") as source:
                head = source.read(len(SQLITE_MAGIC))
        except FileNotFoundError:
            return
        if head and head != SQLITE_MAGIC:
            # [SQL-041] Name the file and show what was found.
            raise FormatError(
                self.path,
                0,
                f"not a SQLite database: it starts with {head!r}, not {SQLITE_MAGIC!r}",
            )

    def _connect(self, uri: str) -> sqlite3.Connection:
        # isolation_level=None: this module writes BEGIN/COMMIT itself (SQL-020).
        # check_same_thread=False: a server may open the storage in one thread
        # and serve it from another; callers never use one storage concurrently.
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    def _open_writable(self) -> sqlite3.Connection:
        self._check_magic()
        conn = self._connect(Path(self.path).absolute().as_uri() + "?mode=rwc")
        with self._closed_on_failure(conn):
            # [SQL-043] Refuse another application's database before the
            # pragmas below change it (journal_mode=WAL rewrites the header).
            self._refuse_foreign(*self._identity(conn))
            # [SQL-010] auto_vacuum must be chosen before the first table exists;
            # on an existing database this pragma changes nothing.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise DhruvaError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")  # [SQL-011]
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
            self._check_schema(conn, create=True)
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such database to open read-only")
        self._check_magic()
        # [SQL-031] mode=ro: SQLite itself refuses every write to the file.
        conn = self._connect(Path(self.path).absolute().as_uri() + "?mode=ro")
        with self._closed_on_failure(conn):
            self._check_schema(conn, create=False)
            # [SQL-032] One snapshot from open to close.
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM meta").fetchone()
        return conn

    @contextlib.contextmanager
    def _closed_on_failure(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Close ``conn`` if the block raises; SQLite errors leave as DhruvaErrors."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._translate(exc) from exc
        except BaseException:
            conn.close()
            raise

    def _check_schema(self, conn: sqlite3.Connection, create: bool) -> None:
        """Create the schema in an empty database, or check the version of an existing one."""
        conn.execute("BEGIN IMMEDIATE" if create else "BEGIN")
        try:
            version, application_id, tables = self._identity(conn)
            if version == 0 and application_id == 0 and tables == 0:
                if not create:
                    raise FormatError(self.path, None, "an empty SQLite database, not a dhruva one")
                # [SQL-012] Creation is one SQLite transaction: a crash leaves
                # either no schema (the next open creates it) or all of it.
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            else:
                self._refuse_foreign(version, application_id, tables)
                if (
                    version >= BLOB_SCHEMA_VERSION
                    and not conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blob_chunks'"
                    ).fetchone()
                ):
                    raise FormatError(
                        self.path, None, f"schema version {version} but no table blob_chunks"
                    )
                self._schema_version = version
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _identity(conn: sqlite3.Connection) -> tuple[int, int, int]:
        """Return ``(user_version, application_id, table count)``; reads only the header."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        return int(version), int(application_id), int(tables)

    def _refuse_foreign(self, version: int, application_id: int, tables: int) -> None:
        """Raise FormatError unless the database is dhruva's, of this schema, or empty."""
        if version == 0 and application_id == 0 and tables == 0:
            return  # empty: a writable open initialises it
        if application_id != APPLICATION_ID:
            # [SQL-040]
            raise FormatError(
                self.path,
                None,
                f"a SQLite database but not a dhruva one (application_id {application_id:#x}, "
                f"expected {APPLICATION_ID:#x})",
            )
        if version not in SCHEMA_VERSIONS:
            # [SQL-040] An unknown schema version is refused before anything is read.
            raise FormatError(
                self.path,
                None,
                f"dhruva SQLite schema version {version}; this dhruva reads only versions "
                f"{' and '.join(map(str, SCHEMA_VERSIONS))} (upgrade dhruva to open it)",
            )

    def _find_next_oid(self) -> int:
        """Return one above the high-water mark and above every stored oid (SQL-050)."""
        conn = self._live()
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (HIGH_WATER,)).fetchone()
        high = -1 if row is None else _unsigned(row[0])
        self._stored_high_water = None if row is None else high
        # Rowids >= 2**63 as unsigned are negative; if any exist the highest of
        # them is the highest oid, otherwise the highest non-negative rowid is.
        top = conn.execute("SELECT max(oid) FROM objects WHERE oid < 0").fetchone()[0]
        if top is None:
            top = conn.execute("SELECT max(oid) FROM objects").fetchone()[0]
        if top is not None:
            high = max(high, _unsigned(top))
        return high + 1

    def _find_last_tid(self) -> int:
        """Return the tid of the last commit: the ``last_tid`` row, 0 without one (SQL-080)."""
        row = self._live().execute("SELECT value FROM meta WHERE name = ?", (LAST_TID,)).fetchone()
        return 0 if row is None else int(row[0])

    def _translate(self, exc: sqlite3.DatabaseError) -> DhruvaError:
        """Turn a SQLite error into the dhruva error that says what happened.

        Damage becomes CorruptionError naming the file (SQL-042); a file that
        is not a database FormatError; a lock held by another SQLite user
        StorageLockedError; anything else DhruvaError with SQLite's message.
        """
        text = str(exc)
        if "malformed" in text or "corrupt" in text:
            # [SQL-042] SQLite does not say where; integrity_check can.
            return CorruptionError(
                self.path, None, f"SQLite reports: {text}; run PRAGMA integrity_check to locate it"
            )
        if "not a database" in text:
            return FormatError(self.path, 0, f"not a SQLite database ({text})")
        if "locked" in text or "busy" in text:
            return StorageLockedError(f"{self.path}: {text} (another program is using it)")
        return DhruvaError(f"{self.path}: SQLite error: {text}")

    # --- state checks -----------------------------------------------------------

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DhruvaError(f"the storage {self.path} is closed")
        if self._broken is not None:
            raise DhruvaError(
                f"{self.path}: an earlier commit failed ({self._broken}); close and reopen it"
            )
        return self._conn

    def _writable(self) -> sqlite3.Connection:
        conn = self._live()
        if self.readonly:
            raise ReadOnlyError(f"{self.path} was opened read-only; writes are refused")
        return conn

    # --- the Storage interface ----------------------------------------------------

    def new_oid(self) -> bytes:
        self._writable()
        oid = self._next_oid
        if oid >= _OID_SPACE:
            raise DhruvaError(f"{self.path}: every 8-byte oid has been used")
        self._next_oid = oid + 1
        return oid.to_bytes(OID_SIZE, "big")

    def load(self, oid: bytes) -> Record:
        conn = self._live()
        try:
            row = conn.execute(
                "SELECT data, refs FROM objects WHERE oid = ?", (oid_to_key(oid),)
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        if row is None:
            raise DhruvaKeyError(oid)
        return Record(oid, row[0], row[1])

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[Record]:
        """Yield the records of ``oids`` in order, fetching ``BATCH_SIZE`` per SELECT.

        Raises DhruvaKeyError for the first missing oid when the iteration
        reaches it (SAPI-022).
        """
        conn = self._live()
        batch: list[bytes] = []
        for oid in oids:
            batch.append(oid)
            if len(batch) == BATCH_SIZE:
                yield from self._load_batch(conn, batch)
                batch = []
        if batch:
            yield from self._load_batch(conn, batch)

    def _load_batch(self, conn: sqlite3.Connection, batch: list[bytes]) -> Iterator[Record]:
        keys = sorted({oid_to_key(oid) for oid in batch})
        marks = ",".join("?" * len(keys))
        try:
            rows = conn.execute(
                f"SELECT oid, data, refs FROM objects WHERE oid IN ({marks})", keys
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        found = {key: (data, refs) for key, data, refs in rows}
        for oid in batch:
            entry = found.get(oid_to_key(oid))
            if entry is None:
                raise DhruvaKeyError(oid)
            yield Record(oid, entry[0], entry[1])

    # --- snapshots (spec: storage-api.md "Snapshots", SQL-080..SQL-083) ---------------

    def last_tid(self) -> int:
        """Return the tid of the last commit (a read-only storage: of its snapshot)."""
        self._live()
        return self._last_tid

    def load_at(self, oid: bytes, tid: int) -> Record:
        """Return ``oid``'s record as transaction ``tid`` left it (SAPI-092, SQL-081)."""
        self._live()
        return self._ledger.load_at(oid, tid, self._last_tid, self.load)

    def set_oldest_snapshot(self, tid: int | None) -> None:
        """Keep the versions snapshots at or after ``tid`` read (SAPI-093)."""
        self._live()
        self._ledger.set_floor(tid)

    def begin(self) -> None:
        self._writable()
        if self._pending is not None:
            raise DhruvaError("a transaction is already open")
        self._pending = {}
        self._blobs_lost = None

    # --- blobs (spec: blobs.md "Blobs in a database", SQL-090..SQL-093) ---------------

    def store_blob(self, oid: bytes, file: BinaryIO) -> None:
        """Write ``file``'s content as ``oid``'s blob of the open transaction (BLOB-010).

        The chunks go into SQLite now, inside the write transaction that
        ``end()`` commits and ``abort_transaction()`` rolls back (SQL-091);
        a second blob for the same oid replaces the first.  A failure while
        reading ``file`` or writing leaves the transaction as it was before.
        """
        conn = self._writable()
        if self._pending is None:
            raise DhruvaError("store_blob() outside a transaction; call begin() first")
        key = oid_to_key(oid)
        tid = self._last_tid + 1
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            if self._schema_version < BLOB_SCHEMA_VERSION:
                # [SQL-090] The first blob makes the database version 2, in the
                # transaction that commits it: rolled back with it, too.
                for statement in BLOB_SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={BLOB_SCHEMA_VERSION}")
                self._schema_version = BLOB_SCHEMA_VERSION
            conn.execute("SAVEPOINT store_blob")
        except sqlite3.DatabaseError as exc:
            self._lose_blobs(conn, str(exc))
            raise self._translate(exc) from exc
        try:
            conn.execute("DELETE FROM blob_chunks WHERE oid = ? AND tid = ?", (key, tid))
            write_chunks(
                file,
                lambda number, data: conn.execute(
                    "INSERT INTO blob_chunks (oid, tid, n, data) VALUES (?, ?, ?, ?)",
                    (key, tid, number, data),
                ),
            )
            conn.execute("RELEASE store_blob")
        except BaseException as exc:
            # Back to before this blob; the transaction's other blobs stay.
            # SQLite rolls a whole transaction back on some errors (a full
            # disk): then they are lost, and end() must not commit without them.
            try:
                if not conn.in_transaction:
                    raise sqlite3.OperationalError("SQLite rolled the transaction back")
                conn.execute("ROLLBACK TO store_blob")
                conn.execute("RELEASE store_blob")
            except sqlite3.Error as undo:
                self._lose_blobs(conn, f"{exc}; {undo}")
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._translate(exc) from exc
            raise
        self._staged_blobs.add(oid)

    def open_blob(self, oid: bytes, tid: int | None = None) -> BinaryIO:
        """Open ``oid``'s blob as of the read point or ``tid`` (BLOB-011, SQL-092)."""
        conn = self._live()
        key = oid_to_key(oid)
        if tid is None:
            tid = self._last_tid
        else:
            check_snapshot_tid(tid, self._last_tid)
        if self._schema_version < BLOB_SCHEMA_VERSION:
            raise no_blob(oid)
        try:
            # [SQL-092] The newest version at or below tid, and its last chunk's size.
            row = conn.execute(
                "SELECT tid, n, length(data) FROM blob_chunks WHERE oid = ? AND tid <= ? "
                "ORDER BY tid DESC, n DESC LIMIT 1",
                (key, tid),
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        if row is None:
            raise no_blob(oid)
        version, last, last_size = row

        def fetch(number: int) -> bytes | None:
            try:
                found = (
                    self._live()
                    .execute(
                        "SELECT data FROM blob_chunks WHERE oid = ? AND tid = ? AND n = ?",
                        (key, version, number),
                    )
                    .fetchone()
                )
            except sqlite3.DatabaseError as exc:
                raise self._translate(exc) from exc
            return None if found is None else bytes(found[0])

        where = f"the blob of oid {str_to_int8(oid)} stored by transaction {version} in {self.path}"
        return open_reader(fetch, last + 1, last_size, where)

    def _lose_blobs(self, conn: sqlite3.Connection, reason: str) -> None:
        """The write transaction holding the blobs is gone: end() must refuse (SQL-091)."""
        self._abort_write(conn)
        self._blobs_lost = reason

    def _abort_write(self, conn: sqlite3.Connection) -> None:
        """Roll back the open write transaction and forget its blobs.

        The schema version is read again: the rollback also undoes a move to
        version 2 made by the transaction's first blob.
        """
        self._staged_blobs = set()
        if self.readonly:
            return
        self._rollback(conn)
        if self._broken is None:
            with contextlib.suppress(sqlite3.Error):
                self._schema_version = int(conn.execute("PRAGMA user_version").fetchone()[0])

    def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
        self._writable()
        if self._pending is None:
            raise DhruvaError("store() outside a transaction; call begin() first")
        check_record(oid, data, refs)
        self._pending[oid] = (oid_to_key(oid), bytes(data), refs)

    def end(self) -> None:
        """Commit the open transaction as one durable SQLite transaction (SQL-020).

        Raises DhruvaError without an open transaction, and the SQLite error
        (translated where it reports damage) when the commit fails; nothing of
        the transaction is then visible, now or after a reopen.
        """
        conn = self._writable()
        pending = self._pending
        if pending is None:
            raise DhruvaError("end() without begin()")
        self._pending = None
        staged, self._staged_blobs = self._staged_blobs, set()
        lost, self._blobs_lost = self._blobs_lost, None
        if lost is not None:
            # [BLOB-010] The blobs went with a failed write: commit none of it.
            self._abort_write(conn)
            raise DhruvaError(
                f"{self.path}: this transaction's blobs were lost when a blob write failed "
                f"({lost}); nothing was written, abort it and commit again"
            )
        orphans = blobs_without_records(staged, pending)
        if orphans is not None:
            # [BLOB-010] Nothing of the transaction is written.
            self._abort_write(conn)
            raise orphans
        if not pending:
            if conn.in_transaction:
                self._abort_write(conn)  # a store_blob that failed left it open
            return  # An empty transaction changes nothing and writes nothing.
        # [SQL-050] Persist the high-water mark with the records that use it.
        next_oid = max(self._next_oid, max(int.from_bytes(oid, "big") for oid in pending) + 1)
        high_water = next_oid - 1
        tid = self._last_tid + 1
        ledger = self._ledger
        previous: list[tuple[bytes, Record | None]] = []
        try:
            if not conn.in_transaction:  # store_blob may have opened it (SQL-091)
                conn.execute("BEGIN IMMEDIATE")
            try:
                if ledger.wanted(tid):
                    # [SQL-081] Only while an older snapshot is held; read in
                    # the write transaction, so they are exactly what it replaces.
                    previous = self._previous_versions(conn, list(pending))
                conn.executemany(
                    "INSERT OR REPLACE INTO objects (oid, data, refs) VALUES (?, ?, ?)",
                    pending.values(),
                )
                # [SQL-080] The tid is committed with the records it names
                # (one statement with the high-water mark when that moves).
                if high_water != self._stored_high_water:
                    conn.execute(
                        "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?), (?, ?)",
                        (LAST_TID, tid, HIGH_WATER, _signed(high_water)),
                    )
                else:
                    conn.execute(
                        "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (LAST_TID, tid)
                    )
                # [SQL-020] [SQL-011] COMMIT returns once the WAL frames are fsynced.
                conn.execute("COMMIT")
            except BaseException:
                self._abort_write(conn)
                raise
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        self._next_oid = next_oid
        self._stored_high_water = high_water
        ledger.supersede(tid, previous)
        self._last_tid = tid

    def _previous_versions(
        self, conn: sqlite3.Connection, oids: list[bytes]
    ) -> list[tuple[bytes, Record | None]]:
        """Return the current record of each oid (None for a new one), for the ledger."""
        found: dict[bytes, Record] = {}
        for start in range(0, len(oids), BATCH_SIZE):
            batch = oids[start : start + BATCH_SIZE]
            marks = ",".join("?" * len(batch))
            for key, data, refs in conn.execute(
                f"SELECT oid, data, refs FROM objects WHERE oid IN ({marks})",
                [oid_to_key(oid) for oid in batch],
            ):
                found[key_to_oid(key)] = Record(key_to_oid(key), data, refs)
        return [(oid, found.get(oid)) for oid in oids]

    def _rollback(self, conn: sqlite3.Connection) -> None:
        """Roll back a failed write; a failing rollback leaves the storage refusing work."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            self._broken = f"ROLLBACK failed: {exc}"

    def abort_transaction(self) -> None:
        self._pending = None
        self._blobs_lost = None
        conn = self._conn
        if not self.readonly and conn is not None and conn.in_transaction:
            # [BLOB-014] The blobs store_blob wrote go with the transaction.
            self._abort_write(conn)

    def sync(self) -> list[bytes]:
        """Return []: a writable storage is the only writer; a read-only one sees a snapshot.

        Neither moves the read point ([SQL-082]).
        """
        self._live()
        return []

    def iter_oids(self) -> Iterator[bytes]:
        conn = self._live()
        keys = conn.execute("SELECT oid FROM objects").fetchall()
        return iter([key_to_oid(key) for (key,) in keys])

    def get_size(self) -> int:
        count: int = self._live().execute("SELECT count(*) FROM objects").fetchone()[0]
        return count

    def close(self) -> None:
        self._pending = None
        self._release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            conn.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing releases the flock, after SQLite let go of the file

    def __repr__(self) -> str:
        mode = " readonly" if self.readonly else ""
        return f"<{type(self).__name__} {self.path!r}{mode}>"

    # --- pack ----------------------------------------------------------------------

    def pack(self) -> None:
        """Delete every record not reachable from the root, in one SQLite transaction.

        Marks by following the ``refs`` column from the root (records are
        never deserialized), deletes the rest, commits, then returns the freed
        pages to the file system.  A crash before the commit leaves the old
        database, after it the new one (SQL-060..SQL-062).
        """
        conn = self._writable()
        if self._pending is not None:
            raise DhruvaError("pack() during a transaction; end or abort it first")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._pack_step("begun")
                garbage = self._unreachable_keys(conn)
                self._pack_step("marked")
                for start in range(0, len(garbage), BATCH_SIZE):
                    conn.executemany(
                        "DELETE FROM objects WHERE oid = ?",
                        ((key,) for key in garbage[start : start + BATCH_SIZE]),
                    )
                    self._pack_step("deleted")
                if self._schema_version >= BLOB_SCHEMA_VERSION:
                    self._collect_blobs(conn)
                # [SQL-061] The one commit point of a pack.
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
            self._pack_step("committed")
            # [SQL-062] Moving free pages to the end and truncating the file is
            # SQLite's own transaction; a crash in it changes no record.
            # incremental_vacuum frees one page per step of its statement and
            # execute() steps once; executescript() steps it to the end.
            conn.executescript("PRAGMA incremental_vacuum;")
            self._pack_step("vacuumed")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._pack_step("checkpointed")
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc

    def _collect_blobs(self, conn: sqlite3.Connection) -> None:
        """Delete the blob versions no reader can reach (SQL-093, BLOB-013).

        The blobs of oids the pack removed go, and of every other oid the
        versions superseded at or before the oldest snapshot held: the newest
        version at or below it and every later one stay.
        """
        floor = self._ledger.floor
        oldest = self._last_tid if floor is None else min(floor, self._last_tid)
        conn.execute("DELETE FROM blob_chunks WHERE oid NOT IN (SELECT oid FROM objects)")
        conn.execute(
            "DELETE FROM blob_chunks WHERE tid < (SELECT max(kept.tid) FROM blob_chunks AS kept "
            "WHERE kept.oid = blob_chunks.oid AND kept.tid <= ?)",
            (oldest,),
        )

    def _pack_step(self, name: str) -> None:
        """Call the test hook at a pack step boundary (SQL-064)."""
        hook = self._pack_step_hook
        if hook is not None:
            hook(name)  # [SQL-064] [PACK-040]

    def _unreachable_keys(self, conn: sqlite3.Connection) -> list[int]:
        """Return the rowids of records not reachable from the root (SQL-060)."""
        seen = {oid_to_key(ROOT_OID)}
        todo = [oid_to_key(ROOT_OID)]
        # [SQL-083] [SAPI-096] What the versions kept for held snapshots
        # reference is marked like what the root reaches.
        for refs in self._ledger.kept_refs():
            for ref in iter_oids(refs):
                key = oid_to_key(ref)
                if key not in seen:
                    seen.add(key)
                    todo.append(key)
        while todo:
            batch, todo = todo[-BATCH_SIZE:], todo[:-BATCH_SIZE]
            marks = ",".join("?" * len(batch))
            for (refs,) in conn.execute(
                f"SELECT refs FROM objects WHERE oid IN ({marks})", batch
            ).fetchall():
                for ref in iter_oids(refs):
                    key = oid_to_key(ref)
                    if key not in seen:
                        seen.add(key)
                        todo.append(key)
        return [key for (key,) in conn.execute("SELECT oid FROM objects") if key not in seen]

    # --- online backup -------------------------------------------------------------

    def backup(
        self,
        dest_path: str | os.PathLike[str],
        pages: int = -1,
        progress: Callable[[int, int, int], object] | None = None,
    ) -> None:
        """Write a consistent copy of the database to ``dest_path``; see :func:`backup`."""
        self._live()
        backup(self.path, dest_path, pages=pages, progress=progress)


def backup(
    source_path: str | os.PathLike[str],
    dest_path: str | os.PathLike[str],
    pages: int = -1,
    progress: Callable[[int, int, int], object] | None = None,
) -> None:
    """Copy the dhruva SQLite database at ``source_path`` to ``dest_path`` (SQL-070).

    Uses SQLite's online backup API through a read-only connection of its
    own, so the writer (in this process or another) keeps committing.  With
    ``pages=-1`` the whole database is copied in one step inside one read
    transaction; with ``pages=N`` it is copied N pages per step and SQLite
    restarts the copy whenever another connection commits meanwhile.  Either
    way the copy holds the state after some prefix of the commits.  The copy
    is written to ``DEST.partial``, synced and renamed to ``dest_path``, so
    ``dest_path`` never names a half-written copy.  Raises FileExistsError if
    ``dest_path`` exists.  ``progress(status, remaining, total)`` is called
    after each step.
    """
    source_path = os.fspath(source_path)
    dest_path = os.fspath(dest_path)
    if os.path.exists(dest_path):
        raise FileExistsError(f"{dest_path} exists; backup never overwrites a file")
    # Opening read-only checks that the source is a dhruva database of a known version.
    SqliteStorage(source_path, readonly=True).close()
    partial = dest_path + ".partial"
    for leftover in (partial, partial + "-wal", partial + "-shm", partial + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)
    source = sqlite3.connect(Path(source_path).absolute().as_uri() + "?mode=ro", uri=True)
    try:
        target = sqlite3.connect(partial)
        try:
            source.backup(target, pages=pages, progress=progress)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    except sqlite3.Error as exc:
        # A destination folder that does not exist or cannot be written, a
        # full disk: SQLite's message alone does not say which file.
        for leftover in (partial, partial + "-wal", partial + "-shm", partial + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
        raise DhruvaError(f"cannot write the copy {partial}: {exc}") from None
    finally:
        source.close()
    with open(partial, "rb") as copied:
        os.fsync(copied.fileno())
    os.replace(partial, dest_path)
    directory = os.open(os.path.dirname(os.path.abspath(dest_path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
