"""Blobs on every back-end with the capability ``blobs`` (spec: blobs.md, BLOB-010..022)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from dhruva_conformance.backends import StorageFactory

from dhruva.connection import Connection
from dhruva.error import DhruvaError, DhruvaKeyError, SnapshotTooOldError
from dhruva.storage import Storage
from dhruva.utils import ROOT_OID

pytestmark = pytest.mark.needs("blobs")


def read_blob(storage: Storage, oid: bytes, tid: int | None = None) -> bytes:
    with storage.open_blob(oid, tid) as file:
        return file.read()


def commit_blob(storage: Storage, oid: bytes, content: bytes) -> None:
    storage.begin()
    storage.store(oid, b"blob record", b"")
    storage.store_blob(oid, io.BytesIO(content))
    storage.end()


def new_blob_oid(storage: Storage) -> bytes:
    oid = storage.new_oid()
    if oid == ROOT_OID:
        oid = storage.new_oid()
    return oid


@pytest.mark.req("BLOB-010", "BLOB-011")
def test_store_and_open(storage: Storage) -> None:
    oid = new_blob_oid(storage)
    content = os.urandom(3 << 20) + b"tail"
    commit_blob(storage, oid, content)
    assert read_blob(storage, oid) == content
    commit_blob(storage, oid, b"second")
    assert read_blob(storage, oid) == b"second"
    with pytest.raises(DhruvaKeyError):
        storage.open_blob(new_blob_oid(storage))


@pytest.mark.req("BLOB-011", "BLOB-022")
def test_open_as_of_an_older_transaction(storage: Storage) -> None:
    oid = new_blob_oid(storage)
    commit_blob(storage, oid, b"v1")
    first = storage.last_tid()
    commit_blob(storage, oid, b"v2")
    storage.begin()
    storage.store(new_blob_oid(storage), b"unrelated", b"")
    storage.end()
    assert read_blob(storage, oid, first) == b"v1"
    assert read_blob(storage, oid, storage.last_tid()) == b"v2"


@pytest.mark.req("BLOB-010")
def test_a_blob_without_its_record_is_refused(storage: Storage) -> None:
    oid = new_blob_oid(storage)
    storage.begin()
    storage.store_blob(oid, io.BytesIO(b"orphan"))
    with pytest.raises(DhruvaError, match="did not store"):
        storage.end()
    storage.abort_transaction()
    with pytest.raises(DhruvaKeyError):
        storage.open_blob(oid)
    with pytest.raises(DhruvaError):
        storage.store_blob(oid, io.BytesIO(b"outside a transaction"))


@pytest.mark.req("BLOB-014")
def test_abort_drops_staged_blobs(storage: Storage) -> None:
    oid = new_blob_oid(storage)
    commit_blob(storage, oid, b"kept")
    storage.begin()
    storage.store(oid, b"blob record", b"")
    storage.store_blob(oid, io.BytesIO(b"dropped"))
    storage.abort_transaction()
    assert read_blob(storage, oid) == b"kept"


@pytest.mark.needs("reopen")
@pytest.mark.req("BLOB-012", "BLOB-021")
def test_a_crash_before_the_commit_leaves_no_blob(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    oid = new_blob_oid(storage)
    commit_blob(storage, oid, b"committed")
    storage.begin()
    storage.store(oid, b"blob record 2", b"")
    storage.store_blob(oid, io.BytesIO(b"never committed"))
    storage_factory.crash(storage)
    storage = storage_factory.open(reopen=True)
    assert read_blob(storage, oid) == b"committed"
    assert storage.load(oid).data == b"blob record"
    storage.close()


@pytest.mark.needs("reopen", "raw-file")
@pytest.mark.req("BLOB-012", "BLOB-020", "BLOB-021")
def test_recovery_removes_blob_files_of_uncommitted_transactions(
    storage_factory: StorageFactory,
) -> None:
    storage = storage_factory.open()
    oid = new_blob_oid(storage)
    commit_blob(storage, oid, b"committed")
    last = storage.last_tid()
    storage.close()
    # What a crash between the blob rename and the journal write leaves.
    blob_dir = Path(storage_factory.paths()[0] + ".blobs")
    folder = blob_dir / oid.hex()
    assert (folder / f"{last:016x}.blob").exists()
    orphan = folder / f"{last + 1:016x}.blob"
    orphan.write_bytes(b"uncommitted")
    other = blob_dir / (b"\x00" * 7 + b"\x63").hex()
    other.mkdir()
    (other / f"{last + 1:016x}.blob").write_bytes(b"uncommitted too")
    (blob_dir / "tmp" / "staged.part").write_bytes(b"staged")
    storage = storage_factory.open(reopen=True)
    assert read_blob(storage, oid) == b"committed"
    assert not orphan.exists() and not other.exists()
    assert list((blob_dir / "tmp").iterdir()) == []
    commit_blob(storage, oid, b"next")  # the next tid is last + 1: no clash
    assert read_blob(storage, oid) == b"next"
    storage.close()


@pytest.mark.needs("pack")
@pytest.mark.req("BLOB-013")
def test_pack_keeps_live_blobs_only(storage: Storage) -> None:
    connection_storage = storage
    keep, drop = new_blob_oid(storage), new_blob_oid(storage)
    storage.begin()
    storage.store(ROOT_OID, b"root", keep)
    storage.store(keep, b"blob record", b"")
    storage.store_blob(keep, io.BytesIO(b"old"))
    storage.store(drop, b"blob record", b"")
    storage.store_blob(drop, io.BytesIO(b"unreachable"))
    storage.end()
    commit_blob(storage, keep, b"new")
    connection_storage.pack()
    assert read_blob(storage, keep) == b"new"
    with pytest.raises(DhruvaKeyError):
        storage.open_blob(drop)


@pytest.mark.req("BLOB-002", "BLOB-004")
def test_blob_objects_through_a_connection(storage_factory: StorageFactory) -> None:
    from dhruva.blob import Blob

    storage = storage_factory.open()
    connection = Connection(storage)
    connection.root["file"] = Blob(b"a" * 100_000)
    connection.commit()
    with connection.root["file"].open("a") as file:
        file.write(b"b")
    connection.commit()
    with connection.root["file"].open() as file:
        assert file.read() == b"a" * 100_000 + b"b"
    connection.close()


@pytest.mark.needs("pack", "snapshots")
@pytest.mark.req("BLOB-013")
def test_pack_removes_the_versions_no_snapshot_reads(storage: Storage) -> None:
    oid = new_blob_oid(storage)
    storage.begin()
    storage.store(ROOT_OID, b"root", oid)
    storage.store(oid, b"blob record", b"")
    storage.store_blob(oid, io.BytesIO(b"v1"))
    storage.end()
    first = storage.last_tid()
    commit_blob(storage, oid, b"v2")
    second = storage.last_tid()
    commit_blob(storage, oid, b"v3")
    # A snapshot at the second commit is held: v2 stays for it, v1 goes.
    storage.set_oldest_snapshot(second)
    storage.pack()
    assert read_blob(storage, oid, second) == b"v2"
    assert read_blob(storage, oid) == b"v3"
    # [BLOB-013] Gone: "no blob", or "too old" from a back-end that knows it packed it.
    with pytest.raises((DhruvaKeyError, SnapshotTooOldError)):
        read_blob(storage, oid, first)
    # Nothing older than the latest is held: only v3 stays.
    storage.set_oldest_snapshot(None)
    storage.pack()
    assert read_blob(storage, oid) == b"v3"
    with pytest.raises((DhruvaKeyError, SnapshotTooOldError)):
        read_blob(storage, oid, second)


@pytest.mark.req("BLOB-011", "BLOB-006")
def test_a_blob_stream_seeks_across_chunks(storage: Storage) -> None:
    oid = new_blob_oid(storage)
    chunk = 1 << 20
    content = os.urandom(2 * chunk + 5)
    commit_blob(storage, oid, content)
    with storage.open_blob(oid) as file:
        file.seek(chunk - 3)
        assert file.read(6) == content[chunk - 3 : chunk + 3]
        file.seek(2 * chunk + 1)
        assert file.read() == content[2 * chunk + 1 :]
        assert file.read(10) == b""
        file.seek(0)
        assert file.read(4) == content[:4]
    empty = new_blob_oid(storage)
    commit_blob(storage, empty, b"")
    assert read_blob(storage, empty) == b""
    exact = new_blob_oid(storage)
    commit_blob(storage, exact, content[: 2 * chunk])
    assert read_blob(storage, exact) == content[: 2 * chunk]
