"""PostgresStorage: many processes share one dhruva database in PostgreSQL.

Spec: ``spec/postgres-storage.md`` (requirement prefix ``PG``).

Theory of operation.  The database lives in four tables and one sequence of
one PostgreSQL schema (``dhruva_meta``, ``dhruva_object``,
``dhruva_transaction``, ``dhruva_oid``, ``dhruva_tid_seq``).  Any number of
processes, on any hosts, open it directly; there is no dhruva server between
them, and PostgreSQL is the only thing they share.

* Every commit gets a *tid* from ``dhruva_tid_seq`` while it holds the
  *commit lock*, a transaction-level advisory lock keyed on the schema, which
  PostgreSQL releases only after the commit is visible.  So tids are
  committed in increasing order: once a reader sees tid *t* in
  ``dhruva_transaction``, every smaller tid is either visible or never will
  be (PG-020).
* Each storage object remembers ``_sync_tid``, the highest tid it has
  synchronized to.  The oids other processes committed since then -- its
  *invalidation set*, exactly the storage server's (SRV-020, SRV-021) -- are
  the ``oids`` of the ``dhruva_transaction`` rows above ``_sync_tid``.
* Snapshot reads (PG-080..PG-089).  Loads go to a second connection, the
  *reader*, which holds one ``REPEATABLE READ READ ONLY`` transaction whose
  first statement is the poll that fixed ``_sync_tid``: PostgreSQL's own
  snapshot of that statement is then exactly "every commit up to
  ``_sync_tid``" (commits are tid-ordered under the commit lock, PG-020), so
  ``load`` returns the version as of the read point whatever others commit
  meanwhile, and PostgreSQL keeps the old row versions for it (also across a
  pack's DELETE).  ``sync()`` ends that transaction and starts the next one
  with the next poll.  This is RelStorage's "load connection"; the
  alternative, keeping superseded rows in a table of their own, would write
  every commit twice and need its own pruning, while PostgreSQL's MVCC
  already keeps exactly the row versions open snapshots can see.
* ``end`` takes the commit lock, reads the invalidation set, refuses the
  commit with WriteConflictError if it stores one of those oids (PG-030),
  and with ReadConflictError if it declared (``note_reads``) one of them
  (PG-084), else writes the rows, one ``dhruva_transaction`` row and the
  oid high-water mark, and commits.  Then the reader starts its next
  snapshot at once: normally exactly this commit; when another process
  committed in between, the read point moves on to that snapshot as a sync
  would (PG-082).
  The invalidation set it read is handed out by the next ``sync()`` without
  another query (the server does the same with COMMITTED).
* Reads below the read point (``load_at``, the storage server's clients):
  while ``set_oldest_snapshot`` holds an older snapshot, each move of the
  read point first reads, in the old snapshot, the versions the move
  replaces (the oids of this object's commit and of the others' commits it
  passes) and hands them to a VersionLedger (PG-086).  A ``sync()`` then
  uses a third connection: the next snapshot is started there, the
  replaced versions read from the old one, and the two change places.
* Oids come in blocks from the one-row table ``dhruva_oid`` (an UPDATE
  under a row lock: transactional and monotone, unlike a sequence's
  ``setval``, see the spec).
* Blobs (PG-090..PG-095) are rows of ``dhruva_blob_chunk``, 1 MiB each, in
  blobs.md's layout.  ``store_blob`` streams them in at once, in a
  PostgreSQL transaction of their own, under a negative *staging tid* that
  no reader ever selects; the commit's pipeline turns them into the commit's
  rows with one ``UPDATE ... SET tid`` (PostgreSQL keeps the TOASTed bytes
  where they are), so the commit lock is held for a few small row updates,
  not for the upload.  An aborted or failed transaction deletes its staged
  rows; those of a process that died are deleted by a pack once they are
  older than ``BLOB_STAGE_RETENTION_S``.  The table, and schema version 2,
  come with the first blob.
* Nothing here unpickles: records are opaque bytes, references a packed
  list of oids read only by pack.

The connections are psycopg 3 in autocommit mode; each dhruva commit is one
explicit PostgreSQL transaction.  A connection that breaks is dropped and
the next call opens a new one (PG-052), so the storage is usable again once
the server is back.  A new reader cannot get the lost snapshot back: its
snapshot is at a later tid, and a row it finds committed after the read
point is answered from the VersionLedger or refused with
SnapshotTooOldError, never returned (PG-088).  A commit whose COMMIT was sent but whose answer was
lost is *in doubt*; it is resolved on the new connection by looking for its
tid after taking the commit lock, which waits for the old backend's
transaction to end (PG-053).
"""

from __future__ import annotations

import contextlib
import secrets
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from dhruva.blob_chunks import open_reader, write_chunks
from dhruva.blob_store import blobs_without_records, no_blob
from dhruva.error import (
    AuthenticationError,
    CorruptionError,
    DhruvaError,
    DhruvaKeyError,
    FormatError,
    ReadConflictError,
    ReadOnlyError,
    SnapshotTooOldError,
    WriteConflictError,
)
from dhruva.snapshots import CURRENT, VersionLedger
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
    check_snapshot_tid,
)
from dhruva.utils import OID_SIZE, iter_oids, str_to_int8

if TYPE_CHECKING:
    import psycopg

#: The schema version of a database without blobs (``dhruva_meta.schema_version``).
SCHEMA_VERSION = 1
#: The schema version with the table ``dhruva_blob_chunk`` (PG-090).
BLOB_SCHEMA_VERSION = 2
#: The schema versions this module reads and writes.
SCHEMA_VERSIONS = (SCHEMA_VERSION, BLOB_SCHEMA_VERSION)
#: The table of blob chunks (schema version 2).
BLOB_TABLE = "dhruva_blob_chunk"
#: Staged blob chunks older than this, left by a process that died, go at the next pack (s).
BLOB_STAGE_RETENTION_S = 86400.0
#: ``dhruva_meta.application_id``: marks the tables as a dhruva database's.
APPLICATION_ID = "dhruva"
#: Every relation dhruva creates in its schema.
TABLES = ("dhruva_meta", "dhruva_object", "dhruva_transaction", "dhruva_oid")
SEQUENCE = "dhruva_tid_seq"
#: High 32 bits of the advisory lock keys: "DHRV" (commit lock) and "DHRW" (creation).
COMMIT_LOCK_CLASS = int.from_bytes(b"DHRV", "big")
CREATE_LOCK_CLASS = int.from_bytes(b"DHRW", "big")
assert COMMIT_LOCK_CLASS == 0x44485256 and CREATE_LOCK_CLASS < 1 << 31
#: The first block of oids a storage allocates; later blocks double up to OID_BLOCK_MAX.
OID_BLOCK_MIN = 64
OID_BLOCK_MAX = 8192
#: Records a storage keeps from its last loads until the next sync (see ``load``).
RECENT_MAX = 256
#: Oids fetched per SELECT by bulk_load.
BATCH_SIZE = 1000
#: Transaction log rows younger than this are kept by pack (seconds).
LOG_RETENTION_S = 3600.0
#: The pip extra that installs psycopg.
EXTRA = "pip install 'dhruva[postgres]'"

_OID_SPACE = 1 << 64
_KEY = struct.Struct(">q")
assert _KEY.size == OID_SIZE


class PostgresError(DhruvaError):
    """PostgreSQL refused an operation; ``sqlstate`` is its five-character code or None."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class PostgresConnectionError(PostgresError):
    """The PostgreSQL server cannot be reached, or the connection to it was lost.

    The storage stays usable: the next call connects again (PG-052).
    """


class CommitInDoubtError(PostgresConnectionError):
    """The connection was lost after COMMIT was sent and could not be re-established.

    ``tid`` names the commit: it took effect if and only if
    ``dhruva_transaction`` has a row with that tid (PG-053).
    """

    def __init__(self, message: str, tid: int) -> None:
        super().__init__(message, None)
        self.tid = tid


@dataclass
class DatabaseCheck:
    """What :meth:`PostgresStorage.check` found (PG-072)."""

    objects: int
    record_bytes: int
    #: Records whose reference list is not a whole number of 8-byte oids.
    bad_refs: int
    has_root: bool
    #: (oid, referenced oid) pairs whose target has no record, at most ``limit``.
    dangling: list[tuple[bytes, bytes]]
    reachable: int
    reachable_bytes: int
    #: ``pg_total_relation_size`` of ``dhruva_object``: heap, TOAST and index.
    table_bytes: int


def _psycopg() -> Any:
    """Import psycopg, or raise DhruvaError saying how to install it (PG-001)."""
    try:
        import psycopg
    except ImportError:
        raise DhruvaError(
            f"PostgresStorage needs psycopg 3, which is not installed; run {EXTRA}"
        ) from None
    return psycopg


def oid_to_key(oid: bytes) -> int:
    """Return the ``bigint`` key of ``oid``: its 8 bytes as a signed big-endian integer."""
    check_oid(oid)
    key: int = _KEY.unpack(oid)[0]
    return key


def key_to_oid(key: int) -> bytes:
    """Return the oid stored under ``key`` (the inverse of :func:`oid_to_key`)."""
    return _KEY.pack(key)


def _ident(name: str) -> str:
    """Quote ``name`` as a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _redact(dsn: str) -> str:
    """Return ``dsn`` without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(dsn)
        if "password" in params:
            params["password"] = "***"
        return str(make_conninfo("", **params))
    except Exception:
        return "<connection string>"


class PostgresStorage(Storage):
    """A durable storage in a PostgreSQL database, shared by many processes.

    ``PostgresStorage(dsn)`` connects with the libpq connection string
    ``dsn`` (``"host=db.example dbname=app user=app"`` or
    ``"postgresql://app@db.example/app"``), creates the dhruva tables in the
    connection's current schema, or in ``schema`` when given, on first use,
    and refuses a schema that holds another application's tables
    (FormatError).  ``readonly=True`` refuses writes with ReadOnlyError.
    Raises PostgresConnectionError when the server cannot be reached,
    AuthenticationError when it refuses the credentials, DhruvaError naming
    the pip extra when psycopg is not installed.
    """

    capabilities = frozenset({CAP_DURABLE, CAP_PACK, CAP_READONLY_OPEN, CAP_SNAPSHOTS, CAP_BLOBS})

    #: Test hook (spec PACK-040): called with each pack step's name.
    _pack_step_hook: Callable[[str], object] | None = None

    def __init__(
        self,
        dsn: str,
        schema: str | None = None,
        readonly: bool = False,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._pg = _psycopg()
        self.dsn = dsn
        self.readonly = readonly
        self.connect_timeout_s = connect_timeout_s
        self._where = _redact(dsn)
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._pending: dict[int, tuple[bytes, bytes]] | None = None
        self._oid_pool: list[int] = []  # unsigned oids, next one last
        self._oid_block = OID_BLOCK_MIN
        self._invalidated: set[int] = set()  # keys found at commit, handed out by sync()
        self._commit_lock_key = 0
        self._recent: dict[bytes, Record] = {}
        # The reader: its open REPEATABLE READ transaction is the snapshot of
        # the tid _reader_tid, which is _sync_tid unless the reader was lost
        # and replaced (PG-088).  _spare: the next reader, for a sync that
        # must read the versions it replaces (PG-086).
        self._reader: psycopg.Connection[Any] | None = None
        self._spare: psycopg.Connection[Any] | None = None
        self._reader_tid = 0
        self._reads: set[int] = set()  # keys declared by note_reads (PG-084)
        self._sync_tid = 0
        # 2 once the schema has dhruva_blob_chunk (PG-090).
        self._schema_version = SCHEMA_VERSION
        # The open transaction's staged blobs (PG-091): the staging tid, the
        # connection that wrote them, and the chunk count of each oid key.
        self._stage_tid: int | None = None
        self._stage_conn: psycopg.Connection[Any] | None = None
        self._staged_blobs: dict[int, int] = {}
        try:
            conn = self._connection()
            self.schema = schema if schema is not None else self._current_schema(conn)
            self._q = _ident(self.schema) + "."
            self._open_schema(conn, create=not readonly)
            self._sync_tid = self._snapshot_reader()[1]  # [PG-080]
        except BaseException:
            self._drop_connection()
            self._drop_readers()
            raise
        self._ledger = VersionLedger(self._sync_tid)
        # Read points this object had at or after the ledger's oldest (PG-087).
        self._read_points: list[int] = [self._sync_tid]

    # --- connecting ---------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """Return the live connection, connecting first when there is none (PG-052)."""
        if self._closed:
            raise DhruvaError(f"the storage on {self._where} is closed")
        live = self._conn
        if live is not None and not live.closed and not live.broken:
            return live
        self._drop_connection()
        self._conn = self._open_connection()
        return self._conn

    def _open_connection(self) -> psycopg.Connection[Any]:
        """Open and configure one connection (the committer's or a reader)."""
        pg = self._pg
        try:
            conn: psycopg.Connection[Any] = pg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout_s)),
                application_name="dhruva",
            )
        except pg.Error as exc:
            raise self._translate(exc, "connect") from None
        try:
            # [PG-040] An acknowledged commit is flushed to the server's disk:
            # refuse to run with synchronous_commit off.
            setting = conn.execute("SHOW synchronous_commit").fetchone()
            if setting is not None and setting[0] == "off":
                conn.execute("SET synchronous_commit TO on")
            if self.readonly:
                conn.execute("SET default_transaction_read_only TO on")
        except pg.Error as exc:
            conn.close()
            raise self._translate(exc, "connect") from None
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # --- the reader: snapshot reads (PG-080..PG-089) ---------------------------------

    def _drop_readers(self) -> None:
        for name in ("_reader", "_spare"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    @staticmethod
    def _live(conn: psycopg.Connection[Any] | None) -> bool:
        return conn is not None and not conn.closed and not conn.broken

    def _begin_snapshot(self, conn: psycopg.Connection[Any]) -> None:
        """Open the read transaction whose first statement fixes its snapshot."""
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _fresh_snapshot(
        self, conn: psycopg.Connection[Any], query: str, params: tuple[int, ...] = ()
    ) -> list[Any]:
        """End ``conn``'s snapshot, start the next with ``query``; return its rows.

        One round trip: ROLLBACK, BEGIN and the query that fixes the snapshot
        go as one simple-protocol query string (which takes no parameters, so
        the ``params``, integers only, are formatted into ``query``'s ``%s``).  Not one
        pipeline: in pipeline mode PostgreSQL ran BEGIN inside the implicit
        block of the batch and refused it.
        """
        parts = ["BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", query % params]
        if conn.info.transaction_status != 0:  # not IDLE: end the old snapshot too
            parts.insert(0, "ROLLBACK")
        cursor = conn.execute("; ".join(parts))
        while cursor.nextset():
            pass  # the last result is the query's
        return cursor.fetchall()

    def _max_tid_query(self) -> str:
        return f"SELECT coalesce(max(tid), 0) FROM {self._q}dhruva_transaction"

    @staticmethod
    def _end_snapshot(conn: psycopg.Connection[Any]) -> None:
        if conn.info.transaction_status != 0:  # not IDLE: a read transaction is open
            conn.execute("ROLLBACK")

    def _snapshot_reader(self) -> tuple[psycopg.Connection[Any], int]:
        """Return the reader and the tid of its snapshot, connecting first if it was lost.

        A new reader's snapshot is the latest commit, which may be above the
        read point: ``_reader_tid`` then says so and loads check row tids
        against the read point ([PG-088]).
        """
        if self._closed:
            raise DhruvaError(f"the storage on {self._where} is closed")
        reader = self._reader
        if self._live(reader):
            assert reader is not None
            return reader, self._reader_tid
        self._drop_readers()
        reader = self._open_connection()
        try:
            with self._reader_errors("start a snapshot", reader):
                self._begin_snapshot(reader)
                tid = self._last_tid(reader)
        except BaseException:
            with contextlib.suppress(Exception):
                reader.close()
            raise
        self._reader, self._reader_tid = reader, tid
        return reader, tid

    @contextlib.contextmanager
    def _reader_errors(
        self, doing: str, reader: psycopg.Connection[Any] | None = None
    ) -> Iterator[None]:
        """Translate psycopg errors of a reader; a lost reader is dropped (PG-052)."""
        try:
            yield
        except self._pg.Error as exc:
            conn = reader if reader is not None else self._reader
            if conn is None or conn.closed or conn.broken:
                self._drop_readers()
                # The server probably went away: the committer's idle
                # connection is then broken too, which psycopg learns only
                # when it is next used; a commit would fail on it.
                self._drop_connection()
                raise PostgresConnectionError(
                    f"cannot {doing}: lost the connection to PostgreSQL at {self._where} "
                    f"({exc}); the next call connects again",
                    getattr(exc, "sqlstate", None),
                ) from exc
            raise self._translate(exc, doing) from exc

    def _as_of(self, oid: bytes, tid: int, row_tid: int, data: Any, refs: Any) -> Record:
        """Return the version of ``oid`` at ``tid`` given its newest row seen, or refuse.

        The row is the answer when it was committed at or before ``tid``;
        otherwise the ledger may hold the version ``tid`` saw ([PG-087]),
        and when it does not SnapshotTooOldError is raised ([PG-088]):
        never a version committed after ``tid``.
        """
        if row_tid <= tid:
            return Record(oid, bytes(data), bytes(refs))
        version = self._ledger.lookup(oid, tid)
        if isinstance(version, Record):
            return version
        if version is None:
            raise DhruvaKeyError(oid)
        assert version is CURRENT
        raise SnapshotTooOldError(tid, row_tid)

    def _read_versions(
        self, reader: psycopg.Connection[Any], keys: Iterable[int]
    ) -> list[tuple[bytes, Record | None]]:
        """Return the versions of ``keys`` in ``reader``'s snapshot (None: no row)."""
        keys = sorted(set(keys))
        found: dict[int, Record] = {}
        for start in range(0, len(keys), BATCH_SIZE):
            rows = reader.execute(
                f"SELECT oid, data, refs FROM {self._q}dhruva_object WHERE oid = ANY(%s)",
                (keys[start : start + BATCH_SIZE],),
            ).fetchall()
            for key, data, refs in rows:
                found[int(key)] = Record(key_to_oid(int(key)), bytes(data), bytes(refs))
        return [(key_to_oid(key), found.get(key)) for key in keys]

    def _move_read_point(
        self,
        tid: int,
        replaced: set[int],
        next_reader: Callable[[], tuple[psycopg.Connection[Any], int] | None],
    ) -> None:
        """Move the read point to ``tid``; hand the ledger what the move replaces.

        ``replaced`` are the keys committed between the old read point and
        ``tid``.  When a held snapshot wants them ([PG-086]) their versions
        are read from the old snapshot first; when that is not possible (the
        reader was lost), snapshots before ``tid`` become unanswerable rather
        than wrong.  ``next_reader()`` returns the reader of the new snapshot
        (or None: it is started lazily) after the old one was read.
        """
        ledger = self._ledger
        previous: list[tuple[bytes, Record | None]] = []
        complete = True
        if replaced and ledger.wanted(tid):
            reader = self._reader
            if self._live(reader) and self._reader_tid == self._sync_tid:
                assert reader is not None
                try:
                    with self._reader_errors("read the versions a commit replaces"):
                        previous = self._read_versions(reader, replaced)
                except DhruvaError:
                    complete = False
            else:
                complete = False
        if complete:
            ledger.supersede(tid, previous)
        else:
            ledger.supersede(tid, ())
            ledger.forget_before(tid)
        started = None
        try:
            started = next_reader()
        finally:
            if started is None:
                self._drop_readers()
            else:
                self._reader, self._reader_tid = started
            self._sync_tid = tid
            points = self._read_points
            points.append(tid)
            oldest = ledger.oldest
            while len(points) > 1 and points[0] < oldest:
                del points[0]

    def _restart_reader(self) -> tuple[psycopg.Connection[Any], int] | None:
        """End the reader's snapshot and start one at the latest commit, with its tid.

        The caller holds the commit lock, so "the latest commit" is the one it
        knows.  None when the reader is lost (the next load starts one).
        """
        reader = self._reader
        if not self._live(reader):
            return None
        assert reader is not None
        try:
            tid = int(self._fresh_snapshot(reader, self._max_tid_query())[0][0])
        except (self._pg.Error, DhruvaError):
            return None
        return reader, tid

    def _catch_up_reader(self) -> None:
        """Move the read point on to the reader's snapshot when that is later (PG-082).

        After a commit or a pack the reader starts its next snapshot without
        the commit lock (a transaction-level lock, so that PgBouncer's
        transaction pooling keeps working), and another process may have
        committed in between.  The read point then follows the snapshot, as a
        sync would, and the oids of those commits are kept for the next
        ``sync()`` to report.  Their replaced versions were never read, so
        held snapshots before the new read point become unanswerable
        (PG-086), never wrong.
        """
        reader = self._reader
        point = self._reader_tid
        if reader is None or not self._live(reader) or point <= self._sync_tid:
            return
        try:
            with self._reader_errors("synchronize"):
                found, _ = self._invalidations_since(reader, self._sync_tid, point + 1)
        except DhruvaError:
            # Called after a durable commit, which must not be reported as
            # failed: the next load starts a reader and PG-088 applies.
            self._drop_readers()
            return
        self._invalidated |= found
        self._move_read_point(point, found, lambda: (reader, point))

    # --- snapshots (spec: storage-api.md "Snapshots"; PG-080..PG-089) ------------------

    def last_tid(self) -> int:
        """Return the read point: the tid of the last sync or of this object's last commit."""
        if self._closed:
            raise DhruvaError(f"the storage on {self._where} is closed")
        return self._sync_tid

    def load_at(self, oid: bytes, tid: int) -> Record:
        """Return ``oid``'s record as transaction ``tid`` left it (SAPI-092, PG-087).

        ``tid`` at the read point is a load.  Below it, ``tid`` must be one
        of this object's earlier read points at or after the oldest snapshot
        set: a tid in between, which this object never read at, raises
        SnapshotTooOldError (its versions were never kept), as does one whose
        versions were dropped.
        """
        check_oid(oid)
        if self._closed:
            raise DhruvaError(f"the storage on {self._where} is closed")
        check_snapshot_tid(tid, self._sync_tid)
        if tid == self._sync_tid:
            return self.load(oid)
        points = self._read_points
        if tid < self._ledger.oldest or tid not in points:
            later = [point for point in points if point > tid]
            raise SnapshotTooOldError(tid, later[0] if later else self._sync_tid)
        version = self._ledger.lookup(oid, tid)
        if isinstance(version, Record):
            return version
        if version is None:
            raise DhruvaKeyError(oid)
        key = oid_to_key(oid)
        reader, _ = self._snapshot_reader()
        with self._reader_errors("load"):
            row = reader.execute(
                f"SELECT tid, data, refs FROM {self._q}dhruva_object WHERE oid = %s", (key,)
            ).fetchone()
        if row is None:
            raise DhruvaKeyError(oid)
        return self._as_of(oid, tid, int(row[0]), row[1], row[2])

    def set_oldest_snapshot(self, tid: int | None) -> None:
        """Keep the versions snapshots at or after ``tid`` read (SAPI-093, PG-086)."""
        if self._closed:
            raise DhruvaError(f"the storage on {self._where} is closed")
        self._ledger.set_floor(tid)

    def note_reads(self, oids: Iterable[bytes]) -> None:
        """Declare oids the open transaction read; ``end()`` checks them (SAPI-095, PG-084)."""
        if self._pending is None:
            raise DhruvaError("note_reads() outside a transaction; call begin() first")
        self._reads.update(oid_to_key(oid) for oid in oids)

    def _translate(self, exc: Exception, doing: str) -> DhruvaError:
        """Turn a psycopg error into the typed dhruva error that says what happened.

        Decided by the exception class and SQLSTATE, never by message text.
        A connection-level failure also drops the connection (PG-052).
        """
        pg = self._pg
        sqlstate = getattr(exc, "sqlstate", None)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"PostgreSQL at {self._where}"
        pgconn = getattr(exc, "pgconn", None)
        refused_at_login = (
            doing == "connect"
            and sqlstate is None
            and pgconn is not None
            and bool(
                getattr(pgconn, "used_password", False) or getattr(pgconn, "needs_password", False)
            )
        )
        if sqlstate in ("28P01", "28000") or refused_at_login:
            # libpq reports no SQLSTATE for a failed login; that a password was
            # sent (PQconnectionUsedPassword) and the server still closed the
            # connection is the typed fact left.  It is also what a missing
            # database looks like, hence the advice names both.
            # [PG-050] Wrong password, or no pg_hba.conf entry for this user.
            self._drop_connection()
            return AuthenticationError(
                f"{where} refused the credentials ({text}); check the user and password "
                "in the connection string, PGPASSWORD or ~/.pgpass, and the database name"
            )
        if sqlstate in ("42501", "25006"):
            # [PG-051] A role without the privilege, or a read-only server.
            return ReadOnlyError(
                f"{where} refused to {doing}: {text} (the role may only read, or the "
                "server is a read-only standby)"
            )
        if sqlstate in ("XX001", "XX002"):
            return CorruptionError(self._where, None, f"PostgreSQL reports: {text}")
        conn = self._conn
        lost = conn is None or conn.closed or conn.broken
        if (sqlstate is not None and sqlstate.startswith(("08", "57P"))) or (
            isinstance(exc, pg.OperationalError | pg.InterfaceError) and (lost or sqlstate is None)
        ):
            self._drop_connection()
            return PostgresConnectionError(
                f"cannot {doing}: lost or no connection to {where} ({text}); the next "
                "call connects again",
                sqlstate,
            )
        return PostgresError(f"{where}: cannot {doing}: {text} (SQLSTATE {sqlstate})", sqlstate)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Translate psycopg errors raised in the block (see :meth:`_translate`)."""
        try:
            yield
        except self._pg.Error as exc:
            raise self._translate(exc, doing) from exc

    # --- the schema ---------------------------------------------------------------

    def _current_schema(self, conn: psycopg.Connection[Any]) -> str:
        with self._errors("read the current schema"):
            row = conn.execute("SELECT current_schema()").fetchone()
        if row is None or row[0] is None:
            raise DhruvaError(
                f"PostgreSQL at {self._where}: the search_path names no existing schema; "
                "give PostgresStorage a schema"
            )
        return str(row[0])

    def _open_schema(self, conn: psycopg.Connection[Any], create: bool) -> None:
        """Create the tables in an empty schema, or check that they are dhruva's (PG-010..013)."""
        pg = self._pg
        with self._errors("open the dhruva schema"):
            if create:
                try:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(self.schema)}")
                except pg.errors.InsufficientPrivilege:
                    pass  # it may exist already; the check below says what is missing
                except pg.errors.UniqueViolation:
                    pass  # created by a concurrent process meanwhile
            with conn.transaction():
                row = conn.execute(
                    "SELECT oid FROM pg_namespace WHERE nspname = %s", (self.schema,)
                ).fetchone()
                if row is None:
                    raise FormatError(
                        self._where, None, f"no schema {self.schema!r} in this database"
                    )
                namespace = int(row[0])
                self._commit_lock_key = (COMMIT_LOCK_CLASS << 32) | namespace
                if create:
                    # [PG-012] Two processes creating the schema at once: one waits.
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s)", ((CREATE_LOCK_CLASS << 32) | namespace,)
                    )
                relations = {
                    str(name)
                    for (name,) in conn.execute(
                        "SELECT relname FROM pg_class WHERE relnamespace = %s"
                        " AND relkind IN ('r', 'p', 'v', 'm', 'f', 'S')",
                        (namespace,),
                    ).fetchall()
                }
                if not relations:
                    if not create:
                        raise FormatError(
                            self._where,
                            None,
                            f"schema {self.schema!r} holds no dhruva database (opened "
                            "read-only, so none is created)",
                        )
                    self._create_tables(conn)
                    return
                self._check_identity(conn, relations)

    def _create_tables(self, conn: psycopg.Connection[Any]) -> None:
        """[PG-010] Create every table in the open transaction: all of them or none."""
        q = self._q
        for statement in (
            f"CREATE TABLE {q}dhruva_meta (name text PRIMARY KEY, value text NOT NULL)",
            f"CREATE TABLE {q}dhruva_object (oid bigint PRIMARY KEY, tid bigint NOT NULL,"
            " data bytea NOT NULL, refs bytea NOT NULL)",
            f"CREATE TABLE {q}dhruva_transaction (tid bigint PRIMARY KEY,"
            " committed_at timestamptz NOT NULL DEFAULT now(), oids bigint[] NOT NULL)",
            f"CREATE TABLE {q}dhruva_oid (next numeric(20, 0) NOT NULL)",
            f"CREATE SEQUENCE {q}{SEQUENCE} AS bigint START 1",
        ):
            conn.execute(statement)
        conn.execute(f"INSERT INTO {q}dhruva_oid (next) VALUES (0)")
        conn.execute(
            f"INSERT INTO {q}dhruva_meta (name, value) VALUES ('application_id', %s),"
            " ('schema_version', %s), ('log_pruned_through', '0'), ('created_at', now()::text)",
            (APPLICATION_ID, str(SCHEMA_VERSION)),
        )

    def _check_identity(self, conn: psycopg.Connection[Any], relations: set[str]) -> None:
        """Raise FormatError unless the schema holds a dhruva database of this version."""
        if "dhruva_meta" not in relations:
            # [PG-011] Tables, but not ours: never write into them.
            shown = ", ".join(sorted(relations)[:5])
            raise FormatError(
                self._where,
                None,
                f"schema {self.schema!r} holds tables of another application ({shown}) and no "
                "dhruva_meta table; give PostgresStorage a schema of its own (schema='dhruva')",
            )
        meta = dict(conn.execute(f"SELECT name, value FROM {self._q}dhruva_meta").fetchall())
        if meta.get("application_id") != APPLICATION_ID:
            raise FormatError(
                self._where,
                None,
                f"schema {self.schema!r}: dhruva_meta names application "
                f"{meta.get('application_id')!r}, not {APPLICATION_ID!r}",
            )
        known = {str(version): version for version in SCHEMA_VERSIONS}
        version = known.get(str(meta.get("schema_version")))
        if version is None:
            # [PG-013] Refused before anything else is read.
            raise FormatError(
                self._where,
                None,
                f"dhruva PostgreSQL schema version {meta.get('schema_version')}; this dhruva "
                f"reads only versions {' and '.join(known)} (upgrade dhruva to open it)",
            )
        self._schema_version = version
        needed = (*TABLES, SEQUENCE, *((BLOB_TABLE,) if version >= BLOB_SCHEMA_VERSION else ()))
        missing = [name for name in needed if name not in relations]
        if missing:
            raise FormatError(
                self._where, None, f"schema {self.schema!r} lacks {', '.join(missing)}"
            )

    def _last_tid(self, conn: psycopg.Connection[Any]) -> int:
        """Return the highest committed tid (PG-021): the sync point of a new storage."""
        with self._errors("read the last commit"):
            row = conn.execute(
                f"SELECT coalesce(max(tid), 0) FROM {self._q}dhruva_transaction"
            ).fetchone()
        assert row is not None
        return int(row[0])

    # --- state checks -----------------------------------------------------------

    def _writable(self) -> psycopg.Connection[Any]:
        conn = self._connection()
        if self.readonly:
            raise ReadOnlyError(f"the storage on {self._where} was opened read-only")
        return conn

    def _step(self, name: str) -> None:
        hook = self._pack_step_hook
        if hook is not None:
            hook(name)  # [PACK-040]

    # --- the Storage interface ----------------------------------------------------

    def new_oid(self) -> bytes:
        """Return a fresh oid from this storage's block, allocating a block when empty."""
        if not self._oid_pool:
            conn = self._writable()
            size = self._oid_block
            with self._errors("allocate oids"):
                # [PG-014] A row lock orders allocations; each block is above every
                # earlier block and every stored oid (SAPI-010).
                row = conn.execute(
                    f"UPDATE {self._q}dhruva_oid SET next = next + %s RETURNING next - %s",
                    (size, size),
                ).fetchone()
            assert row is not None
            start = int(row[0])
            stop = min(start + size, _OID_SPACE)
            if start >= _OID_SPACE:
                raise DhruvaError(f"{self._where}: every 8-byte oid has been used")
            self._oid_pool = list(range(stop - 1, start - 1, -1))
            self._oid_block = min(size * 2, OID_BLOCK_MAX)
        elif self._closed:
            raise DhruvaError(f"the storage on {self._where} is closed")
        return self._oid_pool.pop().to_bytes(OID_SIZE, "big")

    def load(self, oid: bytes) -> Record:
        """Return ``oid``'s record as of the read point, whatever others committed since.

        [PG-081] Read in the reader's snapshot, which is the read point's;
        SnapshotTooOldError only when the reader was lost and the version is
        not kept ([PG-088]).  The last ``RECENT_MAX`` records loaded are kept
        until the next sync, commit or pack (they are the state as of the
        read point too, and a Connection loads an object twice: to make its
        ghost and to fill it).
        """
        recent = self._recent.get(oid)
        if recent is not None:
            return recent
        key = oid_to_key(oid)
        reader, _ = self._snapshot_reader()
        with self._reader_errors("load"):
            row = reader.execute(
                f"SELECT tid, data, refs FROM {self._q}dhruva_object WHERE oid = %s", (key,)
            ).fetchone()
        if row is None:
            raise DhruvaKeyError(oid)
        record = self._as_of(oid, self._sync_tid, int(row[0]), row[1], row[2])
        if len(self._recent) >= RECENT_MAX:
            del self._recent[next(iter(self._recent))]
        self._recent[oid] = record
        return record

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[Record]:
        """Yield the records of ``oids`` in order, ``BATCH_SIZE`` per SELECT (SAPI-022)."""
        batch: list[bytes] = []
        for oid in oids:
            check_oid(oid)
            batch.append(oid)
            if len(batch) == BATCH_SIZE:
                yield from self._load_batch(batch)
                batch = []
        if batch:
            yield from self._load_batch(batch)

    def _load_batch(self, batch: list[bytes]) -> Iterator[Record]:
        reader, _ = self._snapshot_reader()
        keys = sorted({oid_to_key(oid) for oid in batch})
        with self._reader_errors("load"):
            rows = reader.execute(
                f"SELECT oid, tid, data, refs FROM {self._q}dhruva_object WHERE oid = ANY(%s)",
                (keys,),
            ).fetchall()
        found = {key: (tid, data, refs) for key, tid, data, refs in rows}
        point = self._sync_tid
        for oid in batch:
            entry = found.get(oid_to_key(oid))
            if entry is None:
                raise DhruvaKeyError(oid)
            # [PG-081] The snapshot's version, as load returns it.
            yield self._as_of(oid, point, int(entry[0]), entry[1], entry[2])

    def begin(self) -> None:
        self._writable()
        if self._pending is not None:
            raise DhruvaError("a transaction is already open")
        self._discard_blob_stage()
        self._pending = {}
        self._reads = set()

    def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
        if self._closed:
            raise DhruvaError(f"the storage on {self._where} is closed")
        if self._pending is None:
            raise DhruvaError("store() outside a transaction; call begin() first")
        check_record(oid, data, refs)
        self._pending[oid_to_key(oid)] = (bytes(data), bytes(refs))

    def abort_transaction(self) -> None:
        self._pending = None
        self._reads = set()
        self._discard_blob_stage()  # [BLOB-014]

    # --- blobs (spec: blobs.md "Blobs in a database"; PG-090..PG-095) ------------------

    def _has_blob_table(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether the schema has ``dhruva_blob_chunk`` (another process may have made it)."""
        if self._schema_version >= BLOB_SCHEMA_VERSION:
            return True
        row = conn.execute("SELECT to_regclass(%s)", (f"{self._q}{BLOB_TABLE}",)).fetchone()
        return row is not None and row[0] is not None

    def _ensure_blob_table(self, conn: psycopg.Connection[Any]) -> None:
        """[PG-090] Make the schema version 2: the blob table, in one transaction."""
        q = self._q
        with self._errors("create the blob table"), conn.transaction():
            # Under the commit lock: two processes storing their first blob at
            # once make the table once, and no commit runs half-migrated.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._commit_lock_key,))
            found = conn.execute("SELECT to_regclass(%s)", (f"{q}{BLOB_TABLE}",)).fetchone()
            if found is None or found[0] is None:
                # Only a table nobody reads yet is altered: ALTER TABLE waits
                # for every reader's lock, and readers hold theirs until sync.
                conn.execute(
                    f"CREATE TABLE {q}{BLOB_TABLE} (oid bigint NOT NULL,"
                    " tid bigint NOT NULL, n integer NOT NULL, data bytea NOT NULL,"
                    " PRIMARY KEY (oid, tid, n))"
                )
                # Blobs are mostly compressed already: no compression attempt,
                # and length() works without reading the value.
                conn.execute(f"ALTER TABLE {q}{BLOB_TABLE} ALTER COLUMN data SET STORAGE EXTERNAL")
            conn.execute(
                f"UPDATE {q}dhruva_meta SET value = %s WHERE name = 'schema_version'"
                " AND value = %s",
                (str(BLOB_SCHEMA_VERSION), str(SCHEMA_VERSION)),
            )
        self._schema_version = BLOB_SCHEMA_VERSION

    def store_blob(self, oid: bytes, file: BinaryIO) -> None:
        """Stream ``file``'s content in as ``oid``'s blob of the open transaction (BLOB-010).

        [PG-091] The chunks are written now, one at a time, in a PostgreSQL
        transaction of their own under the transaction's staging tid; no
        reader sees them until ``end()`` commits them.  A failure (of the
        file or of PostgreSQL) leaves the transaction as before; a second
        blob for the same oid replaces the first.
        """
        conn = self._writable()
        if self._pending is None:
            raise DhruvaError("store_blob() outside a transaction; call begin() first")
        key = oid_to_key(oid)
        if self._stage_tid is not None and self._stage_conn is not conn:
            raise PostgresConnectionError(
                f"the connection to PostgreSQL at {self._where} was lost after this "
                "transaction staged blobs; abort it and commit again"
            )
        if self._schema_version < BLOB_SCHEMA_VERSION:
            self._ensure_blob_table(conn)
        if self._stage_tid is None:
            # [PG-091] Negative, so never a committed tid; its high bits are
            # the time in ms, so that a pack can tell an abandoned stage.
            self._stage_tid = -((int(time.time() * 1000) << 20) | secrets.randbits(20))
            self._stage_conn = conn
        stage = self._stage_tid
        table = f"{self._q}{BLOB_TABLE}"
        count = 0

        def put(number: int, data: bytes) -> None:
            nonlocal count
            conn.execute(
                f"INSERT INTO {table} (oid, tid, n, data) VALUES (%s, %s, %s, %s)",
                (key, stage, number, data),
            )
            count += 1

        with self._errors("store a blob"), conn.transaction():
            conn.execute(f"DELETE FROM {table} WHERE oid = %s AND tid = %s", (key, stage))
            write_chunks(file, put)
        self._staged_blobs[key] = count

    def _discard_blob_stage(self) -> None:
        """Delete the open transaction's staged chunks, if any (best effort, PG-092)."""
        stage, conn = self._stage_tid, self._stage_conn
        self._stage_tid, self._stage_conn, self._staged_blobs = None, None, {}
        if stage is None or conn is None or not self._live(conn):
            return  # a lost connection's stage goes at a pack (PG-094)
        with contextlib.suppress(self._pg.Error):
            conn.execute(f"DELETE FROM {self._q}{BLOB_TABLE} WHERE tid = %s", (stage,))

    def open_blob(self, oid: bytes, tid: int | None = None) -> BinaryIO:
        """Open ``oid``'s blob as of the read point or ``tid`` (BLOB-011, PG-093)."""
        key = oid_to_key(oid)
        point = self._sync_tid
        if tid is None:
            tid = point
        else:
            check_snapshot_tid(tid, point)
        reader, _ = self._snapshot_reader()
        table = f"{self._q}{BLOB_TABLE}"
        with self._reader_errors("open a blob"):
            if not self._has_blob_table(reader):
                raise no_blob(oid)
            # [PG-093] In the reader's snapshot; tid > 0 leaves staged rows out.
            row = reader.execute(
                f"SELECT tid, n, length(data) FROM {table} WHERE oid = %s AND tid > 0"
                " AND tid <= %s ORDER BY tid DESC, n DESC LIMIT 1",
                (key, tid),
            ).fetchone()
            if row is None:
                self._blob_missing(reader, oid, key, tid)
        assert row is not None
        version, last, last_size = int(row[0]), int(row[1]), int(row[2])

        def fetch(number: int) -> bytes | None:
            current, _ = self._snapshot_reader()
            with self._reader_errors("read a blob"):
                found = current.execute(
                    f"SELECT data FROM {table} WHERE oid = %s AND tid = %s AND n = %s",
                    (key, version, number),
                ).fetchone()
            return None if found is None else bytes(found[0])

        where = (
            f"the blob of oid {str_to_int8(oid)} stored by transaction {version} "
            f"in schema {self.schema!r} on {self._where}"
        )
        return open_reader(fetch, last + 1, last_size, where)

    def _blob_missing(
        self, reader: psycopg.Connection[Any], oid: bytes, key: int, tid: int
    ) -> None:
        """Raise for an oid with no blob as of ``tid``: KeyError, or too old (PG-095).

        A pack in any process may have removed the version ``tid`` read
        (it records how far in ``blob_pack_floor``); when a later version
        at or below that floor exists, the answer is SnapshotTooOldError,
        never "no blob" (which a Connection reads as empty content).
        """
        row = reader.execute(
            f"SELECT value FROM {self._q}dhruva_meta WHERE name = 'blob_pack_floor'"
        ).fetchone()
        floor = int(row[0]) if row is not None else 0
        if tid < floor:
            newer = reader.execute(
                f"SELECT min(tid) FROM {self._q}{BLOB_TABLE} WHERE oid = %s AND tid > %s",
                (key, tid),
            ).fetchone()
            if newer is not None and newer[0] is not None and int(newer[0]) <= floor:
                raise SnapshotTooOldError(tid, int(newer[0]))
        raise no_blob(oid)

    def end(self) -> None:
        """Commit the open transaction as one PostgreSQL transaction (PG-030..PG-033).

        Raises WriteConflictError, writing nothing, when another process
        committed one of the stored oids since this storage's last sync, and
        ReadConflictError when it committed one of the oids declared with
        ``note_reads`` (PG-084); ReadOnlyError when the role may not write; PostgresConnectionError
        when the connection broke before COMMIT (nothing written) and
        CommitInDoubtError when it broke during COMMIT and no new connection
        could say whether the commit took effect.
        """
        conn = self._writable()
        pending = self._pending
        if pending is None:
            raise DhruvaError("end() without begin()")
        self._pending = None
        staged = self._staged_blobs
        stage = self._stage_tid
        try:
            # The staged keys without a pending record, as oids (stored: none of them).
            orphans = blobs_without_records(
                [key_to_oid(key) for key in staged if key not in pending], ()
            )
            if orphans is not None:
                raise orphans  # [BLOB-010] Nothing of the transaction is written.
            if stage is not None and self._stage_conn is not conn:
                raise PostgresConnectionError(
                    f"the connection to PostgreSQL at {self._where} was lost after this "
                    "transaction staged blobs; nothing was committed, commit again"
                )
            if not pending:
                self._discard_blob_stage()
                return  # An empty transaction changes nothing and writes nothing.
            blobs = None if stage is None else (stage, sum(staged.values()))
            self._commit(conn, pending, blobs)
        except BaseException:
            self._discard_blob_stage()
            raise
        # The staged rows are the commit's now.
        self._stage_tid, self._stage_conn, self._staged_blobs = None, None, {}

    def _commit(
        self,
        conn: psycopg.Connection[Any],
        pending: dict[int, tuple[bytes, bytes]],
        blobs: tuple[int, int] | None,
    ) -> None:
        """Run the commit protocol for ``pending`` and the staged ``blobs`` (see ``end``)."""
        self._recent.clear()
        reads, self._reads = self._reads, set()
        pg = self._pg
        tid: int | None = None
        committing = False
        try:
            with conn.transaction():
                invalid, tid = self._write_pipelined(conn, pending, blobs)
                conflicts = invalid.intersection(pending)
                if conflicts:
                    # [PG-030] Exactly the server's WRITE_CONFLICT: the rollback on
                    # leaving the block undoes the rows written; nothing is visible.
                    raise WriteConflictError(sorted(key_to_oid(key) for key in conflicts))
                stale = invalid.intersection(reads)
                if stale:
                    # [PG-084] Read at the read point, committed by another since:
                    # checked under the commit lock, atomically with the write.
                    raise ReadConflictError(sorted(key_to_oid(key) for key in stale))
                committing = True
            # [PG-040] COMMIT returned: the commit is flushed (synchronous_commit on).
        except pg.Error as exc:
            error = self._translate(exc, "commit")
            if committing and tid is not None and isinstance(error, PostgresConnectionError):
                self._resolve_in_doubt(tid, error)
                with self._errors("synchronize"):
                    invalid = self._invalidations_since(self._connection(), self._sync_tid, tid)[0]
                self._invalidated |= invalid
                self._move_read_point(tid, invalid | set(pending), self._restart_reader)
                self._catch_up_reader()
                return
            raise error from exc
        self._invalidated |= invalid
        # [PG-082] The reader's next snapshot, at once: this commit's, or
        # a later one when another process committed in between.
        self._move_read_point(tid, invalid | set(pending), self._restart_reader)
        self._catch_up_reader()

    def _write_pipelined(
        self,
        conn: psycopg.Connection[Any],
        pending: dict[int, tuple[bytes, bytes]],
        blobs: tuple[int, int] | None = None,
    ) -> tuple[set[int], int]:
        """Run steps 2 to 7 of the commit protocol in one round trip; return (invalid, tid).

        The statements go out as one pipeline and PostgreSQL runs them in
        order, each with a snapshot taken when it starts: the log read comes
        after the lock is granted, so it sees every commit before ours
        (PG-020).  The records are written before the caller checks for
        conflicts; on a conflict the caller raises inside the transaction and
        PostgreSQL rolls all of it back, so nothing is ever visible.  The
        rows take their tid from ``currval``, this session's ``nextval``.
        """
        q = self._q
        keys = list(pending)
        highest = max(key % _OID_SPACE for key in keys)
        since = self._sync_tid
        sequence = f"'{q}{SEQUENCE}'"
        with conn.pipeline():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._commit_lock_key,))
            tid_cursor = conn.execute(f"SELECT nextval({sequence})")  # [PG-020]
            log_cursor = conn.execute(self._log_query(), (since, (1 << 63) - 1))
            with conn.cursor() as cursor:
                # [PG-032] Records, log row and oid mark: one transaction.
                cursor.executemany(
                    f"INSERT INTO {q}dhruva_object (oid, tid, data, refs)"
                    f" VALUES (%s, currval({sequence}), %s, %s)"
                    " ON CONFLICT (oid) DO UPDATE SET tid = EXCLUDED.tid, data = EXCLUDED.data,"
                    " refs = EXCLUDED.refs",
                    [(key, data, refs) for key, (data, refs) in pending.items()],
                )
            conn.execute(
                f"INSERT INTO {q}dhruva_transaction (tid, oids) VALUES (currval({sequence}), %s)",
                (keys,),
            )
            # [PG-014] An oid the application chose itself counts as allocated.
            conn.execute(
                f"UPDATE {q}dhruva_oid SET next = %s WHERE next <= %s", (highest + 1, highest)
            )
            blob_cursor = None
            if blobs is not None:
                # [PG-091] The staged chunks become this commit's: a small row
                # update each, the TOASTed bytes stay where they are.
                blob_cursor = conn.execute(
                    f"UPDATE {q}{BLOB_TABLE} SET tid = currval({sequence}) WHERE tid = %s",
                    (blobs[0],),
                )
        row = tid_cursor.fetchone()
        assert row is not None
        tid = int(row[0])
        if blobs is not None and blob_cursor is not None and blob_cursor.rowcount != blobs[1]:
            # Raised inside the caller's transaction block: all of it rolls back.
            raise DhruvaError(
                f"{blobs[1] - max(blob_cursor.rowcount, 0)} staged blob chunks of this "
                "transaction are gone (a pack removed them as abandoned); nothing was committed"
            )
        invalid = self._interpret_log(conn, log_cursor.fetchall(), since, tid)[0]
        return invalid, tid

    def _log_query(self) -> str:
        q = self._q
        return (
            f"SELECT t.tid, t.oids, m.value FROM {q}dhruva_transaction t,"
            f" {q}dhruva_meta m WHERE m.name = 'log_pruned_through' AND t.tid > %s"
            " AND t.tid < %s"
        )

    def _invalidations_since(
        self, conn: psycopg.Connection[Any], since: int, below: int | None = None
    ) -> tuple[set[int], int]:
        """Return the keys committed with a tid above ``since`` (below ``below``) and the last tid.

        The log rows and the prune mark come in one query.
        """
        bound = below if below is not None else (1 << 63) - 1
        rows = conn.execute(self._log_query(), (since, bound)).fetchall()
        return self._interpret_log(conn, rows, since, bound)

    def _interpret_log(
        self, conn: psycopg.Connection[Any], rows: list[Any], since: int, below: int
    ) -> tuple[set[int], int]:
        """Turn log rows into (keys, last tid); fall back on object tids when pruned (PG-022)."""
        rows = [row for row in rows if row[0] < below]
        if not rows:
            return set(), since
        last = max(int(tid) for tid, _, _ in rows)
        if since < int(rows[0][2]):
            # [PG-022] The log no longer reaches back to our sync point: every
            # object changed since then still carries a tid above it.
            changed = conn.execute(
                f"SELECT oid FROM {self._q}dhruva_object WHERE tid > %s AND tid <= %s",
                (since, last),
            ).fetchall()
            return {int(key) for (key,) in changed}, last
        keys: set[int] = set()
        for _, oids, _ in rows:
            keys.update(oids)
        return keys, last

    def _resolve_in_doubt(self, tid: int, error: PostgresConnectionError) -> None:
        """Find out whether the commit ``tid`` took effect; return if it did (PG-053).

        Taking the commit lock on a new connection waits until the old
        backend's transaction has ended, committed or not; then the log row
        says which.  Raises ``error`` (nothing was written) when it did not,
        CommitInDoubtError when no new connection can be made.
        """
        pg = self._pg
        try:
            conn = self._connection()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._commit_lock_key,))
                row = conn.execute(
                    f"SELECT 1 FROM {self._q}dhruva_transaction WHERE tid = %s", (tid,)
                ).fetchone()
        except (pg.Error, PostgresConnectionError) as exc:
            raise CommitInDoubtError(
                f"the connection to PostgreSQL at {self._where} was lost during COMMIT and "
                f"could not be re-established ({exc}); the commit took effect if and only if "
                f"dhruva_transaction has tid {tid}",
                tid,
            ) from exc
        if row is None:
            raise error

    def sync(self) -> list[bytes]:
        """Return the oids other processes committed since the previous sync (PG-021).

        One query: the log rows above the sync point, the first statement of
        the reader's next snapshot, so the new read point and the snapshot
        agree ([PG-083]).  The newest log row is never pruned, so no row
        means no commit since.  While an older snapshot is held, the next
        snapshot is started on a second reader and the versions the move
        replaces are read from the old one first ([PG-086]).
        """
        if self._closed:
            raise DhruvaError(f"the storage on {self._where} is closed")
        self._recent.clear()
        since = self._sync_tid
        keep_old = self._ledger.floor is not None and self._live(self._reader)
        if keep_old:
            target = self._spare if self._live(self._spare) else None
        else:
            target = self._reader if self._live(self._reader) else None
        if target is None:
            target = self._open_connection()
        with self._reader_errors("synchronize", target):
            bound = (1 << 63) - 1
            rows = self._fresh_snapshot(target, self._log_query(), (since, bound))
            found, last = self._interpret_log(target, rows, since, bound)
        last = max(last, since)
        old = self._reader
        if last > since:
            self._move_read_point(last, found, lambda: (target, last))
        else:
            self._reader, self._reader_tid = target, last
        if old is not None and old is not target:
            # The old snapshot's reader becomes the spare for the next sync.
            try:
                self._end_snapshot(old)
                self._spare = old
            except self._pg.Error:
                with contextlib.suppress(Exception):
                    old.close()
                self._spare = None
        found |= self._invalidated
        self._invalidated = set()
        return [key_to_oid(key) for key in sorted(found)]

    def iter_oids(self) -> Iterator[bytes]:
        conn = self._connection()
        with self._errors("list the oids"):
            keys = conn.execute(f"SELECT oid FROM {self._q}dhruva_object").fetchall()
        return iter([key_to_oid(int(key)) for (key,) in keys])

    def get_size(self) -> int:
        conn = self._connection()
        with self._errors("count the objects"):
            row = conn.execute(f"SELECT count(*) FROM {self._q}dhruva_object").fetchone()
        assert row is not None
        return int(row[0])

    def drop_tables(self) -> None:
        """Drop dhruva's tables and sequence from the schema, then close the storage.

        ``dhruva convert`` calls this to delete a copy it could not finish
        (TOOL-040); it destroys the database in this schema and is refused on
        a read-only storage.  Other relations in the schema are left alone.
        """
        if self.readonly:
            raise ReadOnlyError("a read-only PostgresStorage drops no tables")
        conn = self._connection()
        self._drop_readers()  # their snapshots' table locks would block the DROP
        relations = ", ".join(self._q + _ident(name) for name in (*TABLES, BLOB_TABLE))
        with self._errors("drop the dhruva tables"), conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {relations}")
            conn.execute(f"DROP SEQUENCE IF EXISTS {self._q}{_ident(SEQUENCE)}")
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._discard_blob_stage()
        self._pending = None
        self._recent.clear()
        self._closed = True
        self._drop_connection()
        self._drop_readers()

    def _abandon(self) -> None:
        """Drop the connection as a killed process would (conformance crash tests)."""
        for name in ("_conn", "_reader", "_spare"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.pgconn.finish()
                with contextlib.suppress(Exception):
                    conn.close()
        self._closed = True

    def __repr__(self) -> str:
        mode = " readonly" if self.readonly else ""
        schema = getattr(self, "schema", "?")
        return f"<{type(self).__name__} {self._where!r} schema={schema!r}{mode}>"

    # --- verify --------------------------------------------------------------------

    def check(self, limit: int = 100) -> DatabaseCheck:
        """Check the database inside PostgreSQL, read-only (PG-072); see DatabaseCheck.

        Reads no record into Python: counts, reference-list lengths, dangling
        references (at most ``limit`` reported) and reachability from the
        root are SQL queries, the last one a recursive CTE.
        """
        conn = self._connection()
        q = self._q
        ref = "('x' || encode(substr(o.refs, i * 8 + 1, 8), 'hex'))::bit(64)::bigint"
        with self._errors("check the database"):
            row = conn.execute(
                f"SELECT count(*), coalesce(sum(length(data) + length(refs)), 0),"
                f" count(*) FILTER (WHERE length(refs) % 8 <> 0),"
                f" bool_or(oid = 0) FROM {q}dhruva_object"
            ).fetchone()
            assert row is not None
            dangling = conn.execute(
                f"SELECT o.oid, {ref} FROM {q}dhruva_object o,"
                " generate_series(0, length(o.refs) / 8 - 1) AS i"
                f" WHERE NOT EXISTS (SELECT 1 FROM {q}dhruva_object x WHERE x.oid = {ref})"
                " LIMIT %s",
                (limit,),
            ).fetchall()
            reached = conn.execute(
                f"WITH RECURSIVE reach(oid) AS (SELECT oid FROM {q}dhruva_object WHERE oid = 0"
                f" UNION SELECT {ref} FROM reach JOIN {q}dhruva_object o ON o.oid = reach.oid,"
                " generate_series(0, length(o.refs) / 8 - 1) AS i)"
                f" SELECT count(*), coalesce(sum(length(data) + length(refs)), 0)"
                f" FROM reach JOIN {q}dhruva_object USING (oid)"
            ).fetchone()
            size = conn.execute(
                "SELECT pg_total_relation_size(%s::regclass)", (f"{q}dhruva_object",)
            ).fetchone()
        assert reached is not None and size is not None
        return DatabaseCheck(
            objects=int(row[0]),
            record_bytes=int(row[1]),
            bad_refs=int(row[2]),
            has_root=bool(row[3]),
            dangling=[(key_to_oid(int(a)), key_to_oid(int(b))) for a, b in dangling],
            reachable=int(reached[0]),
            reachable_bytes=int(reached[1]),
            table_bytes=int(size[0]),
        )

    def iter_records(self, batch_size: int = 1000) -> Iterator[Record]:
        """Yield every current record through a server-side cursor (memory stays bounded)."""
        conn = self._connection()
        with (
            self._errors("read the records"),
            conn.transaction(),
            conn.cursor(name="dhruva_records") as cursor,
        ):
            cursor.itersize = batch_size
            cursor.execute(f"SELECT oid, data, refs FROM {self._q}dhruva_object")
            for key, data, refs in cursor:
                yield Record(key_to_oid(int(key)), bytes(data), bytes(refs))

    # --- pack ----------------------------------------------------------------------

    def pack(self, progress: Callable[[int, int], object] | None = None) -> None:
        """Delete every record unreachable from the root, inside PostgreSQL (PG-060..PG-063).

        Marks level by level with INSERT ... SELECT over the ``refs`` column
        (records are never read into Python) while other processes keep
        committing; then, holding the commit lock, marks what was committed
        meanwhile, deletes the rest and prunes the transaction log in one
        transaction.  ``progress(marked, objects)`` is called after each
        level and at the end.
        """
        conn = self._writable()
        if self._pending is not None:
            raise DhruvaError("pack() during a transaction; end or abort it first")
        self._recent.clear()
        with self._errors("pack"):
            self._pack(conn, progress)

    def _pack(
        self, conn: psycopg.Connection[Any], progress: Callable[[int, int], object] | None
    ) -> None:
        q = self._q
        self._step("begun")
        start_tid = self._last_tid(conn)
        row = conn.execute(f"SELECT count(*) FROM {q}dhruva_object").fetchone()
        objects = int(row[0]) if row else 0
        for name in ("dhruva_mark", "dhruva_frontier", "dhruva_next"):
            conn.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")
            conn.execute(f"CREATE TEMP TABLE {name} (oid bigint PRIMARY KEY)")
        try:
            conn.execute("INSERT INTO pg_temp.dhruva_frontier VALUES (0)")
            conn.execute("INSERT INTO pg_temp.dhruva_mark VALUES (0)")
            # [PG-089] [SAPI-096] What the versions kept for held snapshots
            # reference is live too.
            kept = sorted(
                {oid_to_key(ref) for refs in self._ledger.kept_refs() for ref in iter_oids(refs)}
                - {0}
            )
            if kept:
                for table in ("dhruva_frontier", "dhruva_mark"):
                    conn.execute(
                        f"INSERT INTO pg_temp.{table} SELECT unnest(%s::bigint[])", (kept,)
                    )
            marked = self._mark(conn, 1, objects, progress)
            self._step("marked")
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._commit_lock_key,))
                # [PG-061] Whatever was committed since the walk began is live, and
                # so is everything it references.
                conn.execute("TRUNCATE pg_temp.dhruva_frontier")
                conn.execute(
                    f"INSERT INTO pg_temp.dhruva_frontier SELECT oid FROM {q}dhruva_object"
                    " WHERE tid > %s",
                    (start_tid,),
                )
                conn.execute(
                    "INSERT INTO pg_temp.dhruva_mark SELECT oid FROM pg_temp.dhruva_frontier"
                    " ON CONFLICT DO NOTHING"
                )
                marked = self._mark(conn, marked, objects, progress)
                conn.execute(
                    f"DELETE FROM {q}dhruva_object o WHERE NOT EXISTS"
                    " (SELECT 1 FROM pg_temp.dhruva_mark m WHERE m.oid = o.oid)"
                )
                self._step("deleted")
                if self._has_blob_table(conn):
                    self._collect_blobs(conn)
                self._prune_log(conn)
            self._step("committed")
            # [PG-085] Loads see the pack from here on: the reader's next
            # snapshot includes it (and the read point follows when others
            # committed since the last sync, PG-082).
            restarted = self._restart_reader()
            if restarted is None:
                self._drop_readers()
            else:
                self._reader, self._reader_tid = restarted
                self._catch_up_reader()
        finally:
            for name in ("dhruva_mark", "dhruva_frontier", "dhruva_next"):
                with contextlib.suppress(self._pg.Error):
                    conn.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")
        if progress is not None:
            progress(objects, objects)

    def _mark(
        self,
        conn: psycopg.Connection[Any],
        marked: int,
        objects: int,
        progress: Callable[[int, int], object] | None,
    ) -> int:
        """Mark everything reachable from ``pg_temp.dhruva_frontier``; return the mark count."""
        q = self._q
        while True:
            conn.execute("TRUNCATE pg_temp.dhruva_next")
            # [PG-060] Each 8-byte slice of refs read as a bigint, in SQL.
            cursor = conn.execute(
                "WITH found AS (INSERT INTO pg_temp.dhruva_mark"
                " SELECT DISTINCT ('x' || encode(substr(o.refs, i * 8 + 1, 8), 'hex'))"
                "::bit(64)::bigint"
                f" FROM pg_temp.dhruva_frontier f JOIN {q}dhruva_object o ON o.oid = f.oid,"
                " generate_series(0, length(o.refs) / 8 - 1) AS i"
                " ON CONFLICT DO NOTHING RETURNING oid)"
                " INSERT INTO pg_temp.dhruva_next SELECT oid FROM found"
            )
            added = cursor.rowcount
            if added <= 0:
                return marked
            marked += added
            conn.execute("TRUNCATE pg_temp.dhruva_frontier")
            conn.execute("INSERT INTO pg_temp.dhruva_frontier SELECT oid FROM pg_temp.dhruva_next")
            if progress is not None:
                progress(marked, objects)

    def _collect_blobs(self, conn: psycopg.Connection[Any]) -> None:
        """[PG-094] Delete the blob chunks no reader reaches, under the commit lock.

        The chunks of oids the pack removed, the versions superseded at or
        before the oldest snapshot this storage holds (its read point when
        none), and stages older than BLOB_STAGE_RETENTION_S (their process
        died); then ``blob_pack_floor`` records how far versions went
        (PG-095).  Other processes' open snapshots keep seeing what they saw:
        PostgreSQL keeps the deleted row versions for them.
        """
        table = f"{self._q}{BLOB_TABLE}"
        floor = self._ledger.floor
        oldest = self._sync_tid if floor is None else min(floor, self._sync_tid)
        conn.execute(
            f"DELETE FROM {table} b WHERE b.tid > 0 AND NOT EXISTS"
            f" (SELECT 1 FROM {self._q}dhruva_object o WHERE o.oid = b.oid)"
        )
        conn.execute(
            f"DELETE FROM {table} b WHERE b.tid > 0 AND b.tid < (SELECT max(k.tid)"
            f" FROM {table} k WHERE k.oid = b.oid AND k.tid > 0 AND k.tid <= %s)",
            (oldest,),
        )
        cutoff_ms = int((time.time() - BLOB_STAGE_RETENTION_S) * 1000)
        conn.execute(
            f"DELETE FROM {table} WHERE tid < 0 AND tid > %s", (-(max(cutoff_ms, 0) << 20),)
        )
        conn.execute(
            f"INSERT INTO {self._q}dhruva_meta (name, value) VALUES ('blob_pack_floor', %s)"
            " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
            " WHERE dhruva_meta.value::bigint < EXCLUDED.value::bigint",
            (str(oldest),),
        )

    def _prune_log(self, conn: psycopg.Connection[Any]) -> None:
        """[PG-062] Drop old log rows, keeping the newest, and record how far."""
        q = self._q
        row = conn.execute(
            f"WITH gone AS (DELETE FROM {q}dhruva_transaction WHERE tid <"
            f" (SELECT max(tid) FROM {q}dhruva_transaction)"
            " AND committed_at < now() - make_interval(secs => %s) RETURNING tid)"
            " SELECT max(tid) FROM gone",
            (LOG_RETENTION_S,),
        ).fetchone()
        if row is not None and row[0] is not None:
            conn.execute(
                f"UPDATE {q}dhruva_meta SET value = %s WHERE name = 'log_pruned_through'"
                " AND value::bigint < %s",
                (str(row[0]), row[0]),
            )
