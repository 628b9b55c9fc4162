"""SqliteStorage beyond the conformance suite (spec: ``spec/sqlite-storage.md``).

The generic contract, the crash-and-reopen model and the SIGKILL-mid-commit
test run in ``conformance/`` with ``--dhruva-backend=sqlite``.  Here: the
schema and settings, the oid high-water mark (with Durus's reissue bug
replayed), locking, read-only snapshots, format errors, pack (including a
process killed at many points inside a pack) and online backup.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhruva import sqlite_storage
from dhruva.connection import Connection
from dhruva.error import (
    CorruptionError,
    DhruvaError,
    DhruvaKeyError,
    FormatError,
    ReadOnlyError,
    StorageLockedError,
)
from dhruva.persistent_dict import PersistentDict
from dhruva.sqlite_storage import (
    APPLICATION_ID,
    BATCH_SIZE,
    SCHEMA_VERSION,
    SqliteStorage,
    backup,
    key_to_oid,
    oid_to_key,
)
from dhruva.storage import Record
from dhruva.utils import ROOT_OID, int8_to_str

ROOT = Path(__file__).resolve().parent.parent
VECTOR = ROOT / "conformance" / "vectors" / "sqlite-storage" / "rows.json"


def commit(storage: SqliteStorage, records: dict[bytes, tuple[bytes, bytes]]) -> None:
    storage.begin()
    for oid, (data, refs) in records.items():
        storage.store(oid, data, refs)
    storage.end()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain read-only sqlite3 connection, to look at what the storage wrote."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()


def write_raw(path: Path, *statements: str) -> None:
    """Run ``statements`` on ``path`` through a plain sqlite3 connection."""
    db = sqlite3.connect(path)
    try:
        for statement in statements:
            db.execute(statement)
        db.commit()
    finally:
        db.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "db.sqlite"


@pytest.fixture
def storage(path: Path) -> Iterator[SqliteStorage]:
    opened = SqliteStorage(path)
    yield opened
    opened.close()


# --- schema, settings, layout ------------------------------------------------------------


@pytest.mark.req("SQL-001", "SQL-002", "SQL-010", "SQL-011")
def test_schema_header_fields_and_settings(storage: SqliteStorage, path: Path) -> None:
    conn = storage._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 0
    storage.close()
    with raw(path) as db:
        tables = db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    header = path.read_bytes()[:100]
    assert header[:16] == b"SQLite format 3\x00"
    assert int.from_bytes(header[60:64], "big") == SCHEMA_VERSION == 1
    assert header[68:72] == b"DHRV" and APPLICATION_ID == 0x44485256
    spec = (ROOT / "spec" / "sqlite-storage.md").read_text()
    assert [name for name, _sql in tables] == ["meta", "objects"]
    for _name, sql in tables:
        assert sql in spec, sql


@pytest.mark.req("SQL-003", "SQL-004")
def test_rows_match_the_vector(storage: SqliteStorage, path: Path) -> None:
    vector = json.loads(VECTOR.read_text())
    for entry in vector["oid_keys"]:
        oid = bytes.fromhex(entry["oid"])
        assert oid_to_key(oid) == entry["key"]
        assert key_to_oid(entry["key"]) == oid
    records = {bytes.fromhex(e["oid"]): (b"", b"") for e in vector["oid_keys"]}
    for row in vector["rows"]:
        records[bytes.fromhex(row["oid"])] = (
            bytes.fromhex(row["data"]),
            bytes.fromhex(row["refs"]),
        )
    commit(storage, records)
    storage.close()
    with raw(path) as db:
        stored = {key: (data, refs) for key, data, refs in db.execute("SELECT * FROM objects")}
        header = [
            db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("user_version", "application_id")
        ]
    assert header == [vector["header"]["user_version"], vector["header"]["application_id"]]
    assert sorted(stored) == sorted(e["key"] for e in vector["oid_keys"])
    for row in vector["rows"]:
        assert stored[row["key"]] == (bytes.fromhex(row["data"]), bytes.fromhex(row["refs"]))
    # The empty string is a zero-length BLOB, never NULL.
    assert stored[0] == (b"", b"")
    reopened = SqliteStorage(path)
    for oid, (data, refs) in records.items():
        assert reopened.load(oid) == Record(oid, data, refs)
    reopened.close()


@pytest.mark.req("SQL-012")
def test_creation_is_one_transaction(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = (*sqlite_storage.SCHEMA, "CREATE TABLE nonsense (")
    monkeypatch.setattr(sqlite_storage, "SCHEMA", broken)
    with pytest.raises(DhruvaError):
        SqliteStorage(path)
    with raw(path) as db:
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    monkeypatch.undo()
    storage = SqliteStorage(path)  # the next open creates the schema
    assert storage.new_oid() == ROOT_OID
    storage.close()


@pytest.mark.req("SQL-012")
def test_empty_files_are_initialised(tmp_path: Path) -> None:
    zero = tmp_path / "zero.sqlite"
    zero.write_bytes(b"")
    empty = tmp_path / "empty.sqlite"
    write_raw(empty)
    for target in (zero, empty, tmp_path / "missing.sqlite"):
        storage = SqliteStorage(target)
        commit(storage, {ROOT_OID: (b"root", b"")})
        storage.close()
        reader = SqliteStorage(target, readonly=True)
        assert reader.load(ROOT_OID).data == b"root"
        reader.close()


# --- format errors -------------------------------------------------------------------------


@pytest.mark.req("SQL-040")
def test_unknown_schema_version_is_refused(storage: SqliteStorage, path: Path) -> None:
    storage.close()
    write_raw(path, "PRAGMA user_version=3")
    for readonly in (False, True):
        with pytest.raises(FormatError) as info:
            SqliteStorage(path, readonly=readonly)
        message = str(info.value)
        assert str(path) in message and "version 3" in message and "versions 1 and 2" in message


@pytest.mark.req("SQL-040")
def test_foreign_sqlite_database_is_refused(path: Path) -> None:
    write_raw(path, "CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    with pytest.raises(FormatError, match="not a dhruva one"):
        SqliteStorage(path)
    with raw(path) as check:
        assert check.execute("SELECT name FROM sqlite_master").fetchall() == [("accounts",)]


@pytest.mark.req("SQL-041")
def test_non_sqlite_file_is_refused(path: Path) -> None:
    path.write_bytes(b"\x89DHRUVA\n" + bytes(56))
    for readonly in (False, True):
        with pytest.raises(FormatError) as info:
            SqliteStorage(path, readonly=readonly)
        assert str(path) in str(info.value) and "DHRUVA" in str(info.value)


@pytest.mark.req("SQL-042")
def test_damaged_pages_raise_corruption_error(storage: SqliteStorage, path: Path) -> None:
    oids = [int8_to_str(n) for n in range(1, 2001)]
    commit(storage, {oid: (b"x" * 300, b"") for oid in oids})
    storage.close()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    # Overwrite every page but the first two (header, schema) with garbage.
    for start in range(2 * page_size, len(data), page_size):
        data[start : start + page_size] = b"\xff" * page_size
    path.write_bytes(bytes(data))
    # SQLite notices at the open (the meta table's page) or at a load.
    with pytest.raises(CorruptionError) as info:
        damaged = SqliteStorage(path, readonly=True)
        try:
            for oid in oids:
                damaged.load(oid)
        finally:
            damaged.close()
    assert info.value.path == str(path)


# --- transactions --------------------------------------------------------------------------


@pytest.mark.req("SQL-020", "SQL-021")
def test_failed_commit_rolls_back_and_the_storage_goes_on(storage: SqliteStorage) -> None:
    a, b = int8_to_str(1), int8_to_str(2)
    commit(storage, {a: (b"first", b"")})
    conn = storage._conn
    assert conn is not None
    # Interrupt SQLite inside the commit's statements: end() must raise and
    # leave nothing of the transaction.
    conn.set_progress_handler(lambda: 1, 1)
    storage.begin()
    storage.store(a, b"second", b"")
    storage.store(b, b"second", b"")
    with pytest.raises(DhruvaError):
        storage.end()
    conn.set_progress_handler(None, 1)
    assert not conn.in_transaction
    assert storage.load(a).data == b"first"
    with pytest.raises(DhruvaKeyError):
        storage.load(b)
    commit(storage, {b: (b"after", b"")})
    storage.close()
    reopened = SqliteStorage(storage.path)
    assert reopened.load(a).data == b"first" and reopened.load(b).data == b"after"
    reopened.close()


class FailingConnection:
    """A sqlite3 connection whose COMMIT and ROLLBACK fail (they cannot be patched)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql in ("COMMIT", "ROLLBACK"):
            raise sqlite3.OperationalError(f"simulated failure of {sql}")
        return self.conn.execute(sql, *args)

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        return self.conn.executemany(sql, rows)  # type: ignore[arg-type]

    def close(self) -> None:
        self.conn.close()


@pytest.mark.req("SQL-021")
def test_a_failed_rollback_leaves_the_storage_refusing_work(path: Path) -> None:
    storage = SqliteStorage(path)
    commit(storage, {ROOT_OID: (b"kept", b"")})
    assert storage._conn is not None
    storage._conn = FailingConnection(storage._conn)  # type: ignore[assignment]
    storage.begin()
    storage.store(ROOT_OID, b"lost", b"")
    with pytest.raises(DhruvaError, match="simulated failure of COMMIT"):
        storage.end()
    for operation in (lambda: storage.load(ROOT_OID), storage.begin, storage.new_oid):
        with pytest.raises(DhruvaError, match="close and reopen"):
            operation()
    storage.close()
    reopened = SqliteStorage(path)
    assert reopened.load(ROOT_OID).data == b"kept"
    reopened.close()


@pytest.mark.req("SQL-020", "SQL-005", "SQL-080")
def test_a_commit_is_one_sqlite_transaction(storage: SqliteStorage) -> None:
    conn = storage._conn
    assert conn is not None
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    storage.begin()
    for n in range(1, 4):
        storage.store(int8_to_str(n), b"x", b"")
    storage.end()
    storage.begin()
    storage.store(int8_to_str(2), b"y", b"")
    storage.end()  # the high-water mark is unchanged: only the tid is written
    storage.begin()
    storage.end()  # empty: runs nothing
    conn.set_trace_callback(None)
    words = [" ".join(statement.split()[:3]) for statement in statements]
    first = ["BEGIN IMMEDIATE", *["INSERT OR REPLACE"] * 4, "COMMIT"]
    assert words == [*first, "BEGIN IMMEDIATE", *["INSERT OR REPLACE"] * 2, "COMMIT"]
    # [SQL-080] One meta statement per commit: the tid, with the mark when it moved.
    meta = [statement for statement in statements if "INTO meta" in statement]
    assert len(meta) == 2 and "last_tid" in meta[0] and "oid_high_water" in meta[0]


@pytest.mark.req("SQL-022", "SQL-020")
def test_stores_reach_sqlite_only_at_end(storage: SqliteStorage, path: Path) -> None:
    commit(storage, {ROOT_OID: (b"root", b"")})
    storage.begin()
    storage.store(ROOT_OID, b"changed", b"")
    storage.store(int8_to_str(5), b"new", b"")
    with raw(path) as db:
        assert db.execute("SELECT count(*) FROM objects").fetchone()[0] == 1
        assert db.execute("SELECT data FROM objects").fetchone()[0] == b"root"
    storage.end()
    with raw(path) as db:
        assert db.execute("SELECT count(*) FROM objects").fetchone()[0] == 2


def test_bulk_load_spans_batches(storage: SqliteStorage) -> None:
    oids = [int8_to_str(n) for n in range(1, 2 * BATCH_SIZE + 7)]
    commit(storage, {oid: (oid * 2, oid) for oid in oids})
    wanted = list(reversed(oids)) + oids[:3]
    assert [r.oid for r in storage.bulk_load(wanted)] == wanted
    assert all(r.data == r.oid * 2 and r.refs == r.oid for r in storage.bulk_load(wanted))
    missing = int8_to_str(99_999)
    asked = [*oids[: BATCH_SIZE + 2], missing, oids[0]]
    loaded = []
    with pytest.raises(DhruvaKeyError) as info:
        for record in storage.bulk_load(asked):
            loaded.append(record.oid)
    assert info.value.oid == missing
    assert loaded == asked[: BATCH_SIZE + 2]


# --- oids ------------------------------------------------------------------------------------


@pytest.mark.req("SQL-050", "SQL-005", "SAPI-010")
def test_durus_reissue_scenario_through_a_connection(path: Path) -> None:
    """Durus's SQLite storage handed out the highest oid again after a reopen.

    The next commit then overwrote a live object.  Replay it: the newest
    object holds the highest oid, the database is reopened, a new object is
    committed, and every earlier object must still be intact.
    """
    connection = Connection(SqliteStorage(path))
    root = connection.get_root()
    for name in ("a", "b", "c"):
        child = PersistentDict()
        child["name"] = name
        root[name] = child
    connection.commit()
    newest = root["c"]._p_oid
    connection.get_storage().close()

    connection = Connection(SqliteStorage(path))
    root = connection.get_root()
    intruder = PersistentDict()
    intruder["name"] = "intruder"
    root["d"] = intruder
    connection.commit()
    assert intruder._p_oid != newest
    connection.get_storage().close()

    connection = Connection(SqliteStorage(path))
    root = connection.get_root()
    assert {name: root[name]["name"] for name in "abcd"} == {
        n: n if n != "d" else "intruder" for n in "abcd"
    }
    connection.get_storage().close()


@pytest.mark.req("SQL-050", "SQL-063", "SQL-005")
def test_high_water_mark_survives_pack_reopen_and_crash(path: Path) -> None:
    storage = SqliteStorage(path)
    garbage = [storage.new_oid() for _ in range(10)][-1]
    commit(storage, {ROOT_OID: (b"root", b""), garbage: (b"garbage", b"")})
    storage.pack()
    with pytest.raises(DhruvaKeyError):
        storage.load(garbage)
    storage.close()
    with raw(path) as db:
        (mark,) = db.execute("SELECT value FROM meta WHERE name = 'oid_high_water'").fetchone()
        assert db.execute("SELECT max(oid) FROM objects").fetchone()[0] == 0
    assert mark == oid_to_key(garbage)
    # The highest stored oid is gone; the mark alone keeps it from coming back.
    storage = SqliteStorage(path)
    fresh = storage.new_oid()
    assert int.from_bytes(fresh, "big") > int.from_bytes(garbage, "big")
    storage.close()


@pytest.mark.req("SQL-050")
def test_high_oids_and_the_top_of_the_oid_space(path: Path) -> None:
    storage = SqliteStorage(path)
    top = b"\xff" * 8
    high = int8_to_str(1 << 63)
    commit(storage, {high: (b"high", b""), int8_to_str(7): (b"low", b"")})
    storage.close()
    storage = SqliteStorage(path)
    assert storage.new_oid() == int8_to_str((1 << 63) + 1)
    commit(storage, {top: (b"top", b"")})
    storage.close()
    storage = SqliteStorage(path)
    assert storage.load(top).data == b"top" and storage.load(high).data == b"high"
    with pytest.raises(DhruvaError, match="every 8-byte oid"):
        storage.new_oid()
    storage.close()


@pytest.mark.req("SQL-005")
def test_handed_out_oids_are_persisted_with_the_next_commit(path: Path) -> None:
    storage = SqliteStorage(path)
    handed = [storage.new_oid() for _ in range(20)]
    commit(storage, {ROOT_OID: (b"root", b"")})
    storage.close()
    storage = SqliteStorage(path)
    assert storage.new_oid() == int8_to_str(20)
    assert handed[-1] == int8_to_str(19)
    storage.close()


# --- locking and read-only opens -------------------------------------------------------------


@pytest.mark.req("SQL-030")
def test_second_writer_in_this_process_is_locked_out(storage: SqliteStorage, path: Path) -> None:
    with pytest.raises(StorageLockedError) as info:
        SqliteStorage(path)
    assert str(path) in str(info.value) and "read-only" in str(info.value)
    storage.close()
    SqliteStorage(path).close()  # released at close


@pytest.mark.req("SQL-030")
def test_second_writer_in_another_process_is_locked_out(path: Path) -> None:
    SqliteStorage(path).close()
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from dhruva.sqlite_storage import SqliteStorage; "
            "s = SqliteStorage(sys.argv[1]); print('open', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "open"
            with pytest.raises(StorageLockedError):
                SqliteStorage(path)
            reader = SqliteStorage(path, readonly=True)  # readers take no lock
            reader.close()
        finally:
            child.kill()
            child.wait()
    # The kernel released the dead process's lock.
    SqliteStorage(path).close()


@pytest.mark.req("SQL-031", "SQL-032")
def test_readonly_open_sees_a_snapshot_and_refuses_writes(path: Path) -> None:
    writer = SqliteStorage(path)
    commit(writer, {ROOT_OID: (b"v1", b"")})
    reader = SqliteStorage(path, readonly=True)
    commit(writer, {ROOT_OID: (b"v2", b""), int8_to_str(1): (b"new", b"")})
    assert reader.load(ROOT_OID).data == b"v1"
    with pytest.raises(DhruvaKeyError):
        reader.load(int8_to_str(1))
    assert reader.sync() == []
    for attempt in (reader.new_oid, reader.begin):
        with pytest.raises(ReadOnlyError):
            attempt()
    with pytest.raises(ReadOnlyError):
        reader.store(ROOT_OID, b"x", b"")
    reader.close()
    writer.close()
    before = path.read_bytes()
    reader = SqliteStorage(path, readonly=True)
    assert reader.load(ROOT_OID).data == b"v2"
    assert not os.path.exists(str(path) + ".lock") or os.path.getsize(str(path) + ".lock") == 0
    reader.close()
    assert path.read_bytes() == before


@pytest.mark.req("SQL-031")
def test_readonly_open_of_a_missing_file(path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SqliteStorage(path, readonly=True)
    assert not path.exists()


# --- pack -------------------------------------------------------------------------------------


@pytest.mark.req("SQL-060", "SQL-062")
def test_pack_follows_refs_only_and_shrinks_the_file(storage: SqliteStorage, path: Path) -> None:
    a, b, dangling = int8_to_str(1), int8_to_str(2), int8_to_str(3)
    # The data are not pickles: a pack that looked inside them would fail.
    commit(storage, {ROOT_OID: (b"\xff\x00not a pickle", a + dangling), a: (b"\x80", b)})
    commit(storage, {b: (b"b", ROOT_OID)})
    big = {int8_to_str(n): (os.urandom(2000), b"") for n in range(100, 1100)}
    commit(storage, big)
    storage.close()
    size_before = path.stat().st_size
    storage = SqliteStorage(path)
    storage.pack()
    assert sorted(storage.iter_oids()) == [ROOT_OID, a, b]
    assert storage.load(a) == Record(a, b"\x80", b)
    with pytest.raises(DhruvaKeyError):
        storage.load(dangling)
    assert path.stat().st_size < size_before // 4
    assert os.path.getsize(str(path) + "-wal") == 0  # checkpointed and truncated
    storage.close()


PACK_CHILD = """
import os, signal, sys
from dhruva.sqlite_storage import SqliteStorage
path, unit, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
storage = SqliteStorage(path)
counts = {"step": 0, "statement": 0}
def count(what):
    counts[what] += 1
    if what == unit and counts[what] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return 0
# A crash point every 20 SQLite VM steps, and at the start of every statement.
storage._conn.set_progress_handler(lambda: count("step"), 20)
traced = []
def trace(statement):
    traced.append(statement.split()[0])
    count("statement")
storage._conn.set_trace_callback(trace)
storage.pack()
if unit == "after":
    os.kill(os.getpid(), signal.SIGKILL)
print(counts["step"], *traced, flush=True)
"""


def _state(path: Path) -> dict[bytes, bytes]:
    storage = SqliteStorage(path, readonly=True)
    try:
        return {oid: storage.load(oid).data for oid in storage.iter_oids()}
    finally:
        storage.close()


@pytest.mark.req("SQL-061", "SQL-062")
def test_pack_killed_at_many_points_leaves_old_or_new(tmp_path: Path) -> None:
    """SIGKILL inside pack: at every statement and at spread VM steps; old or new, never a mix."""
    template = tmp_path / "template.sqlite"
    storage = SqliteStorage(template)
    # A shallow graph (the root refers to every live object): few mark batches.
    live = {int8_to_str(n): (b"live%d" % n, ROOT_OID) for n in range(1, 300)}
    live[ROOT_OID] = (b"root", b"".join(live))
    commit(storage, live)
    commit(storage, {int8_to_str(n): (b"dead%d" % n * 50, b"") for n in range(1000, 1600)})
    storage.close()
    old = _state(template)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = iter(range(1000))

    def run(unit: str, kill_at: int) -> tuple[subprocess.CompletedProcess[str], Path]:
        target = tmp_path / f"kill{next(runs)}.sqlite"
        target.write_bytes(template.read_bytes())
        result = subprocess.run(
            [sys.executable, "-c", PACK_CHILD, str(target), unit, str(kill_at)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        return result, target

    finished, target = run("none", 0)
    assert finished.returncode == 0, finished.stderr
    steps_text, *statements = finished.stdout.split()
    steps = int(steps_text)
    new = _state(target)
    assert set(new) == {*live} and new != old
    # Every statement but the run of per-row DELETEs, of which the first and last.
    deletes = [n for n, word in enumerate(statements, 1) if word == "DELETE"]
    points = [
        ("statement", n)
        for n, word in enumerate(statements, 1)
        if word != "DELETE" or n in (deletes[0], deletes[-1])
    ]
    assert any(statements[n - 1] == "COMMIT" for _unit, n in points)
    points += [("step", n) for n in sorted({1, steps // 3, (2 * steps) // 3, steps})]
    points.append(("after", 0))
    outcomes = []
    for unit, kill_at in points:
        result, target = run(unit, kill_at)
        assert result.returncode == -signal.SIGKILL, result.stderr
        state = _state(target)
        assert state in (old, new), f"killed at {unit} {kill_at}: a mix"
        outcomes.append(state == new)
        # The store takes commits after the crash.
        reopened = SqliteStorage(target)
        commit(reopened, {int8_to_str(5000): (b"after", b"")})
        assert int.from_bytes(reopened.new_oid(), "big") > 5000
        reopened.close()
    # Old up to some crash point, new from there on: the commit is one point.
    assert outcomes[0] is False and outcomes[-1] is True
    by_statement = outcomes[: len(points) - 5]
    assert sum(1 for a, b in itertools.pairwise(by_statement) if a != b) == 1, outcomes


# --- backup ---------------------------------------------------------------------------------


def _consistent_version(path: Path, oids: list[bytes]) -> int:
    """Return the version all ``oids`` show in the copy at ``path``; fail on a mix."""
    state = _state(path)
    versions = {state.get(oid) for oid in oids}
    assert len(versions) == 1, f"the copy mixes commits: {sorted(map(repr, versions))}"
    (version,) = versions
    return 0 if version is None else int(version)


@pytest.mark.req("SQL-070", "SQL-071")
def test_backup_while_commits_continue_stepwise(storage: SqliteStorage, tmp_path: Path) -> None:
    oids = [int8_to_str(n) for n in range(1, 40)]
    commit(storage, {oid: (b"1", os.urandom(4000)[:8]) for oid in oids})
    # Grow the database to many pages so that a one-page-per-step copy takes many steps.
    commit(storage, {int8_to_str(n): (os.urandom(3000), b"") for n in range(100, 300)})
    version = 1
    calls = []

    def progress(status: int, remaining: int, total: int) -> None:
        nonlocal version
        calls.append(remaining)
        if len(calls) in (2, 5, 9):  # commits between backup steps
            version += 1
            commit(storage, {oid: (b"%d" % version, b"") for oid in oids})

    dest = tmp_path / "copy.sqlite"
    storage.backup(dest, pages=1, progress=progress)
    assert len(calls) > 9 and version == 4
    assert _consistent_version(dest, oids) == 4  # the copy restarted after each commit
    assert not Path(str(dest) + ".partial").exists()
    assert storage.load(oids[0]).data == b"4"
    with pytest.raises(FileExistsError):
        storage.backup(dest)
    copy = SqliteStorage(dest)  # a copy is a full dhruva database
    commit(copy, {ROOT_OID: (b"root", b"")})
    copy.close()


@pytest.mark.req("SQL-070", "SQL-071")
def test_backup_from_another_thread_under_write_load(path: Path, tmp_path: Path) -> None:
    storage = SqliteStorage(path)
    oids = [int8_to_str(n) for n in range(1, 30)]
    commit(storage, {oid: (b"1", b"") for oid in oids})
    commit(storage, {int8_to_str(n): (os.urandom(2000), b"") for n in range(100, 600)})
    acknowledged = [1]
    stop = threading.Event()

    def writer() -> None:
        version = 1
        while not stop.is_set() and version < 2000:
            version += 1
            commit(storage, {oid: (b"%d" % version, b"") for oid in oids})
            acknowledged.append(version)

    thread = threading.Thread(target=writer)
    thread.start()
    copies = []
    try:
        for index in range(3):
            floor = acknowledged[-1]
            dest = tmp_path / f"copy{index}.sqlite"
            backup(path, dest)
            copies.append((floor, dest))
    finally:
        stop.set()
        thread.join()
    for floor, dest in copies:
        assert _consistent_version(dest, oids) >= floor
    assert storage.load(oids[0]).data == b"%d" % acknowledged[-1]
    storage.close()


@pytest.mark.req("SQL-064")
def test_pack_reports_its_steps_in_order(storage: SqliteStorage) -> None:
    garbage = {int8_to_str(n): (b"g", b"") for n in range(1, BATCH_SIZE + 10)}
    commit(storage, {ROOT_OID: (b"root", b""), **garbage})
    steps: list[str] = []
    storage._pack_step_hook = steps.append
    storage.pack()
    assert steps == [
        "begun",
        "marked",
        "deleted",
        "deleted",
        "committed",
        "vacuumed",
        "checkpointed",
    ]
    assert list(storage.iter_oids()) == [ROOT_OID]


# --- snapshots (SQL-080..SQL-083) -----------------------------------------------------------


@pytest.mark.req("SQL-080", "SAPI-090")
def test_last_tid_is_kept_in_meta_and_survives_reopen(path: Path) -> None:
    storage = SqliteStorage(path)
    commit(storage, {ROOT_OID: (b"one", b"")})
    commit(storage, {ROOT_OID: (b"two", b"")})
    assert storage.last_tid() == 2
    storage.close()
    with raw(path) as db:
        assert db.execute("SELECT value FROM meta WHERE name = 'last_tid'").fetchone() == (2,)
    storage = SqliteStorage(path)
    assert storage.last_tid() == 2
    commit(storage, {ROOT_OID: (b"three", b"")})
    assert storage.last_tid() == 3
    storage.close()


@pytest.mark.req("SQL-080")
def test_a_database_without_the_last_tid_row_opens_at_zero(path: Path) -> None:
    storage = SqliteStorage(path)
    commit(storage, {ROOT_OID: (b"old", b"")})
    storage.close()
    # A database written before the row existed: same schema, no row.
    write_raw(path, "DELETE FROM meta WHERE name = 'last_tid'")
    storage = SqliteStorage(path)
    assert storage.last_tid() == 0
    assert storage.load(ROOT_OID).data == b"old"
    assert storage.load_at(ROOT_OID, 0).data == b"old"
    commit(storage, {ROOT_OID: (b"new", b"")})
    assert storage.last_tid() == 1
    storage.close()


@pytest.mark.req("SQL-082")
def test_readonly_read_point_is_its_fixed_snapshot(path: Path) -> None:
    writer = SqliteStorage(path)
    commit(writer, {ROOT_OID: (b"one", b"")})
    reader = SqliteStorage(path, readonly=True)
    point = reader.last_tid()
    assert point == writer.last_tid()
    commit(writer, {ROOT_OID: (b"two", b"")})
    assert reader.sync() == []
    assert reader.last_tid() == point
    assert reader.load_at(ROOT_OID, point).data == b"one"
    with pytest.raises(ValueError):
        reader.load_at(ROOT_OID, writer.last_tid())  # beyond its read point
    reader.close()
    writer.close()


@pytest.mark.req("SQL-081", "SQL-083")
def test_commits_keep_replaced_versions_only_while_a_snapshot_is_held(
    storage: SqliteStorage,
) -> None:
    one = int8_to_str(1)
    commit(storage, {ROOT_OID: (b"root", one), one: (b"one", b"")})
    commit(storage, {one: (b"one v2", b"")})
    assert len(storage._ledger) == 0  # nothing held: nothing read or kept
    held = storage.last_tid()
    storage.set_oldest_snapshot(held)
    commit(storage, {ROOT_OID: (b"root v3", b"")})  # 1 now unreachable
    assert len(storage._ledger) == 1
    storage.pack()
    assert storage.load_at(one, held).data == b"one v2"
    storage.set_oldest_snapshot(None)
    storage.pack()
    with pytest.raises(DhruvaKeyError):
        storage.load(one)


# --- blobs (SQL-090..SQL-093) ----------------------------------------------------------------

CHUNK = 1 << 20


def user_version(path: Path) -> int:
    with raw(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def commit_blob(storage: SqliteStorage, oid: bytes, source: io.BufferedIOBase | io.BytesIO) -> None:
    storage.begin()
    storage.store(oid, b"blob record", b"")
    storage.store_blob(oid, source)
    storage.end()


class Pattern(io.RawIOBase):
    """``size`` bytes of a repeating pattern, read in odd-sized pieces, never whole in memory."""

    BASE = bytes(range(251)) * (CHUNK // 251 + 2)

    def __init__(self, size: int, piece: int = 300_007) -> None:
        self.left = size
        self.position = 0
        self.piece = piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left, self.piece, CHUNK)
        start = self.position % 251
        buffer[:count] = self.BASE[start : start + count]
        self.left -= count
        self.position += count
        return count


@pytest.mark.req("SQL-090")
def test_the_first_blob_makes_the_database_version_2(storage: SqliteStorage, path: Path) -> None:
    oid = storage.new_oid()
    commit(storage, {oid: (b"plain", b"")})
    assert user_version(path) == 1  # a database without blobs stays readable by older dhruvas
    storage.begin()
    storage.store(oid, b"blob record", b"")
    storage.store_blob(oid, io.BytesIO(b"dropped"))
    storage.abort_transaction()
    assert user_version(path) == 1  # the move to version 2 went with the rollback
    with pytest.raises(DhruvaKeyError):
        storage.open_blob(oid)
    commit_blob(storage, oid, io.BytesIO(b"kept"))
    assert user_version(path) == 2
    with raw(path) as db:
        tables = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    assert tables["blob_chunks"] == sqlite_storage.BLOB_SCHEMA[0]
    storage.close()
    for readonly in (True, False):
        reopened = SqliteStorage(path, readonly=readonly)
        with reopened.open_blob(oid) as file:
            assert file.read() == b"kept"
        reopened.close()


@pytest.mark.req("SQL-040", "SQL-090")
def test_version_2_without_its_table_is_refused(storage: SqliteStorage, path: Path) -> None:
    storage.close()
    write_raw(path, "PRAGMA user_version=2")
    with pytest.raises(FormatError, match="no table blob_chunks"):
        SqliteStorage(path, readonly=True)


@pytest.mark.req("SQL-090", "BLOB-030")
def test_chunk_rows_of_a_blob(storage: SqliteStorage, path: Path) -> None:
    big, empty, exact = storage.new_oid(), storage.new_oid(), storage.new_oid()
    commit_blob(storage, big, Pattern(2 * CHUNK + 1))
    commit_blob(storage, empty, io.BytesIO(b""))
    commit_blob(storage, exact, Pattern(CHUNK))
    with raw(path) as db:
        rows = db.execute(
            "SELECT oid, tid, n, length(data) FROM blob_chunks ORDER BY oid, tid, n"
        ).fetchall()
    keys = [sqlite_storage.oid_to_key(oid) for oid in (big, empty, exact)]
    assert rows == [
        (keys[0], 1, 0, CHUNK),
        (keys[0], 1, 1, CHUNK),
        (keys[0], 1, 2, 1),
        (keys[1], 2, 0, 0),
        (keys[2], 3, 0, CHUNK),
    ]
    expected = io.BytesIO()
    source = Pattern(2 * CHUNK + 1)
    while chunk := source.read(CHUNK):
        expected.write(chunk)
    with storage.open_blob(big) as file:
        assert file.read() == expected.getvalue()


@pytest.mark.req("BLOB-015", "SQL-091")
def test_a_large_blob_is_never_whole_in_memory(storage: SqliteStorage) -> None:
    import tracemalloc

    oid = storage.new_oid()
    size = 24 * CHUNK
    tracemalloc.start()
    try:
        commit_blob(storage, oid, Pattern(size))
        _, written_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read = 0
        with storage.open_blob(oid) as file:
            while piece := file.read(256 << 10):
                read += len(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read == size
    # A chunk being written or read, the buffered reader's buffer, and copies.
    assert written_peak < 4 * CHUNK, written_peak
    assert read_peak < 4 * CHUNK, read_peak


@pytest.mark.req("BLOB-012", "BLOB-032", "SQL-091")
def test_a_crash_with_a_large_staged_blob_leaves_none(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite"
    storage = SqliteStorage(path)
    oid = storage.new_oid()
    commit(storage, {oid: (b"before", b"")})
    storage.begin()
    storage.store(oid, b"blob record", b"")
    # More than SQLite's page cache: pages spill into the WAL before any commit.
    storage.store_blob(oid, Pattern(16 * CHUNK))
    # What a killed process leaves: the files as they are now.
    copy = tmp_path / "copy.sqlite"
    for suffix in ("", "-wal"):
        source = Path(str(path) + suffix)
        if source.exists():
            Path(str(copy) + suffix).write_bytes(source.read_bytes())
    storage.abort_transaction()
    storage.close()
    reopened = SqliteStorage(copy)
    assert reopened.load(oid).data == b"before"
    with pytest.raises(DhruvaKeyError):
        reopened.open_blob(oid)
    reopened.close()


@pytest.mark.req("BLOB-010", "SQL-091")
def test_a_failing_source_leaves_the_transaction_as_before(
    storage: SqliteStorage, path: Path
) -> None:
    oid, other = storage.new_oid(), storage.new_oid()

    class Failing(Pattern):
        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            if self.left < 2 * CHUNK:
                raise OSError(5, "Input/output error")
            return super().readinto(buffer)

    storage.begin()
    storage.store(oid, b"blob record", b"")
    storage.store(other, b"blob record", b"")
    storage.store_blob(other, io.BytesIO(b"other"))
    with pytest.raises(OSError):
        storage.store_blob(oid, Failing(5 * CHUNK))
    storage.end()
    with storage.open_blob(other) as file:
        assert file.read() == b"other"
    with pytest.raises(DhruvaKeyError):
        storage.open_blob(oid)
    with raw(path) as db:
        assert db.execute("SELECT count(*) FROM blob_chunks").fetchone()[0] == 1


@pytest.mark.req("BLOB-031", "SQL-092")
def test_a_chunk_gone_or_damaged_while_read_raises(storage: SqliteStorage, path: Path) -> None:
    oid = storage.new_oid()
    commit_blob(storage, oid, Pattern(3 * CHUNK))
    conn = storage._conn
    assert conn is not None
    key = sqlite_storage.oid_to_key(oid)
    with storage.open_blob(oid) as file:
        assert len(file.read(CHUNK)) == CHUNK
        conn.execute("UPDATE blob_chunks SET data = x'00' WHERE oid = ? AND n = 1", (key,))
        with pytest.raises(CorruptionError, match="chunk 1 holds 1 bytes"):
            file.read(CHUNK)
    with storage.open_blob(oid) as file:
        conn.execute("DELETE FROM blob_chunks WHERE oid = ? AND n = 2", (key,))
        file.seek(2 * CHUNK)
        with pytest.raises(DhruvaError, match="a pack removed this version"):
            file.read()


@pytest.mark.req("BLOB-033", "SQL-093")
def test_pack_deletes_the_chunks_no_reader_reaches(storage: SqliteStorage, path: Path) -> None:
    kept, dropped = storage.new_oid(), storage.new_oid()
    commit(storage, {ROOT_OID: (b"root", kept)})
    commit_blob(storage, kept, Pattern(CHUNK + 1))
    commit_blob(storage, kept, io.BytesIO(b"new"))
    commit_blob(storage, dropped, Pattern(2 * CHUNK))
    steps: list[str] = []
    storage._pack_step_hook = steps.append
    storage.pack()
    with raw(path) as db:
        rows = db.execute("SELECT oid, tid, n, length(data) FROM blob_chunks").fetchall()
    assert rows == [(sqlite_storage.oid_to_key(kept), 3, 0, 3)]
    assert steps[-2:] == ["vacuumed", "checkpointed"]


@pytest.mark.req("SQL-070", "SQL-090")
def test_backup_carries_the_blobs(storage: SqliteStorage, tmp_path: Path) -> None:
    blob = storage.new_oid()
    commit_blob(storage, blob, Pattern(CHUNK + 7))
    copy = tmp_path / "copy.sqlite"
    storage.backup(copy)
    restored = SqliteStorage(copy, readonly=True)
    with restored.open_blob(blob) as file, storage.open_blob(blob) as original:
        assert file.read() == original.read()
    restored.close()


@pytest.mark.req("BLOB-010", "SQL-091")
def test_blobs_lost_with_their_transaction_are_never_committed_without(
    storage: SqliteStorage,
) -> None:
    first, second = storage.new_oid(), storage.new_oid()
    conn = storage._conn
    assert conn is not None

    class RolledBack(io.RawIOBase):
        """What SQLite does on a full disk: the whole transaction is rolled back."""

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            conn.execute("ROLLBACK")
            raise OSError(28, "No space left on device")

    storage.begin()
    storage.store(first, b"blob record", b"")
    storage.store(second, b"blob record", b"")
    storage.store_blob(first, io.BytesIO(b"first"))
    with pytest.raises(OSError):
        storage.store_blob(second, RolledBack())
    with pytest.raises(DhruvaError, match="blobs were lost"):
        storage.end()  # never the records without the first blob
    storage.abort_transaction()
    for oid in (first, second):
        with pytest.raises(DhruvaKeyError):
            storage.load(oid)
        with pytest.raises(DhruvaKeyError):
            storage.open_blob(oid)
    # The storage goes on: the next transaction commits.
    commit_blob(storage, first, io.BytesIO(b"again"))
    with storage.open_blob(first) as file:
        assert file.read() == b"again"


@pytest.mark.req("SQL-091")
def test_an_empty_transaction_after_a_failed_blob_releases_the_write_lock(
    storage: SqliteStorage, path: Path
) -> None:
    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            raise OSError(5, "Input/output error")

    storage.begin()
    with pytest.raises(OSError):
        storage.store_blob(storage.new_oid(), Failing())
    storage.end()  # nothing to commit
    assert storage._conn is not None and not storage._conn.in_transaction
    other = sqlite3.connect(path, timeout=0.1)
    try:
        other.execute("BEGIN IMMEDIATE")  # the write lock is free
        other.execute("ROLLBACK")
    finally:
        other.close()
