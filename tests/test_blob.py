"""Blobs: the Blob class and its commit through the Connection (spec: blobs.md).

The storage side of blobs, on every back-end with the capability, is in
conformance/test_blobs.py.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
from _shared_memory import SharedDatabase

from dhruva.blob import Blob
from dhruva.connection import Connection
from dhruva.error import DhruvaError
from dhruva.storage import MemoryStorage


def read(blob: Blob) -> bytes:
    with blob.open("r") as file:
        return file.read()


@pytest.fixture
def blob_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the blobs' temporary files where the test can count them."""
    directory = tmp_path / "blob-tmp"
    directory.mkdir()
    monkeypatch.setattr(Blob, "temp_dir", str(directory))
    return directory


@pytest.mark.req("BLOB-001", "BLOB-002", "BLOB-006")
def test_write_commit_read(blob_dir: Path) -> None:
    connection = Connection(MemoryStorage())
    connection.root["b"] = blob = Blob(b"hello")
    assert read(blob) == b"hello"
    connection.commit()
    assert list(blob_dir.iterdir()) == []  # the temporary file is gone
    with blob.open("r") as file:
        assert file.read() == b"hello"
    with blob.open("a") as file:
        file.write(b", world")
    assert blob.size() == 12
    connection.commit()
    with blob.open("r+") as file:
        file.seek(0)
        file.write(b"J")
    connection.commit()
    assert read(connection.root["b"]) == b"Jello, world"


@pytest.mark.req("BLOB-002", "BLOB-014")
def test_abort_drops_written_content(blob_dir: Path) -> None:
    connection = Connection(MemoryStorage())
    connection.root["b"] = Blob(b"kept")
    connection.commit()
    with connection.root["b"].open("w") as file:
        file.write(b"dropped")
    assert read(connection.root["b"]) == b"dropped"
    connection.abort()
    assert read(connection.root["b"]) == b"kept"
    assert list(blob_dir.iterdir()) == []


@pytest.mark.req("BLOB-001")
def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="one of r, w, a, r\\+"):
        Blob().open("rw")
    assert read(Blob()) == b""


@pytest.mark.req("BLOB-005")
def test_a_storage_without_blobs_refuses_the_commit() -> None:
    db = SharedDatabase()
    connection = Connection(db.open())
    connection.root["x"] = 1
    connection.commit()
    connection.root["b"] = Blob(b"data")
    ends = db.commits[:]
    with pytest.raises(DhruvaError, match="does not store blobs"):
        connection.commit()
    assert db.commits == ends
    connection.abort()
    assert "b" not in connection.root


@pytest.mark.req("BLOB-003", "BLOB-015")
def test_a_large_blob_streams_in_and_out(blob_dir: Path) -> None:
    connection = Connection(MemoryStorage())
    chunk = os.urandom(1 << 20)
    connection.root["big"] = blob = Blob()
    tracemalloc.start()
    try:
        with blob.open("w") as file:
            for _ in range(48):
                file.write(chunk)
        connection.commit()
        total = 0
        with blob.open("r") as file:
            while data := file.read(1 << 20):
                total += len(data)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 48 << 20
    # 48 MiB went through; Python allocated a few chunks at most.
    assert peak < 8 << 20, f"peak {peak} bytes"


@pytest.mark.req("BLOB-013")
def test_pack_removes_unreachable_and_superseded_blobs() -> None:
    storage = MemoryStorage()
    connection = Connection(storage)
    connection.root["b"] = Blob(b"one")
    connection.root["gone"] = Blob(b"two")
    connection.commit()
    with connection.root["b"].open("w") as file:
        file.write(b"three")
    del connection.root["gone"]
    connection.commit()
    blob_oid = connection.root["b"]._p_oid
    store = storage._blob_store
    assert store is not None
    assert len(store.versions(blob_oid)) == 2
    connection.pack()
    assert len(store.versions(blob_oid)) == 1
    assert len(list(store.oids())) == 1
    assert read(connection.root["b"]) == b"three"


@pytest.mark.req("BLOB-002")
def test_savepoints_refuse_written_blobs() -> None:
    connection = Connection(MemoryStorage())
    connection.root["b"] = Blob(b"x")
    connection.commit()
    with connection.root["b"].open("w") as file:
        file.write(b"y")
    with pytest.raises(DhruvaError, match="savepoint"):
        connection.savepoint()
