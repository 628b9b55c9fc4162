"""dhruva convert carries blobs (spec: tools.md, TOOL-047)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhruva.blob import Blob
from dhruva.connection import Connection
from dhruva.error import DhruvaError
from dhruva.file_storage import FileStorage, FileStorage2
from dhruva.sqlite_storage import SqliteStorage
from dhruva.storage import CAP_BLOBS
from dhruva.tools.dbtools import convert


def make_source(path: Path) -> None:
    connection = Connection(FileStorage(str(path)))
    connection.root["big"] = Blob(bytes(range(256)) * 5000)
    connection.root["empty"] = Blob()
    connection.root["plain"] = "no blob"
    connection.commit()
    connection.close()


def read(blob: Blob) -> bytes:
    with blob.open() as file:
        return file.read()


@pytest.mark.req("TOOL-047")
@pytest.mark.parametrize("serializer", [None, "pickle"])
@pytest.mark.parametrize("backend", ["file2", "sqlite"])
def test_convert_copies_the_blobs(tmp_path: Path, serializer: str | None, backend: str) -> None:
    source, target = tmp_path / "src.dhruva", tmp_path / "dst.db"
    make_source(source)
    convert(str(source), str(target), backend=backend, serializer=serializer)
    opened = FileStorage2(str(target)) if backend == "file2" else SqliteStorage(str(target))
    connection = Connection(opened)
    assert read(connection.root["big"]) == bytes(range(256)) * 5000
    assert read(connection.root["empty"]) == b""
    assert connection.root["plain"] == "no blob"
    connection.close()


@pytest.mark.req("TOOL-047")
def test_convert_carries_blobs_out_of_sqlite(tmp_path: Path) -> None:
    source, middle, target = tmp_path / "src.dhruva", tmp_path / "mid.sqlite", tmp_path / "dst"
    make_source(source)
    convert(str(source), str(middle), backend="sqlite")
    convert(str(middle), str(target), backend="file")
    connection = Connection(FileStorage(str(target)))
    assert read(connection.root["big"]) == bytes(range(256)) * 5000
    assert read(connection.root["empty"]) == b""
    connection.close()


@pytest.mark.req("TOOL-047")
def test_convert_to_a_back_end_without_blobs_fails_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = tmp_path / "src.dhruva", tmp_path / "dst.sqlite"
    make_source(source)
    # A back-end without the capability (every built-in one has it now).
    monkeypatch.setattr(SqliteStorage, "capabilities", SqliteStorage.capabilities - {CAP_BLOBS})
    with pytest.raises(DhruvaError, match="does not store blobs"):
        convert(str(source), str(target), backend="sqlite")
    assert not target.exists()
