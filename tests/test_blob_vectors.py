"""The blob-directory vector (conformance/vectors/blobs/) through both file storages.

Spec: blobs.md, BLOB-011, BLOB-020..022; the vector's format is in
conformance/vectors/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _vectors import read_vector

from dhruva.error import DhruvaKeyError
from dhruva.file_storage import FileStorage, FileStorage2

VECTORS = Path(__file__).resolve().parent.parent / "conformance" / "vectors" / "blobs"


def lay_out(directory: Path) -> tuple[Path, dict[str, Any]]:
    """Write the vector's data file and blob directory into ``directory``."""
    data, _expect = read_vector(VECTORS, "database")
    path = directory / "database.dhruva"
    path.write_bytes(data)
    description = json.loads((VECTORS / "blobs.json").read_text())
    for name, content in description["files"].items():
        target = directory / "database.dhruva.blobs" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bytes.fromhex(content))
    return path, description


def check_reads(storage: Any, description: dict[str, Any]) -> None:
    assert storage.last_tid() == description["last_tid"]
    for read in description["reads"]:
        oid = int(read["oid"]).to_bytes(8, "big")
        if read["content"] is None:
            with pytest.raises(DhruvaKeyError):
                storage.open_blob(oid, read["tid"])
            continue
        with storage.open_blob(oid, read["tid"]) as file:
            assert file.read() == bytes.fromhex(read["content"]), read


@pytest.mark.req("BLOB-011", "BLOB-020", "BLOB-021", "BLOB-022")
@pytest.mark.parametrize("cls", [FileStorage, FileStorage2])
def test_a_writable_open_recovers_and_reads_the_vector(tmp_path: Path, cls: type) -> None:
    path, description = lay_out(tmp_path)
    storage = cls(str(path))
    try:
        check_reads(storage, description)
    finally:
        storage.close()
    blob_dir = tmp_path / "database.dhruva.blobs"
    for name in description["deleted_by_writable_open"]:
        assert not (blob_dir / name).exists(), name
    for name in set(description["files"]) - set(description["deleted_by_writable_open"]):
        assert (blob_dir / name).exists(), name


@pytest.mark.req("BLOB-021")
@pytest.mark.parametrize("cls", [FileStorage, FileStorage2])
def test_a_read_only_open_ignores_the_leftovers(tmp_path: Path, cls: type) -> None:
    path, description = lay_out(tmp_path)
    FileStorage2(str(path)).close()  # the index is built once, writable
    for name in description["deleted_by_writable_open"]:
        target = tmp_path / "database.dhruva.blobs" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bytes.fromhex(description["files"][name]))
    storage = cls(str(path), readonly=True)
    try:
        check_reads(storage, description)
    finally:
        storage.close()
    for name in description["deleted_by_writable_open"]:
        assert (tmp_path / "database.dhruva.blobs" / name).exists(), name


def test_the_vector_is_what_the_generator_makes() -> None:
    result = subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _pattern(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


@pytest.mark.req("BLOB-030")
def test_the_chunk_rows_are_the_vector(tmp_path: Path) -> None:
    import hashlib
    import io
    import sqlite3

    from dhruva.blob_chunks import write_chunks
    from dhruva.sqlite_storage import SqliteStorage, oid_to_key

    vector = json.loads((VECTORS / "chunks.json").read_text())
    storage = SqliteStorage(tmp_path / "chunks.sqlite")
    oids = []
    for blob in vector["blobs"]:
        expected = [(c["n"], c["length"], c["sha256"]) for c in blob["chunks"]]
        # The shared writer, fed in reads of an odd size (the layout must not depend on them).
        cut: list[tuple[int, int, str]] = []

        def put(n: int, data: bytes, into: list[tuple[int, int, str]] = cut) -> None:
            into.append((n, len(data), hashlib.sha256(data).hexdigest()))

        source = io.BufferedReader(io.BytesIO(_pattern(blob["size"])), buffer_size=70_001)
        assert write_chunks(source, put) == blob["size"]
        assert cut == expected, blob["size"]
        oid = storage.new_oid()
        oids.append((oid, expected))
        storage.begin()
        storage.store(oid, b"blob record", b"")
        storage.store_blob(oid, io.BytesIO(_pattern(blob["size"])))
        storage.end()
    storage.close()
    db = sqlite3.connect(tmp_path / "chunks.sqlite")
    try:
        for oid, expected in oids:
            rows = db.execute(
                "SELECT n, length(data), data FROM blob_chunks WHERE oid = ? ORDER BY n",
                (oid_to_key(oid),),
            ).fetchall()
            assert [(n, size, hashlib.sha256(data).hexdigest()) for n, size, data in rows] == (
                expected
            )
    finally:
        db.close()
