"""PostgresStorage blobs (spec: postgres-storage.md "Blobs", PG-090..PG-095; blobs.md).

The conformance suite (conformance/test_blobs.py, back-ends ``postgres`` and
``server-postgres``) covers the storage contract; these tests cover what is
particular to PostgreSQL: the schema migration, staging under a negative
tid, several processes, and what a lost connection or a dead process leaves.
"""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import pytest
from test_postgres_storage import _open, _sql, needs_psycopg

from dhruva.error import (
    DhruvaError,
    DhruvaKeyError,
    SnapshotTooOldError,
    WriteConflictError,
)
from dhruva.utils import ROOT_OID

CHUNK = 1 << 20

pytestmark = needs_psycopg


def read(storage, blob_oid: bytes, tid: int | None = None) -> bytes:  # type: ignore[no-untyped-def]
    with storage.open_blob(blob_oid, tid) as file:
        return bytes(file.read())


def commit_blob(storage, blob_oid: bytes, content: bytes) -> None:  # type: ignore[no-untyped-def]
    storage.begin()
    storage.store(blob_oid, b"blob record")
    storage.store_blob(blob_oid, io.BytesIO(content))
    storage.end()


def chunk_rows(dsn: str, schema: str) -> list[tuple[object, ...]]:
    return _sql(
        dsn, f'SELECT oid, tid, n, length(data) FROM "{schema}".dhruva_blob_chunk ORDER BY 1, 2, 3'
    )


@pytest.mark.req("PG-090")
def test_the_first_blob_makes_the_schema_version_2(dsn: str, schema: str) -> None:
    storage = _open(dsn, schema)
    other = _open(dsn, schema)  # opened at version 1, learns of the table later
    blob = storage.new_oid()
    version = f"SELECT value FROM \"{schema}\".dhruva_meta WHERE name = 'schema_version'"
    assert _sql(dsn, version) == [("1",)]
    with pytest.raises(DhruvaKeyError):
        other.open_blob(blob)
    commit_blob(storage, blob, b"x" * (CHUNK + 1))
    assert _sql(dsn, version) == [("2",)]
    storage_type = _sql(
        dsn,
        "SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'data'",
        f'"{schema}".dhruva_blob_chunk',
    )
    assert storage_type == [("e",)]  # EXTERNAL: never compressed, read in place
    key = int.from_bytes(blob, "big", signed=True)
    assert chunk_rows(dsn, schema) == [(key, 1, 0, CHUNK), (key, 1, 1, 1)]
    other.sync()
    assert read(other, blob) == b"x" * (CHUNK + 1)
    # A second process storing its first blob finds the table made.
    commit_blob(other, other.new_oid(), b"")
    storage.close()
    other.close()
    reopened = _open(dsn, schema, readonly=True)
    assert read(reopened, blob) == b"x" * (CHUNK + 1)
    reopened.close()


@pytest.mark.req("PG-091", "PG-093", "BLOB-032")
def test_staged_chunks_are_invisible_until_the_commit(dsn: str, schema: str) -> None:
    writer, reader = _open(dsn, schema), _open(dsn, schema)
    blob = writer.new_oid()
    writer.begin()
    writer.store(blob, b"blob record")
    writer.store_blob(blob, io.BytesIO(os.urandom(2 * CHUNK)))
    # The chunks are in the table, under a negative staging tid.
    staged = _sql(dsn, f'SELECT DISTINCT tid FROM "{schema}".dhruva_blob_chunk')
    assert len(staged) == 1 and int(staged[0][0]) < 0  # type: ignore[call-overload]
    reader.sync()
    with pytest.raises(DhruvaKeyError):
        reader.open_blob(blob)
    writer.end()
    tid = writer.last_tid()
    assert {int(row[1]) for row in chunk_rows(dsn, schema)} == {tid}  # type: ignore[call-overload]
    with pytest.raises(DhruvaKeyError):
        reader.open_blob(blob)  # its read point is still before the commit
    reader.sync()
    assert len(read(reader, blob)) == 2 * CHUNK
    writer.close()
    reader.close()


@pytest.mark.req("PG-092", "BLOB-014")
def test_a_refused_commit_leaves_no_staged_chunk(dsn: str, schema: str) -> None:
    first, second = _open(dsn, schema), _open(dsn, schema)
    blob = first.new_oid()
    commit_blob(first, blob, b"v1")
    second.sync()
    commit_blob(first, blob, b"v2")
    second.begin()
    second.store(blob, b"blob record")
    second.store_blob(blob, io.BytesIO(b"conflicting"))
    with pytest.raises(WriteConflictError):
        second.end()
    second.abort_transaction()
    rows = _sql(dsn, f'SELECT count(*) FROM "{schema}".dhruva_blob_chunk WHERE tid < 0')
    assert rows == [(0,)]
    # Aborted, and the blob of an unstored record: nothing stays either.
    second.sync()
    second.begin()
    second.store(blob, b"blob record")
    second.store_blob(blob, io.BytesIO(b"aborted"))
    second.abort_transaction()
    second.begin()
    second.store_blob(second.new_oid(), io.BytesIO(b"no record"))
    with pytest.raises(DhruvaError, match="did not store"):
        second.end()
    assert _sql(dsn, f'SELECT count(*) FROM "{schema}".dhruva_blob_chunk WHERE tid < 0') == [(0,)]
    assert read(second, blob) == b"v2"
    first.close()
    second.close()


@pytest.mark.req("PG-091", "BLOB-010")
def test_a_failing_source_leaves_the_transaction_as_before(dsn: str, schema: str) -> None:
    storage = _open(dsn, schema)
    blob = storage.new_oid()

    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            if self.sent >= 2 * CHUNK:
                raise OSError(5, "Input/output error")
            count = min(len(buffer), CHUNK)
            buffer[:count] = b"f" * count
            self.sent += count
            return count

    storage.begin()
    storage.store(blob, b"blob record")
    storage.store_blob(blob, io.BytesIO(b"first"))
    with pytest.raises(OSError):
        storage.store_blob(blob, Failing())
    storage.end()
    assert read(storage, blob) == b"first"
    assert [row[2:] for row in chunk_rows(dsn, schema)] == [(0, 5)]
    storage.close()


@pytest.mark.req("PG-092", "PG-094", "BLOB-012")
def test_a_dead_process_leaves_invisible_chunks_that_pack_removes(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dhruva import postgres_storage

    storage = _open(dsn, schema)
    blob = storage.new_oid()
    commit_blob(storage, blob, b"committed")
    storage.begin()
    storage.store(ROOT_OID, b"root", blob)
    storage.store(blob, b"blob record 2")
    storage.store_blob(blob, io.BytesIO(b"never committed"))
    storage._abandon()  # the process dies: no ROLLBACK, no DELETE
    survivor = _open(dsn, schema)
    assert read(survivor, blob) == b"committed"
    assert survivor.load(blob).data == b"blob record"
    abandoned = f'SELECT count(*) FROM "{schema}".dhruva_blob_chunk WHERE tid < 0'
    assert _sql(dsn, abandoned) == [(1,)]
    survivor.begin()
    survivor.store(ROOT_OID, b"root", blob)
    survivor.end()
    survivor.pack()
    assert _sql(dsn, abandoned) == [(1,)]  # younger than the retention: it may be in flight
    monkeypatch.setattr(postgres_storage, "BLOB_STAGE_RETENTION_S", -1.0)
    survivor.pack()
    assert _sql(dsn, abandoned) == [(0,)]
    assert read(survivor, blob) == b"committed"
    survivor.close()


@pytest.mark.req("PG-091")
def test_a_connection_lost_after_staging_commits_nothing(dsn: str, schema: str) -> None:
    storage = _open(dsn, schema)
    blob = storage.new_oid()
    commit_blob(storage, blob, b"before")
    storage.begin()
    storage.store(blob, b"blob record 2")
    storage.store_blob(blob, io.BytesIO(b"staged"))
    assert storage._conn is not None
    storage._conn.close()  # the next call connects again (PG-052)
    with pytest.raises(DhruvaError, match="lost after this transaction staged blobs"):
        storage.end()
    storage.abort_transaction()
    storage.sync()
    assert read(storage, blob) == b"before"
    assert storage.load(blob).data == b"blob record"
    commit_blob(storage, blob, b"after")
    assert read(storage, blob) == b"after"
    storage.close()


@pytest.mark.req("PG-095", "BLOB-013")
def test_a_version_packed_by_another_process_is_too_old(dsn: str, schema: str) -> None:
    packer, holder = _open(dsn, schema), _open(dsn, schema)
    blob = packer.new_oid()
    packer.begin()
    packer.store(ROOT_OID, b"root", blob)
    packer.store(blob, b"blob record")
    packer.store_blob(blob, io.BytesIO(b"v1"))
    packer.end()
    holder.sync()
    first = holder.last_tid()
    holder.set_oldest_snapshot(first)  # the holder's own snapshot; the packer cannot know
    commit_blob(packer, blob, b"v2")
    commit_blob(packer, blob, b"v3")
    # The holder's open snapshot still reads v1: PostgreSQL keeps the rows for it.
    packer.pack()
    assert read(holder, blob) == b"v1"
    holder.sync()
    assert read(holder, blob) == b"v3"
    with pytest.raises(SnapshotTooOldError):
        holder.open_blob(blob, first)
    packer.close()
    holder.close()


@pytest.mark.req("BLOB-015", "PG-091")
def test_a_large_blob_is_never_whole_in_memory(dsn: str, schema: str) -> None:
    storage = _open(dsn, schema)
    blob = storage.new_oid()
    block = os.urandom(CHUNK)

    class Source(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            count = min(len(buffer), self.left, CHUNK)
            buffer[:count] = block[:count]
            self.left -= count
            return count

    size = 16 * CHUNK
    tracemalloc.start()
    try:
        storage.begin()
        storage.store(blob, b"blob record")
        storage.store_blob(blob, Source(size))
        storage.end()
        _, written = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = 0
        with storage.open_blob(blob) as file:
            while piece := file.read(256 << 10):
                assert piece == block[total % CHUNK : total % CHUNK + len(piece)]
                total += len(piece)
        _, reading = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert written < 5 * CHUNK, written
    assert reading < 5 * CHUNK, reading
    storage.close()


@pytest.mark.req("TOOL-047", "PG-071")
def test_convert_carries_blobs_into_and_out_of_postgres(
    dsn: str, schema: str, tmp_path: Path
) -> None:
    from test_postgres_storage import _uri

    from dhruva.blob import Blob
    from dhruva.connection import Connection
    from dhruva.file_storage import FileStorage
    from dhruva.tools.dbtools import convert

    content = os.urandom(CHUNK + 3)
    source, back = tmp_path / "source.dhruva", tmp_path / "back.dhruva"
    connection = Connection(FileStorage(str(source)))
    connection.root["big"] = Blob(content)
    connection.root["empty"] = Blob()
    connection.commit()
    connection.close()
    uri = _uri(dsn, schema)
    convert(str(source), uri, backend="postgres")
    convert(uri, str(back), backend="file")
    connection = Connection(FileStorage(str(back)))
    with connection.root["big"].open() as file:
        assert file.read() == content
    with connection.root["empty"].open() as file:
        assert file.read() == b""
    connection.close()
