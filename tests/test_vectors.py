"""The conformance vectors (conformance/vectors/) run through dhruva.

The README there tells an implementer in another language what each file means;
these tests hold dhruva to the same reading, so that the vectors and the
reference implementation cannot drift apart:

* ``file-recovery/``: every valid, torn, damaged, refused and unfinished data
  file, through the journal codec (``journal.scan``) and through FileStorage2
  and FileStorage opened on a copy of the file, read-only, writable and with
  ``repair``; and the folder is exactly what its generator makes;
* ``object-encoding/``: every msgspec record, decoded into the values its
  ``expect`` line spells in the README's JSON forms, and encoded back;
* ``wire/``: every transcript cites only defined requirement IDs, and every
  frame a client sends in a ``malformed-*`` transcript is refused by the codec.

The other folders are run by the tests named in ``VECTOR_FOLDERS``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import importlib.util
import math
import shutil
import struct
import sys
import uuid
import zoneinfo
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pytest
from _vectors import read_vector

from dhruva import journal
from dhruva.error import CorruptionError, FormatError
from dhruva.file_storage import FileStorage
from dhruva.file_storage2 import FileStorage2
from dhruva.utils import int8_to_str

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "conformance" / "vectors"
RECOVERY = VECTORS / "file-recovery"
RECOVERY_NAMES = sorted(p.stem for p in RECOVERY.glob("*.hex"))

# Every folder of conformance/vectors/, with the test module that runs its files.
VECTOR_FOLDERS = {
    "blobs": "tests/test_blob_vectors.py",
    "durus": "tests/test_durus_import.py",
    "file-format": "tests/test_journal.py",
    "file-index": "tests/test_file_index.py",
    "file-recovery": "tests/test_vectors.py",
    "object-encoding": "tests/test_vectors.py",
    "sqlite-storage": "tests/test_sqlite_storage.py",
    "wire": "conformance/test_wire_transcripts.py",
}

OUTCOME_REQUIREMENTS = {
    "valid": {"FMT-001"},
    "torn": {"RCV-001", "RCV-002"},
    "damaged": {"RCV-001", "RCV-003", "RCV-007"},
    "refused": set(),
    "unfinished": {"RCV-006"},
}


def load_generator(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"vectors_{path.parent.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# --- the folders ----------------------------------------------------------------------


def test_every_vector_folder_is_run_and_described() -> None:
    folders = {p.name for p in VECTORS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(VECTOR_FOLDERS)
    readme = (VECTORS / "README.md").read_text()
    for folder, test in VECTOR_FOLDERS.items():
        assert f"`{folder}/`" in readme, f"README.md does not describe {folder}/"
        assert (ROOT / test).exists()
        assert folder in (ROOT / test).read_text(), f"{test} does not read {folder}/"


def test_recovery_vectors_are_what_the_generator_makes() -> None:
    generator = load_generator(RECOVERY / "generate.py")
    assert generator.stale_files() == [], "run conformance/vectors/file-recovery/generate.py"
    assert generator.main(["--check"]) == 0


# --- file-recovery: the journal codec --------------------------------------------------


def recovery_vector(name: str) -> tuple[bytes, dict[str, Any]]:
    data, expect = read_vector(RECOVERY, name)
    assert expect["outcome"] in OUTCOME_REQUIREMENTS, f"{name}: unknown outcome"
    return data, expect


def current_records(storage: Any) -> dict[str, dict[str, Any]]:
    found = {}
    for oid in storage.iter_oids():
        record = storage.load(oid)
        refs = [
            int.from_bytes(record.refs[i : i + 8], "big") for i in range(0, len(record.refs), 8)
        ]
        found[str(int.from_bytes(oid, "big"))] = {"data": record.data.hex(), "refs": refs}
    return found


@pytest.mark.req(
    "RCV-001",
    "RCV-002",
    "RCV-003",
    "RCV-007",
    "FMT-012",
    "FMT-013",
    "RCV-050",
    "RCV-051",
    "RCV-052",
    "RCV-060",
)
@pytest.mark.parametrize("name", RECOVERY_NAMES)
def test_recovery_vector_through_the_codec(name: str) -> None:
    data, expect = recovery_vector(name)
    outcome = expect["outcome"]
    assert OUTCOME_REQUIREMENTS[outcome] <= set(expect["requirements"])
    if outcome == "unfinished":
        assert journal.is_unfinished_header(data)
        return
    if outcome == "refused":
        error = {"FormatError": FormatError, "CorruptionError": CorruptionError}[expect["error"]]
        assert not journal.is_unfinished_header(data)
        with pytest.raises(error) as info:
            journal.decode_file_header(data, name)
        assert type(info.value) is error
        assert info.value.offset == expect["offset"]
        assert info.value.code == expect["reason"]
        return
    journal.decode_file_header(data, name)
    start = journal.FILE_HEADER_SIZE
    if outcome == "damaged":
        with pytest.raises(CorruptionError) as info:
            journal.scan(data, start, name)
        assert info.value.offset == expect["offset"]
        assert info.value.code == expect["reason"]
        result = journal.scan(data, start, name, repair=True)
        assert result.corrupt
    else:
        result = journal.scan(data, start, name)
        assert not result.corrupt
    assert [span.tid for span in result.spans] == expect["tids"]
    assert result.end == expect["end"]
    if outcome == "valid":
        assert result.tail is None
    else:
        assert result.tail == (expect["offset"], len(data))
        assert result.tail_reason
        assert result.tail_code == expect["reason"]


# --- file-recovery: the storages, on disk ---------------------------------------------


@pytest.fixture(params=[FileStorage2, FileStorage], ids=["FileStorage2", "FileStorage"])
def storage_class(request: pytest.FixtureRequest) -> type[Any]:
    cls: type[Any] = request.param
    return cls


def set_aside(path: Path) -> bytes | None:
    tail = Path(f"{path}.tr0")
    return tail.read_bytes() if tail.exists() else None


@pytest.mark.req("RCV-002", "RCV-003", "RCV-004", "RCV-005", "RCV-006", "RCV-007", "FMT-014")
@pytest.mark.parametrize("name", RECOVERY_NAMES)
def test_recovery_vector_through_the_storages(
    name: str, storage_class: type[Any], tmp_path: Path
) -> None:
    data, expect = recovery_vector(name)
    outcome = expect["outcome"]
    path = tmp_path / "vector.dhruva"
    path.write_bytes(data)

    if outcome in ("refused", "unfinished"):
        with pytest.raises((FormatError, CorruptionError)):
            storage_class(str(path), readonly=True)
        assert path.read_bytes() == data
        if outcome == "refused":
            error = {"FormatError": FormatError, "CorruptionError": CorruptionError}[
                expect["error"]
            ]
            with pytest.raises(error):
                storage_class(str(path))
            assert path.read_bytes() == data, "a refused file is never overwritten"
            return
        storage = storage_class(str(path))
        storage.close()
        assert journal.decode_file_header(path.read_bytes()[:64], name)
        assert path.stat().st_size == journal.FILE_HEADER_SIZE
        assert set_aside(path) == (data or None)
        return

    if outcome == "damaged":
        for readonly in (True, False):
            with pytest.raises(CorruptionError) as info:
                storage_class(str(path), readonly=readonly)
            assert info.value.offset == expect["offset"]
            assert info.value.code == expect["reason"]
            assert path.read_bytes() == data
        storage = storage_class(str(path), repair=True)
    else:
        readonly = storage_class(str(path), readonly=True)
        try:
            assert current_records(readonly) == expect["current"]
        finally:
            readonly.close()
        assert path.read_bytes() == data, "a read-only open changes nothing (RCV-004)"
        storage = storage_class(str(path))
    try:
        assert current_records(storage) == expect["current"]
    finally:
        storage.close()
    assert path.read_bytes()[: expect["end"]] == data[: expect["end"]]
    if outcome == "valid":
        # [RCV-060] Free space after the last transaction is kept as it is.
        assert path.read_bytes() == data, "a writable open of a valid file writes nothing"
        assert set_aside(path) is None
    else:
        assert path.stat().st_size == expect["end"]
        assert set_aside(path) == data[expect["offset"] :]
    # The store takes commits after recovery, and they survive a reopen.
    storage = storage_class(str(path))
    try:
        storage.begin()
        storage.store(int8_to_str(9), b"after", b"")
        storage.end()
    finally:
        storage.close()
    storage = storage_class(str(path), readonly=True)
    try:
        assert storage.load(int8_to_str(9)).data == b"after"
    finally:
        storage.close()
    shutil.rmtree(tmp_path, ignore_errors=True)


# --- object-encoding: the JSON forms of the README, read independently -----------------

OBJECT_ENCODING = VECTORS / "object-encoding"
MSGSPEC_VECTORS = ["msgspec-record", "msgspec-values"]
TAGS = {
    "int", "float", "bytes", "bytearray", "tuple", "set", "frozenset", "datetime", "date",
    "time", "timedelta", "decimal", "uuid", "enum", "complex", "ref", "map", "dict",
}  # fmt: skip


class Ref(NamedTuple):
    """A persistent reference as a decoder sees it: the oid and the class named."""

    oid: int
    class_name: str


def _parse_zone(text: str) -> tuple[str, dt.tzinfo | None]:
    """Split ``clock[zone]`` (README grammar) into the clock text and its tzinfo."""
    if text.endswith("]"):
        clock, _, key = text[:-1].partition("[")
        return clock, zoneinfo.ZoneInfo(key)
    for sign in "+-":
        if sign in text:
            clock, _, offset = text.partition(sign)
            hh, mm, *rest = offset.split(":")
            seconds = float(rest[0]) if rest else 0.0
            whole, micro = divmod(round(seconds * 1_000_000), 1_000_000)
            delta = dt.timedelta(hours=int(hh), minutes=int(mm), seconds=whole, microseconds=micro)
            return clock, dt.timezone(delta if sign == "+" else -delta)
    return text, None


def _parse_clock(text: str) -> dict[str, int]:
    hh, mm, ss = text.split(":")
    second, _, fraction = ss.partition(".")
    assert not fraction or len(fraction) == 6, f"{text}: a fraction has six digits"
    return {"hour": int(hh), "minute": int(mm), "second": int(second),
            "microsecond": int(fraction or 0)}  # fmt: skip


def from_json(value: Any, ref: Any) -> Any:
    """The value a JSON form stands for; ``ref(Ref)`` makes a persistent reference."""
    if isinstance(value, list):
        return [from_json(v, ref) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or next(iter(value)) not in TAGS:
        return {k: from_json(v, ref) for k, v in value.items()}
    ((tag, body),) = value.items()
    if tag == "int":
        return int(body)
    if tag == "float":
        return float(body)
    if tag in ("bytes", "bytearray"):
        return bytes.fromhex(body) if tag == "bytes" else bytearray.fromhex(body)
    if tag in ("tuple", "set", "frozenset"):
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](from_json(body, ref))
    if tag in ("datetime", "time"):
        text, _, fold = body.partition(";")
        assert fold in ("", "fold=1")
        if tag == "datetime":
            date, _, text = text.partition("T")
            year, month, day = (int(part) for part in date.split("-"))
        clock, tz = _parse_zone(text)
        fields = {**_parse_clock(clock), "tzinfo": tz, "fold": 1 if fold else 0}
        return dt.datetime(year, month, day, **fields) if tag == "datetime" else dt.time(**fields)
    if tag == "date":
        return dt.date.fromisoformat(body)
    if tag == "timedelta":
        days, seconds, microseconds = body
        return dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)
    if tag == "decimal":
        return decimal.Decimal(body)
    if tag == "uuid":
        return uuid.UUID(body)
    if tag == "enum":
        name, member = body
        module, _, qualname = name.partition(":")
        cls = getattr(importlib.import_module(module), qualname)
        return cls(from_json(member, ref))
    if tag == "complex":
        return complex(*from_json(body, ref))
    if tag == "ref":
        return ref(Ref(*body))
    pairs = [(from_json(k, ref), from_json(v, ref)) for k, v in body]
    return dict(pairs)


def same(a: Any, b: Any) -> bool:
    """Equality that also tells -0.0 from 0.0, matches NaN, and compares zones and fold."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, dt.datetime | dt.time):
        return (
            a.replace(tzinfo=None, fold=0) == b.replace(tzinfo=None, fold=0)
            and a.tzinfo == b.tzinfo
            and a.fold == b.fold
        )
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    return bool(a == b)


@pytest.mark.req("OBJ-030", "OBJ-031", "OBJ-032", "OBJ-033", "OBJ-037")
@pytest.mark.parametrize("name", MSGSPEC_VECTORS)
def test_msgspec_vector_decodes_to_its_json_forms(name: str) -> None:
    pytest.importorskip("msgspec", reason="msgspec is not installed")
    from dhruva.class_registry import ClassRegistry
    from dhruva.serialize import ObjectReader
    from dhruva.serialize_msgspec import MsgspecSerializer, class_name

    data, expect = read_vector(OBJECT_ENCODING, name)
    oids: dict[int, int] = {}

    def ghost_class(ref: Ref) -> type:
        module, _, qualname = ref.class_name.partition(":")
        cls: type = getattr(importlib.import_module(module), qualname)
        return cls

    def make_object(ref: Ref) -> Any:
        obj = ghost_class(ref)()
        oids[id(obj)] = ref.oid
        return obj

    written: list[int] = []

    def reference(obj: Any) -> tuple[bytes, type]:
        written.append(oids[id(obj)])
        return int8_to_str(oids[id(obj)]), type(obj)._p_class

    registry = ClassRegistry(["http.HTTPStatus"])
    cls = ghost_class(Ref(0, expect["class"]))
    assert class_name(cls) == expect["class"]
    # The writer, given the values the JSON forms stand for, writes these bytes.
    encoded = MsgspecSerializer().encode(cls, from_json(expect["state"], make_object), reference)
    assert encoded == data
    assert written == expect["refs"]

    def get_ghost(oid: bytes, ghost: type) -> Ref:
        return Ref(int.from_bytes(oid, "big"), class_name(ghost))

    # The reader, given these bytes, returns exactly those values.
    reader = ObjectReader(get_ghost, registry=registry)  # type: ignore[arg-type]
    decoded_class, decoded = reader.get_class_and_state(data)
    assert decoded_class is cls
    assert same(decoded, from_json(expect["state"], lambda ref: ref)), f"{name}: {decoded!r}"


def test_msgspec_values_are_what_the_generator_makes() -> None:
    pytest.importorskip("msgspec", reason="msgspec is not installed")
    generator = load_generator(OBJECT_ENCODING / "generate.py")
    assert generator.main(["--check"]) == 0, "run conformance/vectors/object-encoding/generate.py"


# --- pickle records: the class name from the opcode subset of object-encoding.md -------


def pickle_class_name(data: bytes) -> tuple[str, int]:
    """Read a ``P`` record's class pickle with only the opcodes the spec lists.

    Returns ``module:qualname`` and the offset where the state pickle starts.
    """
    assert data[:1] == b"P"
    position, strings = 1, []
    while True:
        op = data[position]
        position += 1
        if op == 0x80:  # PROTO
            position += 1
        elif op == 0x95:  # FRAME
            position += 8
        elif op == 0x8C:  # SHORT_BINUNICODE
            length = data[position]
            strings.append(data[position + 1 : position + 1 + length].decode())
            position += 1 + length
        elif op == 0x58:  # BINUNICODE
            length = int.from_bytes(data[position : position + 4], "little")
            strings.append(data[position + 4 : position + 4 + length].decode())
            position += 4 + length
        elif op == 0x94:  # MEMOIZE
            pass
        elif op in (0x71, 0x72):  # BINPUT, LONG_BINPUT
            position += 1 if op == 0x71 else 4
        elif op == 0x93:  # STACK_GLOBAL
            module, qualname = strings[-2:]
            strings.append(f"{module}:{qualname}")
        elif op == 0x63:  # GLOBAL
            end = data.index(b"\n", data.index(b"\n", position) + 1)
            module, qualname = data[position:end].decode().split("\n")
            strings.append(f"{module}:{qualname}")
            position = end + 1
        elif op == 0x2E:  # STOP
            return strings[-1], position
        else:
            raise AssertionError(f"opcode 0x{op:02x} is not in the spec's subset")


@pytest.mark.req("OBJ-002", "OBJ-005")
def test_pickle_class_name_from_the_opcode_subset(tmp_path: Path) -> None:
    from dhruva.connection import Connection
    from dhruva.persistent_dict import PersistentDict
    from dhruva.persistent_list import PersistentList
    from dhruva.persistent_set import PersistentSet
    from dhruva.storage import MemoryStorage

    storage = MemoryStorage()
    connection = Connection(storage)
    root = connection.get_root()
    root["l"], root["s"] = PersistentList([1]), PersistentSet({2})
    connection.commit()
    names = {}
    for oid in storage.iter_oids():
        record = storage.load(oid)
        name, state_start = pickle_class_name(record.data)
        assert record.data[state_start] == 0x80, "the state pickle starts after STOP"
        names[name] = record
    assert set(names) == {
        "dhruva.persistent_dict:PersistentDict",
        "dhruva.persistent_list:PersistentList",
        "dhruva.persistent_set:PersistentSet",
    }
    assert len(names["dhruva.persistent_dict:PersistentDict"].refs) == 16
    assert isinstance(root, PersistentDict)


def test_every_spec_chapter_has_a_status_line() -> None:
    """conventions.md, "Status lines": the third line of every chapter."""
    for path in sorted((ROOT / "spec").glob("*.md")):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "", path.name
        assert lines[2].startswith(("Status: stable", "Status: draft", "Status: not a format")), (
            f"{path.name} has no status line"
        )
