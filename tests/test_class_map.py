"""Renamed and moved classes: the class map and MissingClassError (spec OBJ-050, OBJ-051)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhruva.class_registry import ClassMap, split_path
from dhruva.connection import Connection
from dhruva.error import ForbiddenClassError, MissingClassError
from dhruva.file_storage import FileStorage
from dhruva.persistent import Persistent


class Renamed(Persistent):
    """The class's new home."""


@pytest.fixture
def old_module() -> Iterator[types.ModuleType]:
    """A module ``old_shop`` with a class ``Thing``, removed again afterwards."""
    module = types.ModuleType("old_shop")

    class Thing(Persistent):
        pass

    Thing.__module__ = "old_shop"
    Thing.__qualname__ = "Thing"
    module.Thing = Thing  # type: ignore[attr-defined]
    sys.modules["old_shop"] = module
    yield module
    sys.modules.pop("old_shop", None)


def _write_old_record(path: str, module: types.ModuleType, serializer: str) -> None:
    with Connection(FileStorage(path), serializer=serializer) as connection:
        thing = module.Thing()
        thing.colour = "red"
        connection.get_root()["thing"] = thing
        connection.commit()


@pytest.mark.req("OBJ-051")
def test_missing_class_is_named_with_the_oid(
    tmp_path: Path, old_module: types.ModuleType
) -> None:
    path = str(tmp_path / "db.dhruva")
    _write_old_record(path, old_module, "pickle")
    sys.modules.pop("old_shop")
    with Connection(FileStorage(path)) as connection:
        # The root's record names the class too: its reference to the thing
        # carries the class, so that a ghost of the right class can be made.
        with pytest.raises(MissingClassError, match=r"old_shop\.Thing") as caught:
            connection.get_root()
        assert "class_map" in str(caught.value)
        assert any("oid 0" in note for note in caught.value.__notes__)


@pytest.mark.req("OBJ-050")
@pytest.mark.parametrize("serializer", ["pickle", "msgspec"])
def test_class_map_loads_old_records_as_the_new_class(
    tmp_path: Path, old_module: types.ModuleType, serializer: str
) -> None:
    if serializer == "msgspec":
        pytest.importorskip("msgspec")
    path = str(tmp_path / "db.dhruva")
    _write_old_record(path, old_module, serializer)
    sys.modules.pop("old_shop")
    with Connection(FileStorage(path), class_map={"old_shop.Thing": Renamed}) as connection:
        thing = connection.get_root()["thing"]
        assert isinstance(thing, Renamed)
        assert thing.colour == "red"
        # Writing the object and its referrer again records the new path
        # everywhere: the map is no longer needed.
        thing.colour = "blue"
        connection.get_root()._p_note_change()
        connection.commit()
    with Connection(FileStorage(path)) as connection:
        assert connection.get_root()["thing"].colour == "blue"


@pytest.mark.req("OBJ-050")
def test_class_map_by_path_is_checked_by_the_allow_list(
    tmp_path: Path, old_module: types.ModuleType
) -> None:
    path = str(tmp_path / "db.dhruva")
    _write_old_record(path, old_module, "pickle")
    new_path = f"{Renamed.__module__}:{Renamed.__qualname__}"
    mapping = {"old_shop.Thing": new_path}
    allowed = ["dhruva.persistent_dict.PersistentDict", f"{Renamed.__module__}.Renamed"]
    with Connection(FileStorage(path), class_map=mapping, allowed_classes=allowed) as connection:
        assert isinstance(connection.get_root()["thing"], Renamed)
    # Without the map the old name is judged, and refused.
    with (
        Connection(FileStorage(path), allowed_classes=allowed) as connection,
        pytest.raises(ForbiddenClassError, match=r"old_shop\.Thing"),
    ):
        connection.get_root()["thing"].colour  # noqa: B018


def test_paths_split_on_colon_or_last_dot() -> None:
    assert split_path("a.b.C") == ("a.b", "C")
    assert split_path("a.b:Outer.Inner") == ("a.b", "Outer.Inner")
    with pytest.raises(ValueError, match="import path"):
        split_path("C")
    assert not ClassMap({})


@pytest.mark.req("OBJ-050")
@pytest.mark.parametrize("serializer", ["pickle", "msgspec"])
def test_a_mapped_class_object_is_still_judged_by_the_allow_list(
    tmp_path: Path, old_module: types.ModuleType, serializer: str
) -> None:
    if serializer == "msgspec":
        pytest.importorskip("msgspec")
    path = str(tmp_path / "db.dhruva")
    _write_old_record(path, old_module, serializer)
    sys.modules.pop("old_shop")
    mapping = {"old_shop.Thing": Renamed}
    refused = ["dhruva.persistent_dict.PersistentDict"]
    with (
        Connection(FileStorage(path), class_map=mapping, allowed_classes=refused) as connection,
        pytest.raises(ForbiddenClassError, match="Renamed"),
    ):
        connection.get_root()
    allowed = [*refused, Renamed]
    with Connection(FileStorage(path), class_map=mapping, allowed_classes=allowed) as connection:
        assert isinstance(connection.get_root()["thing"], Renamed)
