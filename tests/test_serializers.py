"""Choosing serializers, restricted loading and dill (spec: object-encoding.md).

Covers the serializer selection rules (OBJ-022 .. OBJ-024), the allow-list
(OBJ-020, OBJ-021, OBJ-025, OBJ-026) including hostile pickle records, and
the dill encoding (OBJ-040, OBJ-041).  The msgspec format has its own file,
tests/test_serializers_msgspec.py.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import io
import os
import pickle
import sys
import uuid
from collections import OrderedDict
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from dhruva.class_registry import ClassRegistry
from dhruva.connection import Connection
from dhruva.error import ForbiddenClassError, FormatError, SerializationError
from dhruva.persistent import Persistent
from dhruva.persistent_dict import PersistentDict
from dhruva.serialize import (
    PICKLE_CODE,
    ObjectReader,
    PickleSerializer,
    get_serializer,
    select_serializer,
)
from dhruva.storage import MemoryStorage
from dhruva.utils import ROOT_OID

MODULE = __name__


class _IdPickler(pickle.Pickler):
    """pickle.Pickler, whose instances take a persistent_id (Python 3.13 refuses it on the base)."""


class Item(Persistent):
    def __init__(self, n: int = 0) -> None:
        self.n = n


class Color(enum.Enum):
    RED = 1
    GREEN = 2


def helper_function() -> str:
    return "called"


def has(package: str) -> bool:
    try:
        __import__(package)
    except ImportError:
        return False
    return True


needs_msgspec = pytest.mark.skipif(not has("msgspec"), reason="msgspec is not installed")
needs_dill = pytest.mark.skipif(not has("dill"), reason="dill is not installed")


def root_code(storage: MemoryStorage) -> bytes:
    return storage.load(ROOT_OID).data[:1]


# -- choosing a serializer -------------------------------------------------------------------


@pytest.mark.req("OBJ-023")
@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("pickle", b"P"),
        ("pickle-restricted", b"P"),
        pytest.param("msgspec", b"M", marks=needs_msgspec),
        pytest.param("dill", b"D", marks=needs_dill),
    ],
)
def test_database_remembers_the_serializer_that_wrote_the_root(name: str, code: bytes) -> None:
    storage = MemoryStorage()
    connection = Connection(storage, serializer=name)
    connection.get_root()["item"] = Item(1)
    connection.commit()
    assert root_code(storage) == code
    reopened = Connection(storage)
    assert reopened.get_serializer().code == code
    reopened.get_root()["item"].n = 2
    reopened.get_root()["other"] = Item(3)
    reopened.commit()
    item = reopened.get_root()["item"]
    assert item._p_oid is not None
    assert storage.load(item._p_oid).data[:1] == code
    assert root_code(storage) == code


@pytest.mark.req("OBJ-023")
def test_new_database_defaults_to_pickle() -> None:
    storage = MemoryStorage()
    assert Connection(storage).get_serializer().name == "pickle"
    assert root_code(storage) == PICKLE_CODE
    assert select_serializer(None, None).name == "pickle"


@needs_msgspec
@pytest.mark.req("OBJ-024", "OBJ-023")
def test_a_database_may_mix_serializers() -> None:
    storage = MemoryStorage()
    first = Connection(storage)
    first.get_root()["p"] = Item(1)
    first.commit()
    second = Connection(storage, serializer="msgspec")
    second.get_root()["p"].n = 10
    second.get_root()["m"] = Item(2)
    second.commit()
    codes = {name: storage.load(second.get_root()[name]._p_oid).data[:1] for name in ("p", "m")}
    assert codes == {"p": b"M", "m": b"M"}
    # The root was rewritten by msgspec, so the database default is now msgspec.
    third = Connection(storage)
    assert third.get_serializer().name == "msgspec"
    third_root = third.get_root()
    assert (third_root["p"].n, third_root["m"].n) == (10, 2)
    # A pickle connection still reads the msgspec records and writes pickle.
    fourth = Connection(storage, serializer="pickle")
    fourth.get_root()["q"] = Item(5)
    fourth.commit()
    assert root_code(storage) == b"P"
    assert fourth.get_root()["m"].n == 2
    assert Connection(storage).get_root()["q"].n == 5


def test_serializer_objects_and_unknown_names() -> None:
    serializer = PickleSerializer()
    assert get_serializer(serializer) is serializer
    assert Connection(MemoryStorage(), serializer=serializer).get_serializer() is serializer
    with pytest.raises(ValueError, match=r"unknown serializer 'yaml'.*pickle"):
        Connection(MemoryStorage(), serializer="yaml")


@pytest.mark.req("OBJ-001")
def test_unknown_code_names_the_code_and_the_known_ones() -> None:
    reader = ObjectReader(lambda oid, cls: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(FormatError, match=r"0x7a .*'P', 'M', 'D'"):
        reader.get_class_and_state(b"zzz")
    with pytest.raises(FormatError, match="0xnothing"):
        reader.get_class(b"")
    storage = MemoryStorage()
    storage.begin()
    storage.store(ROOT_OID, b"Q junk", b"")
    storage.end()
    with pytest.raises(FormatError, match="0x51"):
        Connection(storage)


@pytest.mark.req("OBJ-022")
@pytest.mark.parametrize(("package", "module"), [("msgspec", "msgspec"), ("dill", "dill")])
def test_missing_package_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, package: str, module: str
) -> None:
    storage = MemoryStorage()
    if has(package):
        writer = Connection(storage, serializer=package)
        writer.get_root()["x"] = 1
        writer.commit()
    monkeypatch.setitem(sys.modules, module, None)  # makes ``import`` raise ImportError
    monkeypatch.delitem(sys.modules, f"dhruva.serialize_{package}", raising=False)
    hint = rf"pip install 'dhruva\[{package}\]'"
    with pytest.raises(SerializationError, match=hint):
        Connection(MemoryStorage(), serializer=package)
    if has_records(storage):
        with pytest.raises(SerializationError, match=hint):
            Connection(storage, serializer="pickle").get_root()


def has_records(storage: MemoryStorage) -> bool:
    return storage.get_size() > 0


# -- the allow-list ------------------------------------------------------------------------


@pytest.mark.req("OBJ-021")
def test_allow_list_entries_of_every_kind() -> None:
    by_class = ClassRegistry([Item])
    assert by_class.resolve(MODULE, "Item") is Item
    with pytest.raises(ForbiddenClassError, match=rf"{MODULE}\.Color"):
        by_class.resolve(MODULE, "Color")
    by_module = ClassRegistry([sys.modules[MODULE]])
    assert by_module.resolve(MODULE, "Color") is Color
    # A module entry allows classes only, never functions, and only the
    # classes the module defines, not those it imports.
    with pytest.raises(ForbiddenClassError, match="only classes"):
        by_module.resolve(MODULE, "helper_function")
    assert sys.modules[MODULE].Popen is Popen
    with pytest.raises(ForbiddenClassError, match="defined in subprocess"):
        by_module.resolve(MODULE, "Popen")
    by_name = ClassRegistry([f"{MODULE}.helper_function", f"{MODULE}:Item"])
    assert by_name.resolve(MODULE, "helper_function") is helper_function
    assert by_name.resolve(MODULE, "Item") is Item
    by_prefix = ClassRegistry(["tests.*"])
    assert by_prefix.is_allowed("tests.sub.module", "X")
    assert not by_prefix.is_allowed("testsuite", "X")
    with pytest.raises(TypeError):
        ClassRegistry([42])  # type: ignore[list-item]
    assert "helper_function" in repr(by_name)


@pytest.mark.req("OBJ-021", "OBJ-020")
def test_a_name_not_on_the_list_is_never_imported() -> None:
    registry = ClassRegistry(["json"])
    name = "dhruva_test_never_imported_module"
    with pytest.raises(ForbiddenClassError, match=name):
        registry.resolve(name, "Anything")
    assert name not in sys.modules
    assert not registry.is_allowed("os", "system")
    with pytest.raises(ForbiddenClassError, match="cannot be imported"):
        ClassRegistry([f"{name}.Thing"]).resolve(name, "Thing")


@pytest.mark.req("OBJ-025")
def test_every_allow_list_holds_the_safe_value_types_and_dhruva_containers() -> None:
    storage = MemoryStorage()
    writer = Connection(storage)
    values = {
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "date": dt.date(2024, 1, 2),
        "time": dt.time(1, 2, 3),
        "delta": dt.timedelta(days=2),
        "dec": decimal.Decimal("1.25"),
        "uuid": uuid.UUID(int=7),
        "ordered": OrderedDict(a=1),
        "set": {1, 2},
        "frozen": frozenset({3}),
        "complex": 1 + 2j,
        "bytes": bytearray(b"ab"),
        "range": range(3),
    }
    root = writer.get_root()
    root.update(values)
    root["nested"] = PersistentDict({"x": 1})
    writer.commit()
    reader = Connection(storage, serializer="pickle-restricted")
    loaded = reader.get_root()
    assert {k: loaded[k] for k in values} == values
    assert loaded["nested"]["x"] == 1


# -- restricted pickle and hostile records ------------------------------------------------------


class Exploit:
    """Unpickling this runs ``os.system`` (a hostile record's classic payload)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def hostile_record(marker: Path) -> bytes:
    """A ``P`` record whose state, when unpickled, creates ``marker`` via os.system."""
    file = io.BytesIO()
    file.write(PICKLE_CODE)
    pickler = pickle.Pickler(file, protocol=5)
    pickler.dump(Item)
    pickler.dump({"n": Exploit(f"touch {marker}")})
    return file.getvalue()


def store_raw(storage: MemoryStorage, oid: bytes, data: bytes) -> None:
    storage.begin()
    storage.store(oid, data, b"")
    storage.end()


@pytest.mark.skipif(os.name != "posix", reason="the payload uses the POSIX touch command")
@pytest.mark.req("OBJ-020")
def test_hostile_pickle_record_is_refused_by_restricted_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    storage = MemoryStorage()
    writer = Connection(storage)
    writer.get_root()["item"] = Item(1)
    writer.commit()
    oid = writer.get_root()["item"]._p_oid
    store_raw(storage, oid, hostile_record(marker))
    for reader in (
        Connection(storage, serializer="pickle-restricted", allowed_classes=[Item]),
        Connection(storage, allowed_classes=[Item]),
    ):
        with pytest.raises(ForbiddenClassError, match=r"posix\.system|os\.system") as info:
            _ = reader.get_root()["item"].n
        assert "allow-list" in str(info.value)
        assert not marker.exists()
    # The test can fail: unrestricted pickle does run the record.
    _ = Connection(storage).get_root()["item"].n
    assert marker.exists()


@pytest.mark.req("OBJ-020")
def test_restricted_pickle_refuses_unlisted_classes_naming_them() -> None:
    storage = MemoryStorage()
    writer = Connection(storage)
    writer.get_root()["item"] = Item(1)
    writer.get_root()["color"] = Color.RED
    writer.commit()
    reader = Connection(storage, serializer="pickle-restricted")
    with pytest.raises(ForbiddenClassError, match=rf"{MODULE}\.(Item|Color)") as info:
        reader.get_root()
    assert info.value.name.startswith(MODULE)
    allowed = Connection(storage, allowed_classes=[sys.modules[MODULE]])
    assert allowed.get_root()["item"].n == 1
    assert allowed.get_root()["color"] is Color.RED
    # A registry object is accepted as it is, and may be shared.
    registry = ClassRegistry([Item, Color])
    assert Connection(storage, allowed_classes=registry).get_root()["item"].n == 1


@pytest.mark.req("OBJ-026")
def test_malformed_persistent_reference_is_refused() -> None:
    class BadPickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("not an oid", Item) if isinstance(obj, Item) else None

    file = io.BytesIO()
    file.write(PICKLE_CODE)
    pickler = BadPickler(file, protocol=5)
    pickler.dump(PersistentDict)
    pickler.dump({"data": {"x": Item(1)}})
    storage = MemoryStorage()
    store_raw(storage, ROOT_OID, file.getvalue())
    for connection in (Connection(storage), Connection(storage, allowed_classes=[Item])):
        with pytest.raises(SerializationError, match="malformed persistent reference"):
            connection.get_root()


def test_restricted_find_class_hook_is_used_for_pickle() -> None:
    asked: list[tuple[str, str]] = []

    def find_class(module: str, name: str) -> Any:
        asked.append((module, name))
        return pickle.Unpickler.find_class(pickle.Unpickler(io.BytesIO()), module, name)

    storage = MemoryStorage()
    Connection(storage).commit()
    reader = ObjectReader(lambda oid, cls: None, find_class=find_class)  # type: ignore[arg-type,return-value]
    assert reader.get_class(storage.load(ROOT_OID).data) is PersistentDict
    assert asked == [("dhruva.persistent_dict", "PersistentDict")]


# -- dill ----------------------------------------------------------------------------------------


@needs_dill
@pytest.mark.req("OBJ-040")
def test_dill_stores_lambdas_and_closures() -> None:
    storage = MemoryStorage()
    connection = Connection(storage, serializer="dill")
    offset = 10
    item = Item(1)
    item.add = lambda x: x + offset
    item.me = item
    connection.get_root()["item"] = item
    connection.commit()
    data = storage.load(item._p_oid).data
    assert data[:1] == b"D"
    import dill

    unpickler = dill.Unpickler(io.BytesIO(data[1:]))
    unpickler.persistent_load = lambda pid: pid
    assert unpickler.load() is Item
    state = unpickler.load()
    assert state["me"] == (item._p_oid, Item)
    loaded = Connection(storage).get_root()["item"]
    assert loaded.add(1) == 11
    assert loaded.me is loaded


@needs_dill
def test_pickle_refuses_a_lambda_that_dill_accepts() -> None:
    connection = Connection(MemoryStorage())
    item = Item()
    item.f = lambda: None
    connection.get_root()["item"] = item
    with pytest.raises(SerializationError, match=r"Item.*'f'"):
        connection.commit()


@needs_dill
@pytest.mark.req("OBJ-041")
def test_restricted_reader_refuses_dill_records(tmp_path: Path) -> None:
    storage = MemoryStorage()
    writer = Connection(storage, serializer="dill")
    writer.get_root()["item"] = Item(1)
    writer.commit()
    with pytest.raises(SerializationError, match="dill"):
        Connection(storage, allowed_classes=[Item]).get_root()
    with pytest.raises(SerializationError, match="dill"):
        Connection(storage, serializer="pickle-restricted").get_root()


@needs_dill
def test_dill_error_names_class_and_attribute() -> None:
    import threading

    connection = Connection(MemoryStorage(), serializer="dill")
    item = Item()
    item.lock = threading.Lock()
    item.generator = (x for x in range(3))
    connection.get_root()["item"] = item
    with pytest.raises(SerializationError, match=r"Item \(oid \d+\).*attribute"):
        connection.commit()


# -- the load path: one decoder pass per record ---------------------------------------------------


def _records_of_every_serializer() -> list[str]:
    names = ["pickle"]
    if has("msgspec"):
        names.append("msgspec")
    if has("dill"):
        names.append("dill")
    return names


@pytest.mark.parametrize("name", _records_of_every_serializer())
def test_get_state_returns_the_state_get_class_and_state_returns(name: str) -> None:
    # ObjectReader.get_state is the load path's decoder call; for a decoder
    # without get_state of its own (msgspec) it falls back to the pair.
    storage = MemoryStorage()
    connection = Connection(storage, serializer=name)
    connection.get_root()["item"] = Item(7)
    connection.get_root()["plain"] = {"k": [1, 2.5, "s"]}
    connection.commit()
    ghosts: list[tuple[bytes, type]] = []

    def get_ghost(oid: bytes, cls: type) -> Any:
        ghosts.append((oid, cls))
        return ("ghost", oid)

    reader = ObjectReader(get_ghost)
    data = storage.load(ROOT_OID).data
    cls, state = reader.get_class_and_state(data)
    assert cls is PersistentDict
    assert reader.get_state(data) == state
    assert reader.get_state(data) == state  # the cached state reader, second time
    assert state["data"]["plain"] == {"k": [1, 2.5, "s"]}
    assert ghosts[0][1] is Item and len(set(ghosts)) == 1


def test_get_state_refuses_what_get_class_and_state_refuses() -> None:
    reader = ObjectReader(lambda oid, cls: None)  # type: ignore[arg-type,return-value]
    for read in (reader.get_class_and_state, reader.get_state):
        with pytest.raises(pickle.UnpicklingError):
            read(PICKLE_CODE + b"\x80\x05not a pickle")
        with pytest.raises(FormatError, match="unknown serializer code"):
            read(b"Zjunk")


def test_an_object_that_refers_to_itself_loads_as_one_object() -> None:
    # Connection.get decodes the class and the state in one pass, before the
    # object exists; the reference back to it must still be the object.
    storage = MemoryStorage()
    connection = Connection(storage)
    item = Item(1)
    item.me = item
    connection.get_root()["item"] = item
    connection.commit()
    oid = item._p_oid
    assert oid is not None
    fresh = Connection(storage)
    loaded = fresh.get(oid)
    assert loaded is not None and loaded.me is loaded and loaded.n == 1
    assert fresh.get(oid) is loaded
    assert fresh.get_root()["item"] is loaded


# -- OBJ-009: the memo-free class pickle, and reading the state alone -----------------------------


def _class_pickle_end(data: bytes) -> int:
    """Where the class pickle of a protocol-5 ``P`` record ends (after its STOP)."""
    return 12 + int.from_bytes(data[4:12], "little")


def _record(cls: type, state: Any, *, one_pickler: bool) -> bytes:
    """A ``P`` record of ``cls`` and ``state``: as dhruva writes it, or as before OBJ-009."""
    file = io.BytesIO()
    file.write(PICKLE_CODE)
    pickler = pickle.Pickler(file, protocol=5)
    if one_pickler:
        pickler.dump(cls)
    else:
        pickler.fast = True
        pickler.dump(cls)
        pickler = pickle.Pickler(file, protocol=5)
    pickler.dump(state)
    return file.getvalue()


class _Finding(pickle.Unpickler):
    """Reads a state pickle alone, noting the persistent ids it meets."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.found: list[Any] = []

    def persistent_load(self, pid: Any) -> Any:
        self.found.append(pid)
        return ("ghost", pid[0])


@pytest.mark.req("OBJ-009", "OBJ-002")
def test_the_writer_memoizes_nothing_in_the_class_pickle_and_starts_a_fresh_state_pickle() -> None:
    import pickletools

    storage = MemoryStorage()
    connection = Connection(storage)
    item = Item(3)
    item.other = Item(4)
    connection.get_root()["item"] = item
    connection.commit()
    for oid in (item._p_oid, item.other._p_oid):
        assert oid is not None
        data = storage.load(oid).data
        end = _class_pickle_end(data)
        ops = [op.name for op, _arg, _pos in pickletools.genops(data[1:end])]
        assert ops == [
            "PROTO",
            "FRAME",
            "SHORT_BINUNICODE",
            "SHORT_BINUNICODE",
            "STACK_GLOBAL",
            "STOP",
        ]
        assert pickle.loads(data[1:end]) is Item
        # The state pickle is complete by itself: no GET of the class pickle's memo.
        unpickler = _Finding(io.BytesIO(data[end:]))
        state = unpickler.load()
        assert state["n"] in (3, 4)
        if oid == item._p_oid:
            assert unpickler.found == [(item.other._p_oid, Item)]


@pytest.mark.req("OBJ-009", "OBJ-003")
@pytest.mark.parametrize("one_pickler", [True, False], ids=["before-OBJ-009", "OBJ-009"])
@pytest.mark.parametrize("restricted", [False, True], ids=["pickle", "restricted"])
def test_both_record_forms_load_alike(one_pickler: bool, restricted: bool) -> None:
    storage = MemoryStorage()
    writer = Connection(storage)
    writer.get_root()["a"] = Item(0)
    writer.get_root()["b"] = Item(0)
    writer.commit()
    a, b = writer.get_root()["a"], writer.get_root()["b"]
    # a references nothing; b references a (and repeats Item, memoized by the class pickle
    # in the old form, so its state pickle there GETs a memo entry of the class pickle).
    store_raw(storage, a._p_oid, _record(Item, {"n": 1, "s": "x" * 3}, one_pickler=one_pickler))
    other = PersistentDict
    state_b = {"n": 2, "kind": other, "ref": a}

    class Writer(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return (obj._p_oid, type(obj)) if isinstance(obj, Item) else None

    file = io.BytesIO()
    file.write(PICKLE_CODE)
    pickler = Writer(file, protocol=5)
    if not one_pickler:
        pickler.fast = True
        pickler.dump(Item)
        pickler = Writer(file, protocol=5)
    else:
        pickler.dump(Item)
    pickler.dump(state_b)
    storage.begin()
    storage.store(b._p_oid, file.getvalue(), a._p_oid)
    storage.end()
    kwargs: dict[str, Any] = {"allowed_classes": [Item, PersistentDict]} if restricted else {}
    reader = Connection(storage, **kwargs)
    ra, rb = reader.get_root()["a"], reader.get_root()["b"]
    assert (ra.n, ra.s) == (1, "xxx")
    assert rb.n == 2 and rb.kind is PersistentDict and rb.ref is ra


@pytest.mark.req("OBJ-009", "OBJ-020")
@pytest.mark.skipif(os.name != "posix", reason="the payload uses the POSIX touch command")
def test_restricted_reading_refuses_a_memo_free_record_too(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    storage = MemoryStorage()
    writer = Connection(storage)
    writer.get_root()["item"] = Item(1)
    writer.get_root()["color"] = Color.RED
    writer.commit()
    oid = writer.get_root()["item"]._p_oid
    store_raw(storage, oid, _record(Item, {"n": Exploit(f"touch {marker}")}, one_pickler=False))
    reader = Connection(storage, allowed_classes=[Item, Color])
    with pytest.raises(ForbiddenClassError, match=r"posix\.system|os\.system"):
        _ = reader.get_root()["item"].n
    assert not marker.exists()
    # A memo-free record of a class off the list is refused by its class pickle.
    color_only = Connection(storage, allowed_classes=[Color])
    with pytest.raises(ForbiddenClassError, match=rf"{MODULE}\.Item"):
        _ = color_only.get_root()["item"].n


@pytest.mark.req("OBJ-009", "OBJ-005")
def test_a_record_whose_reference_list_hides_a_reference_still_loads_right() -> None:
    # The fast path (no references: plain pickle.loads) meets a persistent id;
    # the reader falls back to the full unpickler and makes the ghost as always.
    storage = MemoryStorage()
    writer = Connection(storage)
    writer.get_root()["a"] = Item(1)
    writer.get_root()["b"] = Item(2)
    writer.commit()
    a, b = writer.get_root()["a"], writer.get_root()["b"]

    class Writer(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return (obj._p_oid, type(obj)) if isinstance(obj, Item) else None

    file = io.BytesIO()
    file.write(PICKLE_CODE)
    pickler = pickle.Pickler(file, protocol=5)
    pickler.fast = True
    pickler.dump(Item)
    Writer(file, protocol=5).dump({"n": 2, "ref": a})
    store_raw(storage, b._p_oid, file.getvalue())  # reference list b"": a lie
    reader = Connection(storage)
    assert reader.get_root()["b"].ref is reader.get_root()["a"]
    assert reader.get_root()["a"].n == 1


@pytest.mark.req("OBJ-009")
def test_reading_the_state_alone_equals_reading_both_pickles() -> None:
    reader = ObjectReader(lambda oid, cls: ("ghost", oid))  # type: ignore[arg-type,return-value]
    states: list[Any] = [
        {"n": 1},
        {"n": 2, "s": "é" * 40, "l": [1, 2.5, None], "t": (1, (2, 3)), "b": b"\x00" * 300},
        {"n": 3, "kind": Item, "when": dt.date(2026, 12, 3), "d": decimal.Decimal("1.5")},
    ]
    for state in states:
        for one_pickler in (True, False):
            data = _record(Item, state, one_pickler=one_pickler)
            assert reader.get_class_and_state(data) == (Item, state)
            assert reader.get_state(data, b"") == state
            assert reader.get_state(data, None) == state
            assert reader.get_state(data) == state


# -- the writer's probe: states without references pickled by plain dumps --------------------------


class Holder:
    """A plain object whose pickle reaches a persistent object through its own reduce."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __reduce__(self) -> Any:
        return (Holder, (self.inner,))


def _slow_encode(cls: type, state: Any, refs: list[bytes]) -> bytes:
    """What PickleSerializer writes, the long way: a pickler with persistent_id."""
    file = io.BytesIO()
    file.write(PICKLE_CODE)
    pickler = pickle.Pickler(file, protocol=5)
    pickler.fast = True
    pickler.dump(cls)
    pickler = _IdPickler(file, protocol=5)

    def persistent_id(obj: Any) -> Any:
        if isinstance(obj, Persistent):
            refs.append(obj._p_oid)
            return (obj._p_oid, type(obj))
        return None

    pickler.persistent_id = persistent_id  # type: ignore[method-assign]
    pickler.dump(state)
    return file.getvalue()


@pytest.mark.req("OBJ-004", "OBJ-005", "OBJ-009")
def test_every_way_a_state_reaches_a_persistent_object_writes_a_persistent_id() -> None:
    storage = MemoryStorage()
    connection = Connection(storage)
    root = connection.get_root()
    target = Item(9)
    root["target"] = target
    connection.commit()
    shapes = {
        "plain": Item(1),  # no reference: the probe's fast path
        "direct": Item(2),
        "nested": Item(3),
        "reduce": Item(4),
        "plain-again": Item(5),
    }
    shapes["direct"].ref = target
    shapes["nested"].ref = {"k": [(1, [target])]}
    shapes["reduce"].ref = Holder(target)
    for name, item in shapes.items():
        root[name] = item
    connection.commit()
    for name, item in shapes.items():
        record = storage.load(item._p_oid)
        refs: list[bytes] = []
        assert record.data == _slow_encode(Item, item.__getstate__(), refs), name
        assert record.refs == b"".join(refs), name
        assert (target._p_oid in record.refs) == (name not in ("plain", "plain-again")), name
    fresh = Connection(storage)
    assert fresh.get_root()["reduce"].ref.inner is fresh.get_root()["target"]
    assert fresh.get_root()["nested"].ref["k"][0][1][0] is fresh.get_root()["target"]
    # The probe is off again: outside a commit a persistent object pickles as a copy.
    copy = pickle.loads(pickle.dumps(target))
    assert copy.n == 9 and copy is not target and copy._p_oid is None


@pytest.mark.req("OBJ-004", "OBJ-009")
def test_a_class_with_its_own_reduce_or_a_dispatch_entry_still_becomes_a_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import copyreg

    from dhruva import persistent as persistent_module
    from dhruva import serialize

    module = sys.modules[__name__]
    monkeypatch.setattr(persistent_module, "reduce_overridden", False)
    # No class is known to reference objects yet: every record tries the probe first.
    monkeypatch.setattr(serialize, "_REFERENCING_CLASSES", set())

    class Special(Persistent):
        def __reduce_ex__(self, protocol: Any) -> Any:
            return (Special, ())

    assert persistent_module.reduce_overridden  # noticed when the class was made
    monkeypatch.setattr(persistent_module, "reduce_overridden", False)

    class Registered(Persistent):
        pass

    for kind in (Special, Registered):
        # Importable by name, as record classes are.
        kind.__qualname__ = kind.__name__ = f"Probe{kind.__name__}"
        monkeypatch.setattr(module, kind.__name__, kind, raising=False)
    monkeypatch.setitem(copyreg.dispatch_table, Registered, lambda obj: (Registered, ()))
    for kind in (Special, Registered):
        if kind is Special:
            monkeypatch.setattr(persistent_module, "reduce_overridden", True)
        storage = MemoryStorage()
        connection = Connection(storage)
        holder = Item(1)
        holder.ref = kind()
        connection.get_root()["holder"] = holder
        connection.commit()
        record = storage.load(holder._p_oid)
        assert record.refs == holder.ref._p_oid, kind
        assert isinstance(Connection(storage).get_root()["holder"].ref, kind)
        monkeypatch.setattr(persistent_module, "reduce_overridden", False)


def test_the_probe_is_per_thread() -> None:
    import threading

    from dhruva import persistent as persistent_module

    seen: list[bool] = []
    persistent_module.reference_probe.active = True
    try:
        probe = persistent_module.reference_probe
        thread = threading.Thread(target=lambda: seen.append(probe.active))
        thread.start()
        thread.join()
        with pytest.raises(persistent_module.ReferenceFound):
            pickle.dumps(Item(1))
    finally:
        persistent_module.reference_probe.active = False
    assert seen == [False]
    assert pickle.loads(pickle.dumps(Item(2))).n == 2
