"""Every back-end with every serializer (spec: ``spec/object-encoding.md``).

Storages never look inside record data, so a back-end that passes the storage
contract must carry records of every serializer unchanged, with their
reference lists, across commits, reopening and pack.  These tests run the
object layer over the selected back-end (``storage_factory``) once per
serializer; an optional serializer whose package is missing is skipped with
a reason naming the package.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from dhruva_conformance.backends import StorageFactory

from dhruva.connection import Connection
from dhruva.error import SerializationError
from dhruva.persistent import Persistent
from dhruva.serialize import get_serializer
from dhruva.storage import Storage
from dhruva.utils import ROOT_OID


class Part(Persistent):
    def __init__(self, name: str, other: Any = None) -> None:
        self.name = name
        self.other = other


class Grade(enum.Enum):
    A = "a"
    B = "b"


def _skip_unless(package: str) -> pytest.MarkDecorator:
    try:
        __import__(package)
    except ImportError:
        return pytest.mark.skip(
            reason=f"{package} is not installed (pip install 'dhruva[{package}]')"
        )
    return pytest.mark.skipif(False, reason="")


# Serializer name -> the code its records start with.
SERIALIZERS = [
    pytest.param("pickle", b"P", id="pickle"),
    pytest.param("pickle-restricted", b"P", id="pickle-restricted"),
    pytest.param("msgspec", b"M", id="msgspec", marks=_skip_unless("msgspec")),
    pytest.param("dill", b"D", id="dill", marks=_skip_unless("dill")),
]
VALUES: dict[str, Any] = {
    "text": "dhruva",
    "number": 2**70,
    "pair": (1, "x"),
    "tags": {"a", "b"},
    "when": dt.datetime(2024, 5, 17, 12, 30, tzinfo=dt.UTC),
    "price": decimal.Decimal("9.99"),
    "grade": Grade.B,
    "nested": {"list": [1.5, None, b"raw"], (1, 2): frozenset({3})},
}
THIS_MODULE = sys.modules[__name__]


class Session:
    """Connections on the back-end; ``reopen`` starts a fresh one on the same data."""

    def __init__(self, factory: StorageFactory) -> None:
        self.factory = factory
        self.storage: Storage = factory.open()
        self.connection: Connection | None = None

    def connect(self, reopen: bool = False, **options: Any) -> Connection:
        if self.connection is not None and reopen and "reopen" in self.factory.capabilities:
            self.connection.close()
            self.storage = self.factory.open(reopen=True)
        # Without reopen, a second Connection on the same storage object still
        # loads everything from the storage: nothing is shared but records.
        try:
            self.connection = Connection(self.storage, **options)
        except BaseException:
            # Leave no storage open (and locked) behind a failed connect.
            self.storage.close()
            raise
        return self.connection


@pytest.fixture
def session(storage_factory: StorageFactory) -> Iterator[Session]:
    session = Session(storage_factory)
    yield session
    if session.connection is not None:
        session.connection.close()


def reader_options(serializer: str) -> dict[str, Any]:
    """Restricted reading needs this module's classes on the allow-list."""
    if serializer == "pickle-restricted":
        return {"serializer": serializer, "allowed_classes": [THIS_MODULE]}
    return {}


@pytest.mark.req("OBJ-023", "OBJ-024", "OBJ-005")
@pytest.mark.parametrize(("serializer", "code"), SERIALIZERS)
def test_object_graph_round_trips_and_the_database_keeps_its_serializer(
    session: Session, serializer: str, code: bytes
) -> None:
    connection = session.connect(serializer=serializer)
    root = connection.get_root()
    first = Part("first")
    second = Part("second", first)
    first.other = second  # a cycle through two records
    first.values = dict(VALUES)
    root["parts"] = [first, second]
    connection.commit()
    assert session.storage.load(ROOT_OID).data[:1] == code
    assert first._p_oid is not None
    assert session.storage.load(first._p_oid).data[:1] == code

    reader = session.connect(reopen=True, **reader_options(serializer))
    assert reader.get_serializer().code == code  # remembered from the root record
    parts = reader.get_root()["parts"]
    assert [p.name for p in parts] == ["first", "second"]
    assert parts[0].other is parts[1] and parts[1].other is parts[0]
    assert parts[0].values == VALUES
    parts[1].name = "changed"
    parts.append(Part("third", parts[0]))
    reader.get_root()._p_note_change()
    reader.commit()

    again = session.connect(reopen=True, **reader_options(serializer))
    names = [p.name for p in again.get_root()["parts"]]
    assert names == ["first", "changed", "third"]
    assert again.get_root()["parts"][2].other.values["grade"] is Grade.B


@pytest.mark.needs("pack")
@pytest.mark.req("OBJ-005", "OBJ-037")
@pytest.mark.parametrize(("serializer", "code"), SERIALIZERS)
def test_pack_follows_the_reference_lists_of_every_serializer(
    session: Session, serializer: str, code: bytes
) -> None:
    connection = session.connect(serializer=serializer)
    root = connection.get_root()
    kept = Part("kept", Part("reached only through kept"))
    dropped = Part("dropped")
    root["kept"] = kept
    root["dropped"] = dropped
    connection.commit()
    dropped_oid = dropped._p_oid
    assert dropped_oid is not None
    del root["dropped"]
    connection.commit()
    connection.pack()
    reader = session.connect(reopen=True, **reader_options(serializer))
    assert reader.get_root()["kept"].other.name == "reached only through kept"
    assert reader.get(dropped_oid) is None


@pytest.mark.req("OBJ-024")
def test_one_database_holds_records_of_every_available_serializer(session: Session) -> None:
    for name in ("pickle", "msgspec", "dill"):
        try:
            get_serializer(name)
        except SerializationError:
            # The optional package is missing.  Asked before connecting: a
            # failed connect closes the storage, and the next one would use
            # a closed storage.
            continue
        connection = session.connect(reopen=True, serializer=name)
        connection.get_root()[name] = Part(name)
        connection.commit()
    reader = session.connect(reopen=True)
    root = reader.get_root()
    for name in root:
        assert root[name].name == name
        record = session.storage.load(root[name]._p_oid)
        assert record.data[:1] == {"pickle": b"P", "msgspec": b"M", "dill": b"D"}[name]


@pytest.mark.req("OBJ-020", "OBJ-041")
@pytest.mark.parametrize(("serializer", "code"), SERIALIZERS)
def test_restricted_reading_over_the_back_end(
    session: Session, serializer: str, code: bytes
) -> None:
    connection = session.connect(serializer=serializer)
    connection.get_root()["part"] = Part("p")
    connection.commit()
    restricted = session.connect(reopen=True, allowed_classes=[Part, Grade])
    if code == b"D":
        with pytest.raises(SerializationError, match="dill"):
            restricted.get_root()
        return
    assert restricted.get_root()["part"].name == "p"
    refused = session.connect(reopen=True, allowed_classes=["json"])
    with pytest.raises(SerializationError, match=rf"{__name__}\.Part"):
        refused.get_root()["part"].name  # noqa: B018
