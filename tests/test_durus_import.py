"""Reading Durus 4.3 files and importing them (spec: tools.md, TOOL-030 .. TOOL-037).

The fixtures under tests/fixtures/durus/ were written by real Durus 4.3
(tools/make_durus_fixtures.py); each ``NAME.expected.json`` is what Durus
itself read back, which the imported database must match object by object.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from _vectors import read_vector

from dhruva.connection import Connection
from dhruva.file_storage import FileStorage
from dhruva.persistent import Persistent, PersistentObject
from dhruva.serialize import ObjectWriter
from dhruva.storage import MemoryStorage
from dhruva.tools import dbtools
from dhruva.tools.durus_import import (
    DURUS_CLASS_MAP,
    DurusImportError,
    import_durus,
    read_dfs20,
    read_durus,
    read_shelf,
)
from dhruva.utils import iter_oids

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "durus"
VECTORS = ROOT / "conformance" / "vectors" / "durus"
GENERATOR = ROOT / "tools" / "make_durus_fixtures.py"
NAMES = ("shelf", "shelf-packed", "dfs20", "dfs20-packed")


class Item(Persistent):
    """dhruva's port of the fixtures' ``durus_fixture_app.Item``."""


class Point(PersistentObject):
    """dhruva's port of the fixtures' ``durus_fixture_app.Point``."""

    __slots__ = ("x", "y")


CLASS_MAP: dict[str, str | type] = {
    "durus_fixture_app.Item": Item,
    "durus_fixture_app.Point": Point,
}


def _generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("make_durus_fixtures", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected(name: str) -> list[dict[str, Any]]:
    """The objects Durus read back, with class names mapped to dhruva's."""
    renamed = {
        **DURUS_CLASS_MAP,
        "durus_fixture_app.Item": f"{Item.__module__}.{Item.__qualname__}",
        "durus_fixture_app.Point": f"{Point.__module__}.{Point.__qualname__}",
    }
    objects: list[dict[str, Any]] = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    for obj in objects:
        obj["class"] = renamed[obj["class"]]
    return objects


def _canonical(connection: Connection) -> list[dict[str, Any]]:
    """The canonical objects of an import, without the BTree counts Durus never had.

    The import adds ``_count`` to each tree (TOOL-045, checked with the real
    count in ``test_imported_btree_has_its_count_stored``); Durus's trees
    have no such key, so it is left out of the comparison with what Durus read.
    """
    objects: list[dict[str, Any]] = _generator().canonical(connection)
    for obj in objects:
        if obj["class"] == "dhruva.btree.BTree":
            pairs = obj["state"]["$dict"]
            obj["state"]["$dict"] = [pair for pair in pairs if pair[0] != "_count"]
    return objects


# --- the two file formats -----------------------------------------------------------------


@pytest.mark.req("TOOL-030", "TOOL-031")
@pytest.mark.parametrize(("name", "reader"), [("shelf", read_shelf), ("dfs20", read_dfs20)])
def test_vectors_parse(name: str, reader: Any) -> None:
    data, expect = read_vector(VECTORS, name)
    parsed = reader(data)
    assert parsed.format == expect["format"]
    assert parsed.tail is None
    got = [
        {
            "offset": offset,
            "records": [
                {
                    "oid": int.from_bytes(r.oid, "big"),
                    "offset": r.offset,
                    "data": r.data.decode(),
                    "refs": [int.from_bytes(ref, "big") for ref in iter_oids(r.refs)],
                }
                for r in records
            ],
        }
        for offset, records in parsed.transactions
    ]
    assert got == expect["transactions"]


@pytest.mark.req("TOOL-030")
def test_shelf_record_must_repeat_its_oid() -> None:
    data, _expect = read_vector(VECTORS, "shelf")
    # Change the shelf's name of the record (offset 0x38) so it disagrees.
    damaged = data[:0x3F] + b"\x07" + data[0x40:]
    parsed = read_shelf(damaged)
    assert parsed.tail == 40 and "names oid" in str(parsed.tail_reason)


@pytest.mark.req("TOOL-031")
def test_dfs20_skips_an_index_record_between_transactions() -> None:
    parsed = read_durus(str(FIXTURES / "dfs20-packed.durus"))
    # Packed: the packed transaction, the index record, the later commit.
    assert len(parsed.transactions) == 2
    first_end = parsed.transactions[0][1][-1].offset
    assert parsed.transactions[1][0] > first_end
    assert parsed.tail is None


# --- importing the fixtures ----------------------------------------------------------------


@pytest.mark.req("TOOL-032", "TOOL-034", "TOOL-037")
@pytest.mark.parametrize("name", NAMES)
def test_import_matches_what_durus_read(name: str) -> None:
    storage = MemoryStorage()
    result = import_durus(str(FIXTURES / f"{name}.durus"), storage, class_map=CLASS_MAP)
    assert result.warnings == []
    durus_file = read_durus(str(FIXTURES / f"{name}.durus"))
    current = durus_file.current_records()
    # [TOOL-032] Every current record, reachable or not, under its own oid.
    assert sorted(storage.iter_oids()) == sorted(current)
    assert result.census["durus.btree.BNode4"] > 1
    connection = Connection(storage)
    assert _canonical(connection) == _expected(name)
    # [TOOL-037] Each record is what dhruva's pickle writer writes for the object.
    for oid in current:
        record = storage.load(oid)
        assert record.data[:1] == b"P"
        data, refs = ObjectWriter(connection).get_state(connection[oid])
        assert (record.data, record.refs) == (data, refs)
        # Durus's reference list holds the same oids (sorted, without the object itself).
        assert {ref for ref in iter_oids(record.refs) if ref != oid} == set(
            iter_oids(current[oid].refs)
        )


@pytest.mark.req("TOOL-037")
def test_import_with_msgspec() -> None:
    pytest.importorskip("msgspec")
    storage = MemoryStorage()
    import_durus(str(FIXTURES / "shelf.durus"), storage, class_map=CLASS_MAP, serializer="msgspec")
    assert {storage.load(oid).data[:1] for oid in storage.iter_oids()} == {b"M"}
    assert _canonical(Connection(storage)) == _expected("shelf")


@pytest.mark.req("TOOL-034")
def test_imported_btree_and_cycles_work(tmp_path: Path) -> None:
    new = str(tmp_path / "new.dhruva")
    dbtools.import_durus_file(str(FIXTURES / "dfs20.durus"), new, class_map=CLASS_MAP)
    with Connection(FileStorage(new)) as connection:
        root = connection.get_root()
        tree = root["tree"]
        assert len(tree) == 60  # 0..59 without 5, plus 100
        assert list(tree.keys())[:6] == [0, 1, 2, 3, 4, 6]
        first, second = root["items"]
        assert first.partner is second and second.partner is first
        assert second.value is root
        assert tree[100] is first
        assert (root["point"].x, root["point"].y) == (3, 4)
        assert root["set"] == {1, 2, 3}
        for number in range(200, 260):
            tree[number] = number
        connection.commit()
    with Connection(FileStorage(new)) as connection:
        assert len(connection.get_root()["tree"]) == 120


@pytest.mark.req("TOOL-033")
def test_torn_durus_tail_is_ignored_with_a_warning(tmp_path: Path) -> None:
    source = tmp_path / "torn.durus"
    full = (FIXTURES / "shelf.durus").read_bytes()
    source.write_bytes(full[:-10])
    storage = MemoryStorage()
    result = import_durus(str(source), storage, class_map=CLASS_MAP)
    assert len(result.warnings) == 1 and "not a complete transaction" in result.warnings[0]
    assert source.read_bytes() == full[:-10]
    # The last transaction (deleting a BTree key and "garbage") is gone; the rest is there.
    root = Connection(storage).get_root()
    assert "garbage" in root and 5 in root["tree"]


@pytest.mark.req("TOOL-036", "TOOL-040")
def test_unresolved_classes_are_all_reported_and_nothing_is_left(tmp_path: Path) -> None:
    new = tmp_path / "new.dhruva"
    with pytest.raises(DurusImportError) as caught:
        dbtools.import_durus_file(str(FIXTURES / "shelf.durus"), str(new))
    assert caught.value.missing == ["durus_fixture_app.Item", "durus_fixture_app.Point"]
    assert "--map" in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.req("TOOL-036")
def test_a_class_that_is_not_persistent_is_refused() -> None:
    with pytest.raises(DurusImportError, match="not dhruva persistent classes"):
        import_durus(
            str(FIXTURES / "shelf.durus"),
            MemoryStorage(),
            class_map={**CLASS_MAP, "durus_fixture_app.Item": "collections.OrderedDict"},
        )


@pytest.mark.req("TOOL-035")
def test_durus_modules_are_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("durus.persistent_dict")
    fake.PersistentDict = dict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "durus", types.ModuleType("durus"))
    monkeypatch.setitem(sys.modules, "durus.persistent_dict", fake)
    # Without the default table entry, the Durus name is unresolved, not imported.
    monkeypatch.delitem(DURUS_CLASS_MAP, "durus.persistent_dict.PersistentDict")
    with pytest.raises(DurusImportError) as caught:
        import_durus(str(FIXTURES / "dfs20.durus"), MemoryStorage(), class_map=CLASS_MAP)
    assert caught.value.missing == ["durus.persistent_dict.PersistentDict"]


@pytest.mark.req("TOOL-034")
def test_a_bare_module_maps_every_class_of_it() -> None:
    module = types.ModuleType("dhruva_test_ported_app")
    module.Item, module.Point = Item, Point  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        storage = MemoryStorage()
        import_durus(
            str(FIXTURES / "shelf-packed.durus"),
            storage,
            class_map={"durus_fixture_app": module.__name__},
        )
        root = Connection(storage).get_root()
        assert isinstance(root["items"][0], Item) and isinstance(root["point"], Point)
    finally:
        del sys.modules[module.__name__]


@pytest.mark.req("TOOL-007", "TOOL-034", "TOOL-044")
def test_command_line_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = str(tmp_path / "new.dhruva")
    status = dbtools.main(
        [
            "import-durus",
            str(FIXTURES / "shelf.durus"),
            new,
            "--map",
            "durus_fixture_app.Item=dhruva.persistent.Persistent",
            "--map",
            "durus_fixture_app.Point=dhruva.persistent:Persistent",
            "-q",
        ]
    )
    assert status == 0
    assert capsys.readouterr().err == ""
    assert dbtools.main(["verify", "-q", new]) == 0
    assert capsys.readouterr().err == ""
    assert dbtools.main(["import-durus", str(FIXTURES / "shelf.durus"), str(tmp_path / "x")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    # [TOOL-044] The classes are checked before any object is decoded: no
    # progress line comes first, and the --map lines needed follow the error.
    assert lines[0].startswith("dhruva: import-durus failed: classes not found: ")
    assert not any(line.startswith("import: ") for line in lines)
    assert lines[1:] == [
        "  --map durus_fixture_app.Item=NEW.MODULE.Item",
        "  --map durus_fixture_app.Point=NEW.MODULE.Point",
    ]
    assert dbtools.main(["import-durus", str(FIXTURES / "shelf.durus"), new, "-q"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_verify_names_import_durus_for_a_durus_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert dbtools.main(["verify", str(FIXTURES / "dfs20.durus")]) == 2
    assert "dhruva import-durus" in capsys.readouterr().err


# --- the fixtures themselves -----------------------------------------------------------------


def test_fixtures_are_what_durus_writes(tmp_path: Path) -> None:
    """Regenerate the fixtures with real Durus 4.3 and compare them byte for byte.

    Runs when ``durus`` is importable here, or when ``DURUS_PYTHON`` names an
    interpreter that has it (``python3 -m venv v && v/bin/pip install durus==4.3``).
    """
    python = os.environ.get("DURUS_PYTHON")
    if python:
        subprocess.run([python, str(GENERATOR), str(tmp_path)], check=True, capture_output=True)
    else:
        pytest.importorskip("durus", reason="Durus 4.3 is not installed (set DURUS_PYTHON)")
        _generator().write_all(str(tmp_path))
    for name in NAMES:
        for suffix in (".durus", ".expected.json"):
            written = (tmp_path / f"{name}{suffix}").read_bytes()
            assert written == (FIXTURES / f"{name}{suffix}").read_bytes(), name + suffix


@pytest.mark.req("TOOL-043")
def test_opening_a_durus_file_names_import_durus(tmp_path: Path) -> None:
    from dhruva.error import FormatError
    from dhruva.file_storage import FileStorage

    for name in ("shelf.durus", "dfs20.durus"):
        copy = tmp_path / name
        copy.write_bytes((FIXTURES / name).read_bytes())
        with pytest.raises(FormatError) as caught:
            FileStorage(str(copy), readonly=True)
        assert f"dhruva import-durus {copy} NEW.dhruva" in str(caught.value)


@pytest.mark.req("TOOL-045")
def test_imported_btree_has_its_count_stored(tmp_path: Path) -> None:
    from dhruva.btree import BTree

    for fixture in ("dfs20.durus", "shelf.durus"):
        storage = MemoryStorage()
        import_durus(str(FIXTURES / fixture), storage, class_map=CLASS_MAP)
        connection = Connection(storage)
        trees = [obj for obj in connection.get_crawler() if isinstance(obj, BTree)]
        assert trees
        for tree in trees:
            tree._p_load_state()
            # Read the slot itself: len() would count a tree that lacks it.
            stored = object.__getattribute__(tree, "_count")
            assert stored == tree.root.get_count() > 0
        assert connection.get_load_count() >= len(trees)
