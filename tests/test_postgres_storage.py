"""PostgresStorage on a real PostgreSQL server (spec: postgres-storage.md, PG-*).

The server is the conformance back-end's: a throwaway cluster started on a
Unix socket for this test process (stopped by pid at the end), or the one
``DHRUVA_TEST_POSTGRES`` names.  Each test gets a schema of its own.  The
tests skip only when psycopg is missing (the nox session installs it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
from dhruva_conformance import postgres_backend
from dhruva_conformance.faults import child_environment

from dhruva.error import (
    AuthenticationError,
    DhruvaError,
    DhruvaKeyError,
    FormatError,
    ReadConflictError,
    ReadOnlyError,
    SnapshotTooOldError,
    WriteConflictError,
)
from dhruva.utils import int8_to_str

MISSING = postgres_backend.psycopg_missing_reason()
needs_psycopg = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.mark.req("PG-001")
def test_core_import_does_not_load_psycopg() -> None:
    code = "import sys, dhruva, dhruva.postgres_storage; assert 'psycopg' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=child_environment())


@pytest.mark.req("PG-001")
def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from dhruva.postgres_storage import PostgresStorage

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(DhruvaError, match=r"pip install 'dhruva\[postgres\]'"):
        PostgresStorage("host=/nonexistent")


# --- fixtures ------------------------------------------------------------------------


# ``dsn`` and ``schema`` are in conftest.py (tests/test_postgres_blobs.py uses them too).


def _sql(dsn: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params or None)
        return list(cursor.fetchall()) if cursor.description else []


def _open(dsn: str, schema: str, **options: object):  # type: ignore[no-untyped-def]
    from dhruva.postgres_storage import PostgresStorage

    return PostgresStorage(dsn, schema=schema, **options)  # type: ignore[arg-type]


def _commit(storage, records: dict[bytes, bytes]) -> None:  # type: ignore[no-untyped-def]
    storage.begin()
    for oid, data in records.items():
        storage.store(oid, data)
    storage.end()


def oid(number: int) -> bytes:
    return int8_to_str(number)


# --- schema ----------------------------------------------------------------------------


@needs_psycopg
@pytest.mark.req("PG-010")
def test_creates_every_relation_and_meta_row(dsn: str, schema: str) -> None:
    _open(dsn, schema).close()
    names = {
        row[0]
        for row in _sql(
            dsn,
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE nspname = %s",
            schema,
        )
    }
    assert {"dhruva_meta", "dhruva_object", "dhruva_transaction", "dhruva_oid"} <= names
    assert "dhruva_tid_seq" in names
    meta = dict(_sql(dsn, f'SELECT name, value FROM "{schema}".dhruva_meta'))
    assert meta["application_id"] == "dhruva"
    assert meta["schema_version"] == "1"
    assert meta["log_pruned_through"] == "0"


@needs_psycopg
@pytest.mark.req("PG-011")
def test_refuses_another_applications_tables(dsn: str, schema: str) -> None:
    _sql(dsn, f'CREATE SCHEMA "{schema}"')
    _sql(dsn, f'CREATE TABLE "{schema}".customers (id int)')
    with pytest.raises(FormatError, match="another application"):
        _open(dsn, schema)
    names = _sql(
        dsn,
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE nspname = %s AND relname LIKE 'dhruva%%'",
        schema,
    )
    assert names == []


@needs_psycopg
@pytest.mark.req("PG-011", "PG-013")
def test_refuses_foreign_application_id_and_unknown_version(dsn: str, schema: str) -> None:
    _open(dsn, schema).close()
    _sql(dsn, f"UPDATE \"{schema}\".dhruva_meta SET value = '3' WHERE name = 'schema_version'")
    with pytest.raises(FormatError, match=r"schema version 3.*versions 1 and 2"):
        _open(dsn, schema)
    # Version 2 is known, but only with its blob table (PG-090).
    _sql(dsn, f"UPDATE \"{schema}\".dhruva_meta SET value = '2' WHERE name = 'schema_version'")
    with pytest.raises(FormatError, match="lacks dhruva_blob_chunk"):
        _open(dsn, schema)
    _sql(dsn, f"UPDATE \"{schema}\".dhruva_meta SET value = 'zodb' WHERE name = 'application_id'")
    with pytest.raises(FormatError, match="zodb"):
        _open(dsn, schema)


@needs_psycopg
@pytest.mark.req("PG-012")
def test_concurrent_first_opens_create_once(dsn: str, schema: str) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            _open(dsn, schema).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# --- oids --------------------------------------------------------------------------------


@needs_psycopg
@pytest.mark.req("PG-014")
def test_oid_blocks_are_disjoint_and_above_stored_oids(dsn: str, schema: str) -> None:
    first, second = _open(dsn, schema), _open(dsn, schema)
    assert first.new_oid() == oid(0)
    mine = {first.new_oid() for _ in range(200)}
    theirs = {second.new_oid() for _ in range(200)}
    assert not mine & theirs
    _commit(first, {oid(10**6): b"chosen"})
    third = _open(dsn, schema)
    assert int.from_bytes(third.new_oid(), "big") > 10**6
    for storage in (first, second, third):
        storage.close()


# --- sync and conflicts ------------------------------------------------------------------------


@needs_psycopg
@pytest.mark.req("PG-020", "PG-021", "PG-030", "PG-081")
def test_conflicts_exactly_as_through_the_server(dsn: str, schema: str) -> None:
    a, b = _open(dsn, schema), _open(dsn, schema)
    _commit(a, {oid(0): b"root", oid(1): b"one"})
    assert a.sync() == []  # its own commit is never reported
    # b has not synchronized: it reads as of its read point, where neither
    # oid existed (PG-081: no ReadConflictError, the version of the snapshot).
    with pytest.raises(DhruvaKeyError):
        b.load(oid(1))
    with pytest.raises(DhruvaKeyError):
        list(b.bulk_load([oid(0), oid(1)]))
    with pytest.raises(WriteConflictError) as refused:
        _commit(b, {oid(1): b"stale"})
    assert refused.value.oids == [oid(1)]
    assert a.load(oid(1)).data == b"one"  # nothing of the refused commit was written
    assert b.sync() == [oid(0), oid(1)]
    assert b.load(oid(1)).data == b"one"
    _commit(b, {oid(1): b"fresh", oid(2): b"two"})
    # a commit of b reports what it saw under the lock, and nothing twice
    _commit(a, {oid(3): b"three"})
    assert sorted(b.sync()) == [oid(3)]
    assert sorted(a.sync()) == [oid(1), oid(2)]
    assert a.load(oid(1)).data == b"fresh"
    a.close()
    b.close()


@needs_psycopg
@pytest.mark.req("SAPI-091", "PG-080", "PG-081", "PG-083")
def test_load_returns_the_read_point_version_until_sync(dsn: str, schema: str) -> None:
    a, b = _open(dsn, schema), _open(dsn, schema)
    _commit(a, {oid(0): b"root", oid(1): b"one"})
    b.sync()
    point = b.last_tid()
    assert point == a.last_tid()
    _commit(a, {oid(1): b"one v2", oid(2): b"two"})
    _commit(a, {oid(1): b"one v3"})
    # b reads as of its read point: the old version, never a conflict.
    assert b.last_tid() == point
    assert b.load(oid(1)).data == b"one"
    assert [r.data for r in b.bulk_load([oid(0), oid(1)])] == [b"root", b"one"]
    with pytest.raises(DhruvaKeyError):
        b.load(oid(2))  # created after b's read point
    assert b.load_at(oid(1), point).data == b"one"
    assert b.sync() == [oid(1), oid(2)]
    assert b.last_tid() == a.last_tid() > point
    assert b.load(oid(1)).data == b"one v3"
    assert b.load(oid(2)).data == b"two"
    a.close()
    b.close()


@needs_psycopg
@pytest.mark.req("SAPI-095", "PG-084")
def test_note_reads_conflicts_with_commits_of_others(dsn: str, schema: str) -> None:
    a, b = _open(dsn, schema), _open(dsn, schema)
    _commit(a, {oid(0): b"root", oid(1): b"one", oid(2): b"two"})
    b.sync()
    _commit(a, {oid(1): b"one v2", oid(2): b"two v2"})
    # b read 1 and 2 at its read point and writes 3: a changed what it read.
    b.begin()
    b.note_reads([oid(1), oid(0)])
    b.store(oid(3), b"three")
    with pytest.raises(ReadConflictError) as caught:
        b.end()
    assert caught.value.oids == [oid(1)]
    with pytest.raises(DhruvaKeyError):
        a.load(oid(3))  # nothing of the refused commit was written
    # Writes take precedence when an oid is both read and written.
    b.begin()
    b.note_reads([oid(1), oid(2)])
    b.store(oid(2), b"mine")
    with pytest.raises(WriteConflictError) as refused:
        b.end()
    assert refused.value.oids == [oid(2)]
    # Reads of unchanged oids do not conflict; after a sync nothing does.
    b.begin()
    b.note_reads([oid(0)])
    b.store(oid(3), b"three")
    b.end()
    b.sync()
    b.begin()
    b.note_reads([oid(1), oid(2)])
    b.store(oid(4), b"four")
    b.end()
    with pytest.raises(DhruvaError):
        b.note_reads([oid(1)])  # outside a transaction
    a.close()
    b.close()


@needs_psycopg
@pytest.mark.req("PG-082", "SAPI-090")
def test_own_commit_moves_the_read_point_to_its_tid(dsn: str, schema: str) -> None:
    a, b = _open(dsn, schema), _open(dsn, schema)
    _commit(a, {oid(0): b"root"})
    _commit(b, {oid(1): b"one"})  # b's commit is above a's
    assert b.last_tid() > a.last_tid()
    # As of b's commit, a's root exists (it committed before).
    assert b.load(oid(0)).data == b"root"
    assert b.load_at(oid(1), b.last_tid()).data == b"one"
    _commit(a, {oid(0): b"root v2"})
    assert b.load(oid(0)).data == b"root"  # a's later commit is not in b's snapshot
    assert b.sync() == [oid(0)]
    assert b.load(oid(0)).data == b"root v2"
    a.close()
    b.close()


@needs_psycopg
@pytest.mark.req("PG-082")
def test_a_commit_between_own_commit_and_new_snapshot_moves_the_read_point_on(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = _open(dsn, schema), _open(dsn, schema)
    _commit(a, {oid(0): b"root", oid(1): b"one"})
    b.sync()
    restart = b._restart_reader

    def racing():  # type: ignore[no-untyped-def]
        _commit(a, {oid(1): b"one v2"})  # lands after b's COMMIT, before its snapshot
        return restart()

    monkeypatch.setattr(b, "_restart_reader", racing)
    _commit(b, {oid(2): b"two"})
    monkeypatch.undo()
    assert b.last_tid() == a.last_tid()  # moved on, as a sync would
    assert b.load(oid(1)).data == b"one v2"  # consistent with that read point
    assert b.load(oid(2)).data == b"two"
    assert b.sync() == [oid(1)]  # and the next sync reports what it passed
    a.close()
    b.close()


@needs_psycopg
@pytest.mark.req("PG-086", "PG-087", "SAPI-092", "SAPI-093")
def test_load_at_below_the_read_point_with_a_held_snapshot(dsn: str, schema: str) -> None:
    a, b = _open(dsn, schema), _open(dsn, schema)
    _commit(a, {oid(0): b"root", oid(1): b"one"})
    b.sync()
    t1 = b.last_tid()
    b.set_oldest_snapshot(t1)
    _commit(a, {oid(1): b"one v2", oid(2): b"two"})
    _commit(a, {oid(1): b"one v3"})
    b.sync()  # others' commits: the versions they replaced are kept for t1
    t2 = b.last_tid()
    _commit(b, {oid(0): b"root v2"})  # b's own commit too
    t3 = b.last_tid()
    assert t1 < t2 < t3
    assert b.load_at(oid(1), t1).data == b"one"
    assert b.load_at(oid(1), t2).data == b"one v3"
    assert b.load_at(oid(0), t1).data == b"root"
    assert b.load_at(oid(0), t2).data == b"root"
    assert b.load_at(oid(0), t3).data == b"root v2"
    with pytest.raises(DhruvaKeyError):
        b.load_at(oid(2), t1)
    # A tid b never read at (a's first commit above t1) is not answered wrongly.
    with pytest.raises(SnapshotTooOldError):
        b.load_at(oid(1), t1 + 1)
    b.set_oldest_snapshot(None)
    _commit(a, {oid(1): b"one v4"})
    b.sync()
    with pytest.raises(SnapshotTooOldError):
        b.load_at(oid(1), t1)
    a.close()
    b.close()


@needs_psycopg
@pytest.mark.req("PG-088")
def test_lost_reader_never_returns_a_later_version(dsn: str, schema: str) -> None:
    a, b = _open(dsn, schema), _open(dsn, schema)
    _commit(a, {oid(0): b"root", oid(1): b"one"})
    b.sync()
    _commit(a, {oid(1): b"one v2"})
    assert b._reader is not None
    _sql(dsn, "SELECT pg_terminate_backend(%s)", b._reader.info.backend_pid)
    with pytest.raises(DhruvaError):
        b.load(oid(1))  # the reader's connection is gone: this call says so
    # The next reader's snapshot is later than b's read point.
    assert b.load(oid(0)).data == b"root"  # unchanged since: still right
    with pytest.raises(SnapshotTooOldError):
        b.load(oid(1))  # changed since: refused, not the later version
    assert b.sync() == [oid(1)]
    assert b.load(oid(1)).data == b"one v2"
    a.close()
    b.close()


@needs_psycopg
@pytest.mark.req("PG-089", "PG-085", "SAPI-096")
def test_pack_keeps_what_a_held_snapshot_reaches(dsn: str, schema: str) -> None:
    a = _open(dsn, schema)
    a.begin()
    a.store(oid(0), b"root", oid(1))
    a.store(oid(1), b"one", oid(2))
    a.store(oid(2), b"two")
    a.end()
    t1 = a.last_tid()
    a.set_oldest_snapshot(t1)
    a.begin()
    a.store(oid(0), b"root v2")
    a.end()
    a.pack()
    assert a.load_at(oid(1), t1).data == b"one"
    assert a.load_at(oid(2), t1).data == b"two"
    a.set_oldest_snapshot(None)
    a.pack()
    with pytest.raises(DhruvaKeyError):
        a.load(oid(2))
    a.close()


@needs_psycopg
@pytest.mark.req("PG-022")
def test_sync_after_the_log_was_pruned(dsn: str, schema: str) -> None:
    a, b = _open(dsn, schema), _open(dsn, schema)
    for number in range(1, 4):
        _commit(a, {oid(number): b"x"})
    # Pruned past b's sync point, as a pack would have done.
    _sql(dsn, f'DELETE FROM "{schema}".dhruva_transaction WHERE tid < 3')
    _sql(dsn, f"UPDATE \"{schema}\".dhruva_meta SET value = '2' WHERE name = 'log_pruned_through'")
    assert b.sync() == [oid(1), oid(2), oid(3)]
    assert b.sync() == []
    a.close()
    b.close()


MULTI_CHILD = """
import sys
from dhruva.connection import Connection
from dhruva.error import ConflictError
from dhruva.postgres_storage import PostgresStorage

dsn, schema, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
storage = PostgresStorage(dsn, schema=schema)
while True:
    # The Connection loads the root as it opens; as through the server, a
    # commit by another process since the storage's sync point is a conflict.
    try:
        connection = Connection(storage)
        break
    except ConflictError:
        storage.sync()
conflicts = 0
for _ in range(count):
    while True:
        connection.abort()
        try:
            # A commit can conflict (PG-030); loads read the snapshot (PG-081).
            root = connection.get_root()
            root["counter"] = root["counter"] + 1
            connection.commit()
            break
        except ConflictError:
            conflicts += 1
print(conflicts, flush=True)
connection.close()
"""


@needs_psycopg
@pytest.mark.req("PG-033", "PG-030")
def test_processes_committing_to_one_object_lose_no_update(dsn: str, schema: str) -> None:
    from dhruva.connection import Connection

    connection = Connection(_open(dsn, schema))
    connection.get_root()["counter"] = 0
    connection.commit()
    per_child, children = 40, 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MULTI_CHILD, dsn, schema, str(per_child)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_environment(),
        )
        for _ in range(children)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    conflicts = sum(int(out.split()[0]) for out, _ in outputs)
    connection.abort()
    assert connection.get_root()["counter"] == per_child * children
    assert conflicts > 0, "four processes on one object never conflicted"
    connection.close()


# --- crashes --------------------------------------------------------------------------------

KILL_CHILD = """
import sys
from dhruva.postgres_storage import PostgresStorage
from dhruva.utils import int8_to_str

dsn, schema = sys.argv[1], sys.argv[2]
storage = PostgresStorage(dsn, schema=schema)
number = 0
while True:
    number += 1
    storage.begin()
    for index in range(1, 301):
        storage.store(int8_to_str(index), b"%d" % number * 50)
    storage.store(int8_to_str(1000 + number), b"ack")
    storage.end()
    print(number, flush=True)
"""


def _acknowledged(proc: subprocess.Popen[str], count: int) -> list[int]:
    assert proc.stdout is not None
    numbers = []
    for line in proc.stdout:
        numbers.append(int(line))
        if len(numbers) >= count:
            break
    return numbers


@needs_psycopg
@pytest.mark.req("PG-032")
def test_sigkill_mid_commit_leaves_nothing_half_written(dsn: str, schema: str) -> None:
    _open(dsn, schema).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, dsn, schema],
        stdout=subprocess.PIPE,
        text=True,
        env=child_environment(),
    )
    try:
        acked = _acknowledged(proc, 5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    storage = _open(dsn, schema)
    generations = {storage.load(oid(index)).data for index in range(1, 301)}
    assert len(generations) == 1, "a commit is visible in part"
    (generation,) = generations
    visible = int(generation[: len(generation) // 50])
    assert visible >= acked[-1]
    for number in range(1, visible + 1):
        assert storage.load(oid(1000 + number)).data == b"ack"
    _commit(storage, {oid(1): b"after"})
    storage.close()


@needs_psycopg
@pytest.mark.req("PG-040", "PG-052")
def test_immediate_shutdown_keeps_every_acknowledged_commit(dsn: str, schema: str) -> None:
    running = postgres_backend.cluster()
    if running is None:
        pytest.skip(f"{postgres_backend.ENV_DSN} names a server this test cannot restart")
    survivor = _open(dsn, schema)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, dsn, schema],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_environment(),
    )
    try:
        acked = _acknowledged(proc, 8)
        running.stop_immediate_with_pg_ctl()
        rest, errors = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    acked += [int(line) for line in rest.split()]
    assert proc.returncode != 0
    assert "PostgresConnectionError" in errors or "CommitInDoubtError" in errors, errors
    from dhruva.postgres_storage import PostgresConnectionError

    with pytest.raises(PostgresConnectionError):
        survivor.load(oid(1))
    running.start()
    storage = _open(dsn, schema)
    for number in acked:
        assert storage.load(oid(1000 + number)).data == b"ack"
    # [PG-052] The storage opened before the shutdown works again, unchanged.
    survivor.sync()
    assert survivor.load(oid(1000 + acked[-1])).data == b"ack"
    _commit(survivor, {oid(2): b"after restart"})
    storage.sync()
    assert storage.load(oid(2)).data == b"after restart"
    survivor.close()
    storage.close()


# --- bad input ------------------------------------------------------------------------------


@needs_psycopg
@pytest.mark.req("PG-050")
def test_unreachable_server(tmp_path: Path) -> None:
    from dhruva.postgres_storage import PostgresConnectionError

    with pytest.raises(PostgresConnectionError, match="no connection") as caught:
        _open(f"host={tmp_path} port=1 password=secret", None)  # type: ignore[arg-type]
    assert "secret" not in str(caught.value)


@needs_psycopg
@pytest.mark.req("PG-050")
def test_wrong_password(dsn: str, schema: str) -> None:
    running = postgres_backend.cluster()
    if running is None:
        pytest.skip("the external server's authentication is unknown")
    with pytest.raises(AuthenticationError, match="credentials"):
        _open(running.dsn(password="wrong"), schema)


@needs_psycopg
@pytest.mark.req("PG-051")
def test_read_only_role(dsn: str, schema: str) -> None:
    running = postgres_backend.cluster()
    if running is None:
        pytest.skip("creating a role needs the throwaway cluster's superuser")
    writer = _open(dsn, schema)
    _commit(writer, {oid(0): b"root"})
    writer.close()
    role = "ro_" + uuid.uuid4().hex[:8]
    _sql(dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'ro'")
    try:
        _sql(dsn, f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
        _sql(dsn, f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO {role}')
        _sql(dsn, f'GRANT SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role}')
        reader = _open(running.dsn(user=role, password="ro"), schema)
        assert reader.load(oid(0)).data == b"root"
        with pytest.raises(ReadOnlyError, match="refused"):
            _commit(reader, {oid(0): b"changed"})
        assert reader.load(oid(0)).data == b"root"  # still usable for reads
        reader.close()
        readonly = _open(dsn, schema, readonly=True)
        with pytest.raises(ReadOnlyError):
            readonly.begin()
        readonly.close()
    finally:
        _sql(dsn, f"DROP OWNED BY {role}")
        _sql(dsn, f"DROP ROLE {role}")


@needs_psycopg
@pytest.mark.req("PG-052")
def test_connection_dropped_mid_transaction(dsn: str, schema: str) -> None:
    from dhruva.postgres_storage import PostgresConnectionError

    storage = _open(dsn, schema)
    _commit(storage, {oid(0): b"root"})
    assert storage._conn is not None
    pid = storage._conn.info.backend_pid
    storage.begin()
    storage.store(oid(0), b"lost")
    _sql(dsn, "SELECT pg_terminate_backend(%s)", pid)
    with pytest.raises(PostgresConnectionError):
        storage.end()
    assert storage.load(oid(0)).data == b"root"  # reconnected; nothing written
    _commit(storage, {oid(0): b"again"})
    assert storage.load(oid(0)).data == b"again"
    storage.close()


@needs_psycopg
@pytest.mark.req("PG-053")
def test_in_doubt_commit_is_resolved_by_its_tid(dsn: str, schema: str) -> None:
    from dhruva.postgres_storage import PostgresConnectionError

    storage = _open(dsn, schema)
    _commit(storage, {oid(0): b"root"})
    committed = storage._sync_tid
    lost = PostgresConnectionError("lost")
    storage._resolve_in_doubt(committed, lost)  # present: returns
    with pytest.raises(PostgresConnectionError) as caught:
        storage._resolve_in_doubt(committed + 100, lost)
    assert caught.value is lost
    storage.close()


@needs_psycopg
@pytest.mark.req("PG-040")
def test_synchronous_commit_off_is_refused(dsn: str, schema: str) -> None:
    storage = _open(dsn + " options='-c synchronous_commit=off'", schema)
    assert storage._conn is not None
    assert storage._conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    storage.close()


# --- pack ----------------------------------------------------------------------------------


def _graph(storage) -> None:  # type: ignore[no-untyped-def]
    storage.begin()
    storage.store(oid(0), b"root", oid(1) + oid(2))
    storage.store(oid(1), b"one", oid(3))
    storage.store(oid(2), b"two", oid(3) + oid(99))  # 99 dangles
    storage.store(oid(3), b"three", oid(0))
    for number in range(50, 60):
        storage.store(oid(number), b"garbage", oid(number + 1))
    storage.end()


@needs_psycopg
@pytest.mark.req("PG-060", "PG-061")
def test_pack_in_sql_keeps_what_is_committed_meanwhile(dsn: str, schema: str) -> None:
    storage, other = _open(dsn, schema), _open(dsn, schema)
    _graph(storage)
    other.sync()

    def during(step: str) -> None:
        if step == "marked":
            # A commit while the pack runs: it revives garbage 55 (a stale reference).
            _commit(other, {oid(200): b"new"})
            other.begin()
            other.store(oid(201), b"holds", oid(55))
            other.end()

    reports: list[tuple[int, int]] = []
    storage._pack_step_hook = during
    storage.pack(progress=lambda marked, objects: reports.append((marked, objects)))
    assert reports and reports[-1] == (14, 14)
    kept = set(storage.iter_oids())
    assert kept == {oid(n) for n in (0, 1, 2, 3, 200, 201, *range(55, 61))} - {oid(60)}
    with pytest.raises(DhruvaKeyError):
        storage.load(oid(50))
    storage.close()
    other.close()


@needs_psycopg
@pytest.mark.req("PG-062")
def test_pack_prunes_the_old_log_but_keeps_the_newest_row(dsn: str, schema: str) -> None:
    storage = _open(dsn, schema)
    for number in range(1, 5):
        _commit(storage, {oid(0): b"root", oid(number): b"x"})
    old = "now() - interval '2 hours'"
    _sql(dsn, f'UPDATE "{schema}".dhruva_transaction SET committed_at = {old}')
    storage.pack()
    rows = _sql(dsn, f'SELECT tid FROM "{schema}".dhruva_transaction')
    assert rows == [(storage._sync_tid,)]
    meta = dict(_sql(dsn, f'SELECT name, value FROM "{schema}".dhruva_meta'))
    assert int(str(meta["log_pruned_through"])) == storage._sync_tid - 1
    storage.close()


@needs_psycopg
@pytest.mark.req("PG-063")
def test_failed_pack_changes_nothing(dsn: str, schema: str) -> None:
    storage = _open(dsn, schema)
    _graph(storage)
    before = sorted(storage.iter_oids())

    def fail(step: str) -> None:
        if step == "deleted":
            raise RuntimeError("power cut")

    storage._pack_step_hook = fail
    with pytest.raises(RuntimeError):
        storage.pack()
    storage._pack_step_hook = None
    assert sorted(storage.iter_oids()) == before
    storage.pack()
    assert len(list(storage.iter_oids())) == 4
    storage.close()


def test_module_docstring_is_the_theory() -> None:
    import dhruva.postgres_storage as module

    assert module.__doc__ is not None and "Theory of operation" in module.__doc__
    assert textwrap.dedent(module.__doc__)


# --- the dhruva command -------------------------------------------------------------------


def _uri(dsn: str, schema: str) -> str:
    """A postgresql:// URI for ``dsn`` whose search_path is ``schema`` (created here)."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    _sql(dsn, f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    params["options"] = f"-csearch_path={schema}"
    query = "&".join(f"{key}={quote(value, safe='')}" for key, value in params.items())
    return f"postgresql:///?{query}"


@needs_psycopg
@pytest.mark.req("PG-070")
def test_server_and_console_on_postgres(dsn: str, schema: str, tmp_path: Path) -> None:
    from _dhruva_command import Server, run

    from dhruva.client_storage import ClientStorage
    from dhruva.connection import Connection

    uri = _uri(dsn, schema)
    result = run("-c", "--postgres", uri, stdin="root['by'] = 'console'\nconnection.commit()\n")
    assert result.returncode == 0, result.stderr
    server = Server(tmp_path, "--postgres", uri)
    try:
        client = ClientStorage(server.socket)
        connection = Connection(client)
        assert connection.get_root()["by"] == "console"
        connection.get_root()["served"] = True
        connection.commit()
        connection.close()
    finally:
        server.kill()
    direct = _open(dsn, schema)
    assert b"served" in direct.load(oid(0)).data
    direct.close()
    refused = run("-c", "--postgres", "postgresql:///?host=/nonexistent")
    assert refused.returncode == 1
    assert "cannot open the PostgreSQL database" in refused.stderr


@needs_psycopg
@pytest.mark.req("PG-071")
def test_convert_to_and_from_postgres(dsn: str, schema: str, tmp_path: Path) -> None:
    from _dhruva_command import run

    from dhruva.file_storage import FileStorage

    source = str(tmp_path / "source.dhruva")
    with FileStorage(source) as storage:
        _graph(storage)
    uri = _uri(dsn, schema)
    assert run("convert", source, uri, "--to", "postgres", "--quiet").returncode == 0
    again = run("convert", source, uri, "--to", "postgres", "--quiet")
    assert again.returncode == 1 and "already holds objects" in again.stderr
    back = str(tmp_path / "back.dhruva")
    result = run("convert", uri, back, "--to", "file", "--quiet")
    assert result.returncode == 0, result.stderr
    with FileStorage(source, readonly=True) as first, FileStorage(back, readonly=True) as last:
        oids = sorted(first.iter_oids())
        assert sorted(last.iter_oids()) == oids
        for each in oids:
            assert first.load(each) == last.load(each)


@needs_psycopg
@pytest.mark.req("PG-072")
def test_verify_runs_inside_postgres(dsn: str, schema: str) -> None:
    from _dhruva_command import run

    storage = _open(dsn, schema)
    _graph(storage)  # oid 2 references oid 99, which has no record
    storage.close()
    uri = _uri(dsn, schema)
    result = run("verify", uri, "--quiet")
    assert result.returncode != 0
    assert "oid 2 references oid 99" in result.stdout
    assert "unreachable objects: 10" in result.stdout
    _sql(dsn, f'UPDATE "{schema}".dhruva_object SET refs = %s WHERE oid = 2', oid(3))
    _sql(dsn, f"UPDATE \"{schema}\".dhruva_object SET refs = '' WHERE oid = 59")  # ->60
    healthy = run("verify", uri, "--quiet")
    assert healthy.returncode == 0, healthy.stdout
    assert "result: OK" in healthy.stdout


@needs_psycopg
@pytest.mark.req("PG-073")
def test_stats_on_postgres(dsn: str, schema: str) -> None:
    from _dhruva_command import run

    from dhruva.connection import Connection
    from dhruva.persistent_dict import PersistentDict

    connection = Connection(_open(dsn, schema))
    root = connection.get_root()
    root["a"] = PersistentDict()
    root["b"] = PersistentDict()
    connection.commit()
    del root["b"]
    connection.commit()
    connection.close()
    result = run("stats", _uri(dsn, schema))
    assert result.returncode == 0, result.stderr
    assert "objects: 3 (reachable 2, unreachable 1)" in result.stdout
    assert "dhruva.persistent_dict.PersistentDict" in result.stdout


@needs_psycopg
@pytest.mark.req("TOOL-040", "TOOL-046")
def test_a_failed_convert_into_postgres_drops_what_it_wrote(
    dsn: str, schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dhruva.error import DhruvaError
    from dhruva.file_storage import FileStorage
    from dhruva.tools import dbtools

    source = str(tmp_path / "source.dhruva")
    with FileStorage(source) as storage:
        _graph(storage)
    uri = _uri(dsn, schema)

    def check_fails(*args: object, **kwargs: object) -> None:
        raise DhruvaError("the copy differs (simulated)")

    monkeypatch.setattr(dbtools, "_check_copy", check_fails)
    with pytest.raises(DhruvaError, match="simulated"):
        dbtools.convert(source, uri, "postgres")
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute(
            "SELECT relname FROM pg_class JOIN pg_namespace n ON n.oid = relnamespace"
            " WHERE nspname = %s AND relname LIKE 'dhruva%%'",
            (schema,),
        ).fetchall()
    assert left == []
    # The schema takes a new database afterwards.
    monkeypatch.undo()
    assert dbtools.convert(source, uri, "postgres") > 0
