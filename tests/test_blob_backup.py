"""Backup and restore carry blobs (spec: blobs.md, BLOB-023)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhruva.backup import backup
from dhruva.blob import Blob
from dhruva.connection import Connection
from dhruva.error import DhruvaError
from dhruva.file_storage import FileStorage
from dhruva.history import list_transactions, restore


def read(blob: Blob) -> bytes:
    with blob.open("r") as file:
        return file.read()


def make_database(path: Path) -> None:
    connection = Connection(FileStorage(str(path)))
    connection.root["a"] = Blob(b"first")
    connection.commit()
    with connection.root["a"].open("w") as file:
        file.write(b"second")
    connection.root["b"] = Blob(b"other")
    connection.commit()
    connection.close()


@pytest.mark.req("BLOB-023")
def test_backup_copies_the_blobs(tmp_path: Path) -> None:
    source, copy = tmp_path / "db.dhruva", tmp_path / "copy.dhruva"
    make_database(source)
    backup(str(source), str(copy))
    connection = Connection(FileStorage(str(copy)))
    assert read(connection.root["a"]) == b"second"
    assert read(connection.root["b"]) == b"other"
    connection.close()


@pytest.mark.req("BLOB-023")
def test_restore_gets_the_blobs_of_its_point_in_time(tmp_path: Path) -> None:
    source, old = tmp_path / "db.dhruva", tmp_path / "old.dhruva"
    make_database(source)
    first_blob_commit = list_transactions(str(source))[1].tid
    restore(str(source), first_blob_commit, str(old))
    connection = Connection(FileStorage(str(old)))
    assert read(connection.root["a"]) == b"first"
    assert "b" not in connection.root
    connection.close()


@pytest.mark.req("BLOB-023")
def test_backup_refuses_an_existing_blob_directory(tmp_path: Path) -> None:
    source, copy = tmp_path / "db.dhruva", tmp_path / "copy.dhruva"
    make_database(source)
    (tmp_path / "copy.dhruva.blobs").mkdir()
    with pytest.raises(DhruvaError, match="exists"):
        backup(str(source), str(copy))
    assert not copy.exists()
    assert list((tmp_path / "copy.dhruva.blobs").iterdir()) == []


@pytest.mark.req("BLOB-023")
def test_a_blob_that_disappears_fails_the_backup_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dhruva import blob_store

    source, copy = tmp_path / "db.dhruva", tmp_path / "copy.dhruva"
    make_database(source)
    real_versions = blob_store.BlobStore.versions

    def versions_with_a_vanished_one(self: blob_store.BlobStore, oid: bytes) -> list[int]:
        # As if a pack removed tid 1's file between the listing and the copy.
        return [1, *real_versions(self, oid)]

    monkeypatch.setattr(blob_store.BlobStore, "versions", versions_with_a_vanished_one)
    with pytest.raises(DhruvaError, match="disappeared"):
        backup(str(source), str(copy))
    assert not copy.exists()
    assert not (tmp_path / "copy.dhruva.blobs").exists()
