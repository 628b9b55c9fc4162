"""dhruva convert carries blobs (spec: tools.md, TOOL-047)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhruva.blob import Blob
from dhruva.connection import Connection
from dhruva.error import DhruvaError
from dhruva.file_storage import FileStorage, FileStorage2
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
def test_convert_copies_the_blobs(tmp_path: Path, serializer: str | None) -> None:
    source, target = tmp_path / "src.dhruva", tmp_path / "dst.dhruva"
    make_source(source)
    convert(str(source), str(target), backend="file2", serializer=serializer)
    connection = Connection(FileStorage2(str(target)))
    assert read(connection.root["big"]) == bytes(range(256)) * 5000
    assert read(connection.root["empty"]) == b""
    assert connection.root["plain"] == "no blob"
    connection.close()


@pytest.mark.req("TOOL-047")
def test_convert_to_a_back_end_without_blobs_fails_and_keeps_nothing(tmp_path: Path) -> None:
    source, target = tmp_path / "src.dhruva", tmp_path / "dst.sqlite"
    make_source(source)
    with pytest.raises(DhruvaError, match="does not store blobs"):
        convert(str(source), str(target), backend="sqlite")
    assert not target.exists()
