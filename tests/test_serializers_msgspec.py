"""The msgspec (``M``) record format, byte by byte (spec: object-encoding.md, OBJ-030 ..).

The records are checked with an independent MessagePack reading (msgspec's
own decoder with a recording ``ext_hook``), and against the hex vector in
conformance/vectors/object-encoding/.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import sys
import uuid
import zoneinfo
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from _vectors import read_vector

msgspec = pytest.importorskip("msgspec", reason="msgspec is not installed")

from msgspec.msgpack import Decoder, Encoder, Ext  # noqa: E402

from dhruva.class_registry import ClassRegistry  # noqa: E402
from dhruva.connection import Connection  # noqa: E402
from dhruva.error import ForbiddenClassError, SerializationError  # noqa: E402
from dhruva.persistent import Persistent, PersistentBase  # noqa: E402
from dhruva.persistent_dict import PersistentDict  # noqa: E402
from dhruva.persistent_list import PersistentList  # noqa: E402
from dhruva.serialize import ObjectReader  # noqa: E402
from dhruva.serialize_msgspec import EXT_CODES, MsgspecSerializer  # noqa: E402
from dhruva.storage import MemoryStorage  # noqa: E402
from dhruva.utils import ROOT_OID, int8_to_str, split_oids  # noqa: E402

VECTORS = Path(__file__).resolve().parent.parent / "conformance" / "vectors" / "object-encoding"
MODULE = __name__
OID1 = int8_to_str(1)


class Item(Persistent):
    def __init__(self, n: int = 0) -> None:
        self.n = n


class Mood(enum.Enum):
    HAPPY = "happy"
    PAIR = (1, 2)


def raw_decode(data: bytes) -> Any:
    """Decode MessagePack leaving every ext as ``("ext", code, payload)``."""
    return Decoder(ext_hook=lambda code, payload: ("ext", code, bytes(payload))).decode(data)


def split_record(data: bytes) -> tuple[str, Any]:
    """Split record data into (class name, raw state) the way another language would."""
    assert data[:1] == b"M"
    lead = data[1]
    assert lead == 0xD9 or 0xA0 <= lead <= 0xBF
    start, length = (3, data[2]) if lead == 0xD9 else (2, lead & 0x1F)
    name = data[start : start + length].decode("utf-8")
    return name, raw_decode(data[start + length :])


def store(serializer: str = "msgspec", **values: Any) -> tuple[MemoryStorage, Item]:
    storage = MemoryStorage()
    connection = Connection(storage, serializer=serializer)
    item = Item()
    for name, value in values.items():
        setattr(item, name, value)
    connection.get_root()["item"] = item
    connection.commit()
    return storage, item


def fake_reference(obj: PersistentBase) -> tuple[bytes, type]:
    return OID1, type(obj)._p_class


@pytest.mark.req("OBJ-030", "OBJ-031", "OBJ-037", "OBJ-038")
def test_vector_encodes_and_decodes() -> None:
    data, expect = read_vector(VECTORS, "msgspec-record")
    state = {
        "data": {
            "a": PersistentList(),
            "t": (1, "x"),
            "when": dt.datetime.fromisoformat(expect["state"]["data"]["when"]["datetime"]),
            "n": decimal.Decimal("9.99"),
            "s": HTTPStatus.OK,
        }
    }
    refs: list[bytes] = []

    def reference(obj: PersistentBase) -> tuple[bytes, type]:
        refs.append(OID1)
        return OID1, type(obj)._p_class

    assert MsgspecSerializer().encode(PersistentDict, state, reference) == data
    assert [int.from_bytes(r, "big") for r in refs] == expect["refs"]
    ghosts: list[tuple[bytes, type]] = []

    def get_ghost(oid: bytes, cls: type) -> Any:
        ghosts.append((oid, cls))
        return ("ghost", oid)

    reader = ObjectReader(get_ghost, registry=ClassRegistry(["http.HTTPStatus"]))  # type: ignore[arg-type]
    assert reader.get_class(data) is PersistentDict
    cls, decoded = reader.get_class_and_state(data)
    assert cls is PersistentDict
    assert decoded["data"] == {**state["data"], "a": ("ghost", OID1)}
    assert ghosts == [(OID1, PersistentList)]
    name, raw = split_record(data)
    assert name == expect["class"]
    assert raw["data"]["a"] == ("ext", 1, OID1 + b"dhruva.persistent_list:PersistentList")


@pytest.mark.req("OBJ-038")
def test_reader_accepts_non_minimal_forms() -> None:
    name = b"dhruva.persistent_dict:PersistentDict"
    # str32 class name, map16 state, uint64 and ext32 where shorter forms exist.
    data = (
        b"M"
        + b"\xdb"
        + len(name).to_bytes(4, "big")
        + name
        + b"\xde\x00\x01"
        + b"\xa4data"
        + b"\x82"
        + b"\xa1n\xcf"
        + (2).to_bytes(8, "big")
        + b"\xa1t\xc9"
        + (2).to_bytes(4, "big")
        + b"\x02\x91\x07"
    )
    reader = ObjectReader(lambda oid, cls: None)  # type: ignore[arg-type,return-value]
    assert reader.get_class_and_state(data) == (PersistentDict, {"data": {"n": 2, "t": (7,)}})


@pytest.mark.req("OBJ-032", "OBJ-033", "OBJ-037", "OBJ-005")
def test_every_type_has_its_ext_code() -> None:
    big = 2**64
    values: dict[str, Any] = {
        "none": None,
        "flag": True,
        "int": -(2**63),
        "top": 2**64 - 1,
        "big": big,
        "neg": -(2**63) - 1,
        "float": 1.5,
        "text": "é",
        "bytes": b"\x00",
        "list": [1],
        "plainkeys": {1: "a", None: "b", 1.5: "c", b"k": "d", False: "e"},
        "tuplekeys": {(1, 2): "t"},
        "tuple": (1,),
        "set": {2},
        "frozen": frozenset({3}),
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, 6, fold=1),
        "date": dt.date(2024, 1, 2),
        "time": dt.time(1, 2, 3, 4, tzinfo=dt.UTC),
        "delta": dt.timedelta(days=-1, microseconds=5),
        "dec": decimal.Decimal("-1.50"),
        "uuid": uuid.UUID(int=1),
        "enum": Mood.PAIR,
        "complex": 1 + 2j,
        "bytearray": bytearray(b"ba"),
    }
    storage, item = store(**values)
    other = Item(2)
    item.other = other
    item.again = [other, item]
    Connection(storage)  # unrelated reader; must not disturb anything
    connection = item._p_connection
    assert isinstance(connection, Connection)
    connection.commit()
    assert item._p_oid is not None and other._p_oid is not None
    record = storage.load(item._p_oid)
    name, raw = split_record(record.data)
    assert name == f"{MODULE}:Item"
    # References in byte order, each once (OBJ-005, OBJ-037).
    assert split_oids(record.refs) == [other._p_oid, item._p_oid]
    assert raw["other"] == ("ext", 1, other._p_oid + f"{MODULE}:Item".encode())
    codes = {
        key: value[1]
        for key, value in raw.items()
        if isinstance(value, tuple) and value[0] == "ext"
    }
    assert codes == {
        "big": EXT_CODES["bigint"],
        "neg": EXT_CODES["bigint"],
        "tuplekeys": EXT_CODES["map"],
        "tuple": EXT_CODES["tuple"],
        "set": EXT_CODES["set"],
        "frozen": EXT_CODES["frozenset"],
        "when": EXT_CODES["datetime"],
        "date": EXT_CODES["date"],
        "time": EXT_CODES["time"],
        "delta": EXT_CODES["timedelta"],
        "dec": EXT_CODES["decimal"],
        "uuid": EXT_CODES["uuid"],
        "enum": EXT_CODES["enum"],
        "complex": EXT_CODES["complex"],
        "bytearray": EXT_CODES["bytearray"],
        "other": EXT_CODES["ref"],
    }
    assert raw["big"][2] == b"\x01" + b"\x00" * 8
    assert raw["dec"][2] == b"-1.50"
    assert raw["uuid"][2] == uuid.UUID(int=1).bytes
    assert raw_decode(raw["when"][2]) == [2024, 1, 2, 3, 4, 5, 6, 1, None]
    assert raw_decode(raw["time"][2]) == [1, 2, 3, 4, 0, 0]
    assert raw_decode(raw["enum"][2]) == [f"{MODULE}:Mood", ("ext", 2, b"\x92\x01\x02")]
    assert raw["plainkeys"] == values["plainkeys"]
    assert raw_decode(raw["tuplekeys"][2]) == [("ext", 2, b"\x92\x01\x02"), "t"]
    loaded = Connection(storage).get_root()["item"]
    for key, value in values.items():
        assert getattr(loaded, key) == value and type(getattr(loaded, key)) is type(value), key
    assert loaded.again[1] is loaded and loaded.again[0] is loaded.other


@pytest.mark.req("OBJ-032")
def test_time_zones_are_offsets_or_zone_keys() -> None:
    paris = dt.datetime(2024, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    fixed = dt.datetime(2024, 7, 1, 12, tzinfo=dt.timezone(-dt.timedelta(hours=3, microseconds=1)))
    storage, item = store(paris=paris, fixed=fixed)
    _name, raw = split_record(storage.load(item._p_oid).data)  # type: ignore[arg-type]
    assert raw_decode(raw["paris"][2])[-1] == "Europe/Paris"
    assert raw_decode(raw["fixed"][2])[-1] == -(3 * 3600 * 10**6 + 1)
    loaded = Connection(storage).get_root()["item"]
    assert loaded.paris == paris and loaded.paris.tzinfo == paris.tzinfo
    assert loaded.fixed == fixed and loaded.fixed.utcoffset() == fixed.utcoffset()


class Custom:
    pass


class MyStr(str):
    pass


@pytest.mark.req("OBJ-035", "OBJ-031")
@pytest.mark.parametrize(
    ("value", "what"),
    [
        (Custom(), "Custom"),
        (MyStr("x"), "MyStr"),
        ({"deep": [Custom()]}, "Custom"),
        (dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1), "CET")), "custom name"),
        (type("Local", (Persistent,), {})(), "inside a function|no import path"),
    ],
)
def test_unsupported_value_names_class_and_attribute(value: Any, what: str) -> None:
    storage = MemoryStorage()
    connection = Connection(storage, serializer="msgspec")
    root = connection.get_root()
    root["ok"] = 1
    connection.commit()
    size = storage.get_size()
    item = Item()
    item.bad = value
    root["item"] = item
    with pytest.raises(SerializationError, match=rf"Item \(oid \d+\).*'bad'.*({what})"):
        connection.commit()
    assert storage.get_size() == size
    connection.abort()


def test_cycle_through_plain_containers_is_a_clear_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    connection = Connection(MemoryStorage(), serializer="msgspec")
    item = Item()
    item.loop = loop
    connection.get_root()["item"] = item
    with pytest.raises(SerializationError, match="cycle"):
        connection.commit()


@pytest.mark.req("OBJ-034")
@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (Encoder().encode({"x": Ext(99, b"")}), "unknown ext type 99"),
        (b"\x81\xa1x", "malformed msgspec record"),
        (b"\x80\x80", "malformed msgspec record"),
        (Encoder().encode({"x": Ext(6, Encoder().encode([2024, 13, 1]))}), "month"),
        (Encoder().encode({"x": Ext(5, Encoder().encode([1]))}), "malformed msgspec record"),
    ],
)
def test_reader_rejects_bad_state(tail: bytes, message: str) -> None:
    data = b"M" + Encoder().encode(f"{MODULE}:Item") + tail
    reader = ObjectReader(lambda oid, cls: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(SerializationError, match=message):
        reader.get_class_and_state(data)


@pytest.mark.req("OBJ-034")
@pytest.mark.parametrize(
    "data",
    [b"M\x01", b"M\xa5abc", b"M" + Encoder().encode("no-colon") + b"\x80"],
)
def test_reader_rejects_bad_class_names(data: bytes) -> None:
    reader = ObjectReader(lambda oid, cls: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(SerializationError):
        reader.get_class_and_state(data)


@pytest.mark.req("OBJ-036")
def test_reader_without_allow_list_imports_nothing() -> None:
    module = "dhruva_test_msgspec_never_imported"
    data = b"M" + Encoder().encode(f"{module}:Thing") + b"\x80"
    reader = ObjectReader(lambda oid, cls: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ForbiddenClassError, match=f"{module}.Thing.*not imported"):
        reader.get_class_and_state(data)
    assert module not in sys.modules


@pytest.mark.req("OBJ-036", "OBJ-020")
@pytest.mark.parametrize(
    ("name", "ext"),
    [
        ("os:system", None),  # a function as the record's class
        ("builtins:dict", None),  # a class, but not persistent
        (f"{MODULE}:Item", (11, [f"{MODULE}:Item", 1])),  # a persistent class as an enum
        (f"{MODULE}:Item", (1, "os:system")),  # a function as a reference's class
        (f"{MODULE}:Item", (11, ["subprocess:Popen", ["true"]])),  # a call, dressed as enum
    ],
)
def test_only_persistent_classes_and_enums_can_be_named(name: str, ext: Any) -> None:
    state: Any = {}
    if ext is not None:
        code, payload = ext
        body = OID1 + payload.encode() if code == 1 else Encoder().encode(payload)
        state = {"x": Ext(code, body)}
    data = b"M" + Encoder().encode(name) + Encoder().encode(state)
    for registry in (None, ClassRegistry(["os", "builtins", "subprocess", MODULE])):
        reader = ObjectReader(lambda oid, cls: None, registry=registry)  # type: ignore[arg-type,return-value]
        with pytest.raises(ForbiddenClassError):
            reader.get_class_and_state(data)


@pytest.mark.req("OBJ-036", "OBJ-020")
def test_allow_list_restricts_msgspec_classes() -> None:
    storage, _item = store(mood=Mood.HAPPY)
    with pytest.raises(ForbiddenClassError, match=rf"{MODULE}\.Item"):
        Connection(storage, allowed_classes=["json"]).get_root()["item"].n  # noqa: B018
    with pytest.raises(ForbiddenClassError, match=rf"{MODULE}\.Mood"):
        Connection(storage, allowed_classes=[Item]).get_root()["item"].mood  # noqa: B018
    loaded = Connection(storage, allowed_classes=[Item, Mood]).get_root()["item"]
    assert loaded.mood is Mood.HAPPY


def test_root_reading_goes_through_the_same_resolution() -> None:
    storage, _ = store()
    data = storage.load(ROOT_OID).data
    assert data[:1] == b"M"
    assert ObjectReader(lambda o, c: None).get_class(data) is PersistentDict  # type: ignore[arg-type,return-value]


@pytest.mark.req("OBJ-030")
def test_spec_example_is_the_vector() -> None:
    spec = (VECTORS.parent.parent.parent / "spec" / "object-encoding.md").read_text()
    block = spec.split("msgspec-record.hex`):", 1)[1].split("```", 2)[1]
    example = bytearray()
    for line in block.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            assert int(fields[0], 16) == len(example)
            example += bytes(int(pair, 16) for pair in fields[1:])
    assert bytes(example) == read_vector(VECTORS, "msgspec-record")[0]
