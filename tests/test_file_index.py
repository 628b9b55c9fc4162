"""Tests of the FileStorage on-disk index (spec/file-index.md, prefix IDX)."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import dhruva_conformance
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dhruva import file_index, fileio
from dhruva.error import ReadOnlyError
from dhruva.file_index import (
    ADDED_FLAG,
    ENTRIES_OFFSET,
    META,
    META_SLOT_OFFSETS,
    DiskIndex,
    Meta,
    decode_meta,
    encode_meta,
)

FILE_ID = bytes(range(16))
OTHER_ID = bytes(range(1, 17))
VECTOR = Path(dhruva_conformance.__file__).parent / "vectors" / "file-index" / "example.json"
SPEC = Path(__file__).resolve().parent.parent / "spec" / "file-index.md"


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "data.dhruva.index")


def _open(path: str, readonly: bool = False, file_id: bytes = FILE_ID) -> DiskIndex:
    index = DiskIndex.open(path, file_id, readonly)
    assert index is not None
    return index


def _create(path: str, entries: dict[int, int] | None = None, covered: int = 1000) -> DiskIndex:
    entries = {0: 104, 1: 150, 2: 190} if entries is None else entries
    max_oid = max(entries, default=-1)
    return DiskIndex.create(path, FILE_ID, entries, covered, 7, 0xABCDEF01, max_oid)


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _read(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _rewrite_header(path: str, **fields: Any) -> None:
    """Rewrite header fields by name, with a correct crc."""
    names = ["magic", "major", "minor", "flags", "file_id", "entry_size", "entries_offset"]
    values = dict(zip(names, file_index.HEADER.unpack(_read(path, 0, 64))[:7], strict=True))
    values.update(fields)
    body = file_index.HEADER.pack(*[values[n] for n in names], b"", 0)[:60]
    _patch(path, 0, body + struct.pack(">I", zlib.crc32(body)))


# --- round trip and layout -----------------------------------------------------------


@pytest.mark.req("IDX-001", "IDX-003", "IDX-010", "IDX-011", "IDX-020", "IDX-023", "IDX-032")
def test_create_then_open_round_trips(path: str) -> None:
    _create(path, {0: 104, 5: 300, 9: 500}, covered=600).close()
    with _open(path, readonly=True) as index:
        assert (index.covered_offset, index.last_tid, index.last_trailer_crc) == (
            600,
            7,
            0xABCDEF01,
        )
        assert index.max_oid == 9
        assert index.entry_count == 3
        assert [index.lookup(i) for i in range(11)] == [104, 0, 0, 0, 0, 300, 0, 0, 0, 500, 0]
        assert index.lookup(-1) == 0
        assert index.lookup(10**9) == 0
        assert list(index.iter_entries()) == [(0, 104), (5, 300), (9, 500)]
    header = _read(path, 0, 64)
    assert header[:8] == b"\x89DHRIDX\n"
    assert struct.unpack(">HHI", header[8:16]) == (1, 0, 0)
    assert header[16:32] == FILE_ID
    assert struct.unpack(">II", header[32:40]) == (8, 12288)
    assert struct.unpack(">I", header[60:64])[0] == zlib.crc32(header[:60])
    slot_a = decode_meta(_read(path, META_SLOT_OFFSETS[0], 64))
    assert slot_a == Meta(1, 600, 7, 9, 3, 0xABCDEF01)
    assert _read(path, META_SLOT_OFFSETS[0] + 24, 8) == struct.pack(">Q", 10)  # max_oid + 1
    assert _read(path, ENTRIES_OFFSET + 5 * 8, 8) == struct.pack(">Q", 300)
    assert not os.path.exists(path + ".tmp")


@pytest.mark.req("IDX-011", "IDX-023")
def test_empty_index_has_max_oid_minus_one(path: str) -> None:
    DiskIndex.create(path, FILE_ID, {}, 64, 0, 0, -1).close()
    with _open(path) as index:
        assert (index.max_oid, index.entry_count, index.covered_offset) == (-1, 0, 64)
        assert list(index.iter_entries()) == []
        assert _read(path, META_SLOT_OFFSETS[0] + 24, 8) == bytes(8)


@pytest.mark.req("IDX-032")
def test_create_replaces_an_existing_index_and_ignores_a_stale_temp_file(path: str) -> None:
    _create(path, {0: 104}).close()
    Path(path + ".tmp").write_bytes(b"left by a crash")
    _create(path, {3: 400}).close()
    with _open(path) as index:
        assert list(index.iter_entries()) == [(3, 400)]
    assert not os.path.exists(path + ".tmp")


def test_create_rejects_inconsistent_arguments(path: str) -> None:
    with pytest.raises(ValueError, match="max_oid"):
        DiskIndex.create(path, FILE_ID, {5: 100}, 1000, 1, 0, 4)
    with pytest.raises(ValueError, match="covered_offset"):
        DiskIndex.create(path, FILE_ID, {0: 1000}, 1000, 1, 0, 0)
    with pytest.raises(ValueError, match="indexable range"):
        DiskIndex.create(path, FILE_ID, {}, 1000, 1, 0, file_index.MAX_OID + 1)
    with pytest.raises(ValueError, match="file_id"):
        DiskIndex.create(path, b"short", {}, 1000, 1, 0, -1)


# --- lazy open -------------------------------------------------------------------------


@pytest.mark.req("IDX-021", "IDX-004")
def test_open_does_not_read_the_entry_array(path: str) -> None:
    """An index claiming 2**34 oids (a 128 GiB sparse file) opens and answers at once.

    An open that read or copied the entry array would run out of memory or
    take minutes here.
    """
    _create(path, {0: 104, 1: 150}).close()
    max_oid = (1 << 34) - 1
    try:
        os.truncate(path, ENTRIES_OFFSET + (max_oid + 1) * 8)
    except OSError as error:  # pragma: no cover - depends on the file system
        pytest.skip(f"the file system cannot hold a 128 GiB sparse file: {error}")
    _patch(path, META_SLOT_OFFSETS[0], encode_meta(Meta(1, 1000, 7, max_oid, 2, 0xABCDEF01)))
    with _open(path) as index:
        assert index.max_oid == max_oid
        assert index.lookup(1) == 150
        assert index.lookup(max_oid) == 0
        index.checkpoint({max_oid: 1200}, 1300, 8, 1, max_oid)
        assert index.lookup(max_oid) == 1200
        assert index.entry_count == 3
    with _open(path, readonly=True) as index:
        assert index.lookup(max_oid) == 1200


# --- checkpoint --------------------------------------------------------------------------


@pytest.mark.req("IDX-010", "IDX-030", "IDX-013", "IDX-035")
def test_reopen_after_checkpoints_alternates_slots(path: str) -> None:
    with _create(path) as index:
        index.checkpoint({2: 1100, 3: 1200}, 1300, 8, 0x11, 3)
        assert (index.covered_offset, index.max_oid, index.entry_count) == (1300, 3, 4)
    with _open(path) as index:
        assert (index.covered_offset, index.last_tid, index.last_trailer_crc) == (1300, 8, 0x11)
        assert list(index.iter_entries()) == [(0, 104), (1, 150), (2, 1100), (3, 1200)]
        index.checkpoint({0: 1400}, 1500, 9, 0x22, 3)
    slots = [decode_meta(_read(path, start, 64)) for start in META_SLOT_OFFSETS]
    assert [meta.seq if meta else None for meta in slots] == [3, 2]
    # [IDX-035] oid 3 was new at its checkpoint; oid 2 already had an entry.
    assert _read(path, ENTRIES_OFFSET + 3 * 8, 8) == struct.pack(">Q", ADDED_FLAG | 1200)
    assert _read(path, ENTRIES_OFFSET + 2 * 8, 8) == struct.pack(">Q", 1100)
    with _open(path, readonly=True) as index:
        assert (index.covered_offset, index.entry_count) == (1500, 4)
        assert index.lookup(0) == 1400
        assert index.lookup(3) == 1200  # below covered_offset: the flag is ignored


@pytest.mark.req("IDX-035")
@pytest.mark.parametrize("base", [2000, (1 << 56) - 64, 1 << 56, 1 << 60])
def test_a_checkpoint_of_oids_new_to_the_index_flags_each_entry_added(
    path: str, base: int
) -> None:
    # A bulk insert's run of new oids sets ADDED_FLAG by one slice of the top
    # bytes while every offset leaves that byte free; above it, word by word.
    # Both must write offset | ADDED_FLAG.
    offsets = {oid: base + 10 * oid for oid in range(3, 40)}  # _create has oids 0..2
    covered = base + 10 * 40
    with _create(path) as index:
        index.checkpoint(offsets, covered, 8, 0x11, 39)
        assert index.entry_count == 3 + len(offsets)
    raw = _read(path, ENTRIES_OFFSET + 3 * 8, 8 * len(offsets))
    assert struct.unpack(f">{len(offsets)}Q", raw) == tuple(
        offset | ADDED_FLAG for offset in offsets.values()
    )
    with _open(path, readonly=True) as index:
        assert [index.lookup(oid) for oid in offsets] == list(offsets.values())


@pytest.mark.req("IDX-030")
def test_checkpoint_without_changes_writes_nothing(path: str) -> None:
    with _create(path) as index:
        before = Path(path).read_bytes()
        index.checkpoint({}, 1000, 7, 0xABCDEF01, 2)
        assert Path(path).read_bytes() == before
        index.checkpoint({}, 1100, 8, 5, 2)  # covered moved on: only a new meta
        assert index.covered_offset == 1100
    meta_b = decode_meta(_read(path, META_SLOT_OFFSETS[1], 64))
    assert meta_b is not None and meta_b.seq == 2


@pytest.mark.req("IDX-031")
def test_checkpoint_refuses_entries_outside_the_tail(path: str) -> None:
    with _create(path) as index:
        with pytest.raises(ValueError, match="outside"):
            index.checkpoint({0: 999}, 2000, 8, 0, 2)  # below covered_offset 1000
        with pytest.raises(ValueError, match="outside"):
            index.checkpoint({0: 2000}, 2000, 8, 0, 2)  # not below the new covered
        with pytest.raises(ValueError, match="outside"):
            index.checkpoint({0: 0}, 2000, 8, 0, 2)  # zero: only create removes oids
        with pytest.raises(ValueError, match="max_oid"):
            index.checkpoint({7: 1500}, 2000, 8, 0, 6)
        with pytest.raises(ValueError, match="below"):
            index.checkpoint({}, 900, 8, 0, 2)
        assert Path(path).read_bytes()[ENTRIES_OFFSET : ENTRIES_OFFSET + 8] == struct.pack(
            ">Q", 104
        )


def test_checkpoint_on_a_read_only_index_raises(path: str) -> None:
    _create(path).close()
    with _open(path, readonly=True) as index, pytest.raises(ReadOnlyError):
        index.checkpoint({0: 1100}, 1200, 8, 0, 2)


@pytest.mark.req("IDX-004")
def test_growth_in_large_steps_keeps_entries(path: str) -> None:
    with _create(path) as index:
        assert index.capacity == 512
        index.checkpoint({600: 1100}, 1200, 8, 0, 600)
        grown = index.capacity
        assert grown >= 512 + file_index.GROWTH_MIN_ENTRIES
        assert grown % 512 == 0
        assert os.path.getsize(path) == ENTRIES_OFFSET + 8 * grown
        index.checkpoint({601: 1300}, 1400, 9, 0, 601)
        assert index.capacity == grown  # no remap for a small step
        index.checkpoint({grown + 5: 1500}, 1600, 10, 0, grown + 5)
        assert index.capacity >= grown + grown // 2
        assert index.lookup(1) == 150
    with _open(path) as index:
        assert list(index.iter_entries()) == [
            (0, 104),
            (1, 150),
            (2, 190),
            (600, 1100),
            (601, 1300),
            (grown + 5, 1500),
        ]
        assert index.entry_count == 6


# --- crashes and damage --------------------------------------------------------------------


def _crash_before_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next checkpoint stop after its entries are written and fsynced."""

    def refuse(meta: Meta) -> bytes:
        raise OSError("simulated crash before the meta slot is written")

    monkeypatch.setattr(file_index, "encode_meta", refuse)


@pytest.mark.req("IDX-022", "IDX-023", "IDX-030", "IDX-034", "IDX-035")
def test_crash_between_entries_and_meta_keeps_the_old_meta(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _create(path) as index:
        index.checkpoint({1: 1100}, 1200, 8, 0x11, 2)  # oid 1 rewritten: leftover-free
    with _open(path) as index, monkeypatch.context() as patch:
        _crash_before_meta(patch)
        with pytest.raises(OSError, match="simulated crash"):
            # oid 2 existed (offset 190); oid 9 is new.
            index.checkpoint({2: 1300, 9: 1400}, 1500, 9, 0x22, 9)
    with _open(path) as index:
        # The old meta is current; the tail after 1200 must be rescanned.
        assert (index.covered_offset, index.last_tid, index.max_oid) == (1200, 8, 2)
        assert index.entry_count == 3
        assert index.lookup(2) == 1300  # a leftover of an oid that had an entry
        assert index.lookup(9) == 0  # [IDX-022] a leftover that added the oid
        listed = dict(index.iter_entries())
        assert listed == {0: 104, 1: 1100, 2: 1300}
        assert len(listed) == index.entry_count
        # [IDX-034] The next checkpoint covers the same tail and repairs everything.
        index.checkpoint({2: 1300, 9: 1400}, 1500, 9, 0x22, 9)
        assert index.entry_count == 4
    with _open(path) as index:
        assert dict(index.iter_entries()) == {0: 104, 1: 1100, 2: 1300, 9: 1400}
        assert index.entry_count == 4


@pytest.mark.req("IDX-012", "IDX-013")
def test_torn_meta_slot_falls_back_to_the_other(path: str) -> None:
    with _create(path) as index:
        index.checkpoint({2: 1100}, 1200, 8, 0x11, 2)
    slot_b = META_SLOT_OFFSETS[1]
    _patch(path, slot_b + 10, b"\xff")  # a torn write of slot B
    with _open(path) as index:
        assert (index.covered_offset, index.last_tid) == (1000, 7)
        # The next checkpoint overwrites the torn slot, not the current one.
        index.checkpoint({2: 1100}, 1200, 8, 0x11, 2)
    assert decode_meta(_read(path, slot_b, 64)) == Meta(2, 1200, 8, 2, 3, 0x11)
    assert decode_meta(_read(path, META_SLOT_OFFSETS[0], 64)) == Meta(1, 1000, 7, 2, 3, 0xABCDEF01)


@pytest.mark.req("IDX-012", "IDX-013", "IDX-042")
def test_both_meta_slots_invalid_means_no_index(path: str) -> None:
    _create(path).close()
    _patch(path, META_SLOT_OFFSETS[0] + 3, b"\x01")
    assert DiskIndex.open(path, FILE_ID, readonly=True) is None


@pytest.mark.req("IDX-012")
def test_a_slot_with_seq_zero_is_invalid() -> None:
    assert decode_meta(bytes(META.size)) is None
    assert decode_meta(encode_meta(Meta(0, 64, 0, -1, 0, 0))) is None
    assert decode_meta(encode_meta(Meta(5, 64, 0, -1, 0, 0))) == Meta(5, 64, 0, -1, 0, 0)


@pytest.mark.req("IDX-013")
def test_two_valid_slots_with_equal_seq_mean_no_index(path: str) -> None:
    _create(path).close()
    _patch(path, META_SLOT_OFFSETS[1], _read(path, META_SLOT_OFFSETS[0], 64))
    assert DiskIndex.open(path, FILE_ID, readonly=False) is None


@pytest.mark.req("IDX-014", "IDX-042")
def test_index_of_another_data_file_is_not_used(path: str) -> None:
    _create(path).close()
    assert DiskIndex.open(path, OTHER_ID, readonly=False) is None
    assert DiskIndex.open(path, OTHER_ID, readonly=True) is None


@pytest.mark.req("IDX-041", "IDX-042")
def test_missing_index_means_no_index(path: str) -> None:
    assert DiskIndex.open(path, FILE_ID, readonly=True) is None
    assert DiskIndex.open(path, FILE_ID, readonly=False) is None


@pytest.mark.req("IDX-002", "IDX-042")
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: _patch(p, 0, b"\x89DHRUVA\n"), id="data-file-magic"),
        pytest.param(lambda p: _patch(p, 20, b"\x00\x00"), id="header-crc"),
        pytest.param(lambda p: Path(p).write_bytes(b""), id="empty"),
        pytest.param(lambda p: Path(p).write_bytes(b"x" * 20000), id="not-an-index"),
        pytest.param(lambda p: os.truncate(p, ENTRIES_OFFSET - 1), id="short-header"),
    ],
)
def test_damaged_header_means_no_index(path: str, damage: Any) -> None:
    _create(path).close()
    damage(path)
    assert DiskIndex.open(path, FILE_ID, readonly=True) is None
    assert DiskIndex.open(path, FILE_ID, readonly=False) is None


@pytest.mark.req("IDX-005", "IDX-042")
@pytest.mark.parametrize(
    "fields", [{"major": 2}, {"major": 0}, {"entry_size": 16}, {"entries_offset": 4096}]
)
def test_unknown_version_or_geometry_means_no_index(path: str, fields: dict[str, int]) -> None:
    _create(path).close()
    _rewrite_header(path, **fields)
    assert DiskIndex.open(path, FILE_ID, readonly=True) is None
    assert DiskIndex.open(path, FILE_ID, readonly=False) is None


@pytest.mark.req("IDX-005")
def test_higher_minor_version_is_read_only(path: str) -> None:
    _create(path).close()
    _rewrite_header(path, minor=3)
    with _open(path, readonly=True) as index:
        assert index.lookup(2) == 190
    assert DiskIndex.open(path, FILE_ID, readonly=False) is None


@pytest.mark.req("IDX-004", "IDX-042")
def test_file_shorter_than_max_oid_means_no_index(path: str) -> None:
    _create(path, {i: 100 + i for i in range(600)}).close()
    os.truncate(path, ENTRIES_OFFSET + 8 * 512)
    assert DiskIndex.open(path, FILE_ID, readonly=True) is None


@pytest.mark.req("IDX-033", "IDX-041")
def test_discard_deletes_the_index(path: str) -> None:
    _create(path).close()
    DiskIndex.discard(path)
    assert not os.path.exists(path)
    assert DiskIndex.open(path, FILE_ID, readonly=False) is None
    DiskIndex.discard(path)  # deleting a missing index is harmless


def test_close_twice_is_harmless_and_closed_index_refuses_checkpoint(path: str) -> None:
    index = _create(path)
    index.close()
    index.close()
    with pytest.raises(ValueError, match="closed"):
        index.checkpoint({0: 1100}, 1200, 8, 0, 2)


# --- the spec example and its vector ---------------------------------------------------


def _vector() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(VECTOR.read_text())
    return result


def _vector_bytes(vector: dict[str, Any]) -> bytes:
    data = bytearray(vector["size"])
    for chunk in vector["chunks"]:
        raw = bytes.fromhex(chunk["hex"])
        data[chunk["offset"] : chunk["offset"] + len(raw)] = raw
    return bytes(data)


def _replay(path: str, vector: dict[str, Any]) -> None:
    index: DiskIndex | None = None
    for step in vector["steps"]:
        entries = {int(oid): offset for oid, offset in step["entries"].items()}
        args = (step["covered_offset"], step["last_tid"], step["last_trailer_crc"])
        if step["op"] == "create":
            file_id = bytes.fromhex(step["file_id"])
            index = DiskIndex.create(path, file_id, entries, *args, step["max_oid"])
        else:
            assert index is not None
            index.checkpoint(entries, *args, step["max_oid"])
    assert index is not None
    index.close()


@pytest.mark.req("IDX-001", "IDX-003", "IDX-010", "IDX-011", "IDX-030", "IDX-032", "IDX-035")
def test_writer_produces_the_vector_bytes(path: str) -> None:
    vector = _vector()
    _replay(path, vector)
    assert Path(path).read_bytes() == _vector_bytes(vector)


@pytest.mark.req("IDX-013", "IDX-020", "IDX-022", "IDX-023")
def test_reader_decodes_the_vector(path: str) -> None:
    vector = _vector()
    Path(path).write_bytes(_vector_bytes(vector))
    expect = vector["expect"]
    file_id = bytes.fromhex(vector["steps"][0]["file_id"])
    index = DiskIndex.open(path, file_id, readonly=True)
    assert index is not None
    with index:
        assert index.covered_offset == expect["covered_offset"]
        assert index.last_tid == expect["last_tid"]
        assert index.last_trailer_crc == expect["last_trailer_crc"]
        assert index.max_oid == expect["max_oid"]
        assert index.entry_count == expect["entry_count"]
        for oid, offset in expect["lookups"].items():
            assert index.lookup(int(oid)) == offset
    current = decode_meta(_read(path, META_SLOT_OFFSETS[expect["current_slot"]], 64))
    assert current is not None and current.seq == expect["seq"]


def _spec_hex_dump() -> bytes:
    """Decode the hex dump of the spec's Example section (``*`` = zero rows)."""
    section = SPEC.read_text().split("## Example", 1)[1]
    block = section.split("```text", 1)[1].split("```", 1)[0]
    rows: dict[int, bytes] = {}
    end = 0
    for line in block.strip().splitlines():
        code = line.split("#", 1)[0].strip()  # conventions.md: offset, byte pairs, comment
        match = re.fullmatch(r"([0-9a-f]{4,})  ((?:[0-9a-f]{2} ){15}[0-9a-f]{2})", code)
        if match:
            rows[int(match[1], 16)] = bytes.fromhex(match[2].replace(" ", ""))
        elif code != "*":
            end = int(code, 16)
    data = bytearray(end)
    for offset, row in rows.items():
        data[offset : offset + 16] = row
    return bytes(data)


def test_spec_example_matches_the_vector() -> None:
    assert _spec_hex_dump() == _vector_bytes(_vector())


# --- model-based: checkpoints, crashes and reopens against a dict -------------------------


class IndexMachine(RuleBasedStateMachine):
    """Drive a DiskIndex like FileStorage does, over a simulated data file.

    The data file is a list of (offset, oid) records in file order; the index
    covers a prefix and the tail is "rescanned" in memory.  After every step
    the merged view must equal the model, and the oid count derived from
    entry_count must equal the model's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="dhruva-idx-")
        self.path = os.path.join(self.directory, "data.dhruva.index")
        self.records: list[tuple[int, int]] = []
        self.end = 64
        self.model: dict[int, int] = {}
        self.index: DiskIndex | None = None
        self.tail: dict[int, int] = {}

    @initialize()
    def start(self) -> None:
        self.index = DiskIndex.create(self.path, FILE_ID, {}, 64, 0, 0, -1)

    def _disk(self) -> DiskIndex:
        assert self.index is not None
        return self.index

    @rule(oids=st.lists(st.integers(0, 700), min_size=1, max_size=6, unique=True))
    def commit(self, oids: list[int]) -> None:
        self.end += 40
        for oid in oids:
            self.records.append((self.end, oid))
            self.model[oid] = self.end
            self.tail[oid] = self.end
            self.end += 30
        self.end += 16

    def _checkpoint_args(self) -> tuple[dict[int, int], int, int, int, int]:
        disk = self._disk()
        max_oid = max([disk.max_oid, *self.tail])
        return dict(self.tail), self.end, len(self.records), self.end & 0xFFFF, max_oid

    @rule()
    def checkpoint(self) -> None:
        self._disk().checkpoint(*self._checkpoint_args())
        self.tail.clear()

    @rule(data=st.data(), tear_slot=st.booleans())
    def crash_during_checkpoint(self, data: st.DataObject, tear_slot: bool) -> None:
        disk = self._disk()
        before = Path(self.path).read_bytes()
        old_size = len(before)
        args = self._checkpoint_args()
        real_encode = file_index.encode_meta

        def refuse(meta: Meta) -> bytes:
            raise OSError("simulated crash")

        file_index.encode_meta = refuse  # type: ignore[assignment]
        try:
            if args[0]:
                with pytest.raises(OSError, match="simulated crash"):
                    disk.checkpoint(*args)
        finally:
            file_index.encode_meta = real_encode
        disk.close()
        # Only some entry writes reached the disk: put a chosen subset back.
        for oid in args[0]:
            position = ENTRIES_OFFSET + 8 * oid
            if position < old_size and data.draw(st.booleans(), label=f"lose {oid}"):
                _patch(self.path, position, before[position : position + 8])
        grown = os.path.getsize(self.path) > old_size
        if grown and data.draw(st.booleans(), label="lose growth"):
            os.truncate(self.path, old_size)
        if tear_slot:
            slot = 1 - self._current_slot()
            _patch(self.path, META_SLOT_OFFSETS[slot] + 8, b"\x5a\x5a")
        self.index = None
        self.reopen()

    def _current_slot(self) -> int:
        metas = [decode_meta(_read(self.path, start, 64)) for start in META_SLOT_OFFSETS]
        seqs = [meta.seq if meta else -1 for meta in metas]
        return 0 if seqs[0] > seqs[1] else 1

    @rule()
    def reopen(self) -> None:
        if self.index is not None:
            self.index.close()
        self.index = DiskIndex.open(self.path, FILE_ID, readonly=False)
        assert self.index is not None
        # The tail rescan FileStorage does: every record from covered_offset on.
        self.tail = {
            oid: offset for offset, oid in self.records if offset >= self.index.covered_offset
        }

    @invariant()
    def merged_view_matches_the_model(self) -> None:
        if self.index is None:
            return
        disk = self.index
        merged = dict(disk.iter_entries())
        merged.update(self.tail)
        assert merged == self.model
        assert {oid: disk.lookup(oid) for oid in self.model if oid not in self.tail} == {
            oid: offset for oid, offset in self.model.items() if oid not in self.tail
        }
        added_by_tail = sum(1 for oid in self.tail if disk.lookup(oid) == 0)
        assert disk.entry_count + added_by_tail == len(self.model)

    def teardown(self) -> None:
        if self.index is not None:
            self.index.close()
        shutil.rmtree(self.directory)


@pytest.mark.req("IDX-022", "IDX-023", "IDX-030", "IDX-031", "IDX-034", "IDX-035")
def test_model_checkpoints_crashes_and_reopens() -> None:
    run = IndexMachine.TestCase
    run.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
    run().runTest()


@pytest.mark.req("IDX-030")
def test_checkpoint_fsyncs_entries_before_writing_the_meta(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At each fsync, look at what the file holds: entries first, then the meta."""
    snapshots: list[tuple[bytes, Meta | None]] = []
    real_fsync = fileio._fdatasync  # the index syncs through the file layer (IDX-006)

    def recording_fsync(fd: int) -> None:
        snapshots.append(
            (_read(path, ENTRIES_OFFSET + 2 * 8, 8), decode_meta(_read(path, 8192, 64)))
        )
        real_fsync(fd)

    with _create(path) as index:
        monkeypatch.setattr(fileio, "_fdatasync", recording_fsync)
        index.checkpoint({2: 1100}, 1200, 8, 0x11, 2)
        monkeypatch.undo()
    assert snapshots == [
        (struct.pack(">Q", 1100), None),
        (struct.pack(">Q", 1100), Meta(2, 1200, 8, 2, 3, 0x11)),
    ]


def _runs_one_by_one(oids: list[int]) -> list[tuple[int, int]]:
    """_runs's ranges, found one oid at a time (the reference the comprehension must match)."""
    runs: list[tuple[int, int]] = []
    for oid in oids:
        if runs and oid == runs[-1][1] + 1 and oid - runs[-1][0] < file_index.RUN_MAX_ENTRIES:
            runs[-1] = (runs[-1][0], oid)
        else:
            runs.append((oid, oid))
    return runs


@given(st.sets(st.integers(0, 3 * file_index.RUN_MAX_ENTRIES), max_size=300))
def test_runs_cover_consecutive_oids_only(numbers: set[int]) -> None:
    oids = sorted(numbers)
    assert list(file_index._runs(oids)) == _runs_one_by_one(oids)


@given(
    st.lists(
        st.tuples(st.integers(0, 3 * file_index.RUN_MAX_ENTRIES), st.integers(1, 300)),
        max_size=12,
    )
)
def test_runs_of_ranges_cover_consecutive_oids_only(ranges: list[tuple[int, int]]) -> None:
    # Unions of ranges: runs of every length, touching, overlapping or apart.
    oids = sorted({oid for start, length in ranges for oid in range(start, start + length)})
    assert list(file_index._runs(oids)) == _runs_one_by_one(oids)


@pytest.mark.parametrize(
    "start, count", [(0, 1), (9, 2), (3, 700), (1, 2 * file_index.RUN_MAX_ENTRIES + 5)]
)
def test_runs_of_consecutive_oids_only(start: int, count: int) -> None:
    oids = list(range(start, start + count))
    assert list(file_index._runs(oids)) == _runs_one_by_one(oids)


def test_runs_split_a_long_range_at_the_run_limit() -> None:
    limit = file_index.RUN_MAX_ENTRIES
    oids = [5, *range(7, 7 + 2 * limit + 3)]
    assert list(file_index._runs(oids)) == _runs_one_by_one(oids)
    assert list(file_index._runs(oids)) == [
        (5, 5),
        (7, 6 + limit),
        (7 + limit, 6 + 2 * limit),
        (7 + 2 * limit, 9 + 2 * limit),
    ]
