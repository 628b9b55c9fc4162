"""dhruva verify, dump, stats and convert (spec: tools.md, TOOL-001 .. TOOL-042)."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import struct
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from _journal_storages import data_end

from dhruva import journal
from dhruva.connection import Connection
from dhruva.error import DhruvaError, SerializationError
from dhruva.file_index import ADDED_FLAG, ENTRIES_OFFSET
from dhruva.file_storage import FileStorage
from dhruva.persistent import Persistent
from dhruva.persistent_list import PersistentList
from dhruva.sqlite_storage import SqliteStorage
from dhruva.storage import Storage
from dhruva.tools import dbtools
from dhruva.tools.dbinspect import describe_data
from dhruva.utils import int8_to_str


class Thing(Persistent):
    """A user class stored by the tests."""


def make_database(path: Path) -> None:
    """Three commits: a list and a Thing, then the list is dropped (garbage)."""
    with Connection(FileStorage(str(path))) as connection:
        root = connection.get_root()
        root["list"] = PersistentList([1, 2, 3])
        connection.commit()
        thing = Thing()
        thing.name = "thing"
        thing.friend = root
        root["thing"] = thing
        connection.commit()
        del root["list"]
        connection.commit()


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        entry.name: (entry.read_bytes(), entry.stat().st_mtime_ns)
        for entry in sorted(directory.iterdir())
    }


def store_raw(storage: Storage, oid: int, data: bytes, refs: list[int]) -> None:
    storage.begin()
    storage.store(int8_to_str(oid), data, b"".join(int8_to_str(r) for r in refs))
    storage.end()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = dbtools.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "db.dhruva"
    make_database(path)
    return path


# --- verify --------------------------------------------------------------------------------


@pytest.mark.req("TOOL-006")
def test_verify_clean_database(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _err = run(capsys, "verify", str(db))
    assert status == 0
    assert "transactions: 4" in out  # the root's creation and three commits
    assert "unreachable objects: 1" in out
    assert out.rstrip().endswith("result: OK")


@pytest.mark.req("TOOL-001", "TOOL-002")
def test_read_only_tools_change_nothing_and_report_a_torn_tail(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    end = data_end(str(db))
    with open(db, "r+b") as file:
        file.seek(end)  # an interrupted commit, over the free space (RCV-060)
        file.write(journal.TXN_TAG + b"\x00" * 30)
    torn = os.path.getsize(db) - end  # the commit's 34 bytes and the free space after them
    before = snapshot(db.parent)
    status, out, _err = run(capsys, "verify", str(db))
    assert status == 0
    assert f"WARNING: {torn} bytes at offset {end}" in out and "not a complete transaction" in out
    assert run(capsys, "dump", str(db))[0] == 0
    assert run(capsys, "dump", "--json", str(db))[0] == 0
    assert run(capsys, "stats", str(db))[0] == 0
    assert snapshot(db.parent) == before  # no .tr0, no index rebuilt, nothing touched


@pytest.mark.req("TOOL-002", "TOOL-006")
def test_verify_reports_damage_with_its_offset(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(db.read_bytes())
    spans = journal.scan(bytes(data), journal.FILE_HEADER_SIZE, str(db)).spans
    second = spans[1]
    data[second.offset + 50] ^= 0xFF  # inside the second transaction's records
    db.write_bytes(bytes(data))
    status, out, _err = run(capsys, "verify", str(db))
    assert status == 1
    assert f"DAMAGE: {db} at offset {second.offset}: transaction checksum mismatch" in out
    assert "result: DAMAGED" in out


@pytest.mark.req("TOOL-002")
def test_verify_reports_a_damaged_file_header(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(db.read_bytes())
    data[20] ^= 1
    db.write_bytes(bytes(data))
    status, out, _err = run(capsys, "verify", str(db))
    assert status == 1 and "file header checksum mismatch" in out


def _index_entry_position(oid: int) -> int:
    return ENTRIES_OFFSET + 8 * oid


@pytest.mark.req("TOOL-004")
def test_verify_finds_a_stale_index_entry(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = Path(str(db) + ".index")
    raw = bytearray(index.read_bytes())
    position = _index_entry_position(0)
    current = struct.unpack_from(">Q", raw, position)[0] & ~ADDED_FLAG
    struct.pack_into(">Q", raw, position, journal.FILE_HEADER_SIZE + journal.TXN_HEADER_SIZE)
    index.write_bytes(bytes(raw))
    status, out, _err = run(capsys, "verify", str(db))
    assert status == 1
    assert (
        f"the entry of oid 0 points at offset 104 but its current record is at offset {current}"
        in out
    )
    assert "delete the index" in out


@pytest.mark.req("TOOL-004")
def test_verify_finds_a_missing_index_entry(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = Path(str(db) + ".index")
    raw = bytearray(index.read_bytes())
    struct.pack_into(">Q", raw, _index_entry_position(2), 0)
    index.write_bytes(bytes(raw))
    status, out, _err = run(capsys, "verify", str(db))
    assert status == 1 and "has no entry for oid 2" in out


@pytest.mark.req("TOOL-004")
def test_an_index_filestorage_would_rebuild_is_only_a_warning(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = Path(str(db) + ".index")
    raw = bytearray(index.read_bytes())
    raw[16] ^= 1  # the file id: now it is another file's index
    index.write_bytes(bytes(raw))
    status, out, _err = run(capsys, "verify", str(db))
    assert status == 0 and "WARNING:" in out and "unusable" in out
    index.unlink()
    status, out, _err = run(capsys, "verify", str(db))
    assert status == 0 and "INFO: no " in out


@pytest.mark.req("TOOL-005")
def test_verify_reports_dangling_references_and_bad_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "raw.dhruva"
    with FileStorage(str(path)) as storage:
        root = b"P" + pickle.dumps(Thing, 5) + pickle.dumps({}, 5)
        store_raw(storage, 0, root, [1, 99])
        store_raw(storage, 1, b"Zjunk", [])
        store_raw(storage, 2, b"P" + pickle.dumps(Thing, 5)[:-3], [])
    status, out, _err = run(capsys, "verify", str(path))
    assert status == 1
    assert f"oid 0 ({__name__}.Thing) references oid 99, which has no record" in out
    assert "the record of oid 1 at offset" in out and "unknown serializer code 0x5a" in out
    assert "the record of oid 2" in out
    assert "unreachable objects: 1" in out  # oid 2


@pytest.mark.req("TOOL-005")
def test_verify_reports_a_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rootless.dhruva"
    with FileStorage(str(path)) as storage:
        store_raw(storage, 3, b"P" + pickle.dumps(Thing, 5) + pickle.dumps({}, 5), [])
    status, out, _err = run(capsys, "verify", str(path))
    assert status == 1 and "no root (oid 0)" in out


_ran: list[str] = []


def _side_effect() -> None:
    _ran.append("ran")


class _Booby:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_side_effect, ())


@pytest.mark.req("TOOL-003")
def test_class_names_are_read_without_running_code(tmp_path: Path) -> None:
    data = b"P" + pickle.dumps(Thing, 5) + pickle.dumps({"x": _Booby()}, 5)
    assert describe_data(data) == ("pickle", f"{__name__}.Thing")
    protocol2 = b"P" + pickle.dumps(Thing, 2) + pickle.dumps({}, 2)
    assert describe_data(protocol2) == ("pickle", f"{__name__}.Thing")
    with pytest.raises(ValueError, match="not complete"):
        describe_data(b"P" + pickle.dumps(Thing, 5) + pickle.dumps({}, 5)[:-1])
    path = tmp_path / "booby.dhruva"
    with FileStorage(str(path)) as storage:
        store_raw(storage, 0, data, [])
    assert dbtools.verify(str(path)).damaged is False
    assert dbtools.stats(str(path)).census == {
        f"{__name__}.Thing": [1, journal.RECORD_HEADER_SIZE + len(data)]
    }
    assert _ran == []


@pytest.mark.req("TOOL-003")
def test_msgspec_class_names(tmp_path: Path) -> None:
    pytest.importorskip("msgspec")
    path = tmp_path / "m.dhruva"
    with Connection(FileStorage(str(path)), serializer="msgspec") as connection:
        connection.get_root()["x"] = PersistentList([1])
        connection.commit()
    census = dbtools.stats(str(path)).census
    assert set(census) == {
        "dhruva.persistent_dict.PersistentDict",
        "dhruva.persistent_list.PersistentList",
    }


@pytest.mark.req("TOOL-005", "TOOL-006")
def test_verify_sqlite(tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "db.sqlite"
    dbtools.convert(str(db), str(target), "sqlite")
    status, out, _err = run(capsys, "verify", str(target))
    assert status == 0 and "dhruva SQLite database" in out
    with SqliteStorage(str(target)) as storage:
        store_raw(storage, 7, b"P" + pickle.dumps(Thing, 5) + pickle.dumps({}, 5), [0, 42])
    status, out, _err = run(capsys, "verify", str(target))
    assert status == 1 and "oid 7" in out and "references oid 42" in out


@pytest.mark.req("TOOL-006", "TOOL-007")
def test_files_that_cannot_be_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "verify", str(tmp_path / "missing"))
    assert (status, out) == (2, "") and err == f"dhruva: {tmp_path / 'missing'}: no such file\n"
    other = tmp_path / "other.txt"
    other.write_text("hello")
    status, _out, err = run(capsys, "verify", str(other))
    assert status == 2 and "is not a dhruva database" in err and err.count("\n") == 1
    for command in ("dump", "stats"):
        assert run(capsys, command, str(other))[0] == 1


@pytest.mark.parametrize("command", ["verify", "dump", "stats", "convert", "import-durus"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        dbtools.main([command, "--help"])
    assert exited.value.code == 0
    assert "usage: dhruva " + command in capsys.readouterr().out


# --- dump and stats ---------------------------------------------------------------------------


@pytest.mark.req("TOOL-020", "TOOL-021")
def test_dump_json_lines(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _err = run(capsys, "dump", "--json", str(db))
    assert status == 0
    rows = [json.loads(line) for line in out.splitlines()]
    keys = {"tid", "time", "txn_offset", "offset", "oid", "class", "serializer", "size", "refs"}
    assert all(set(row) == keys for row in rows)
    assert [row["tid"] for row in rows] == [1, 2, 2, 3, 3, 4]  # superseded records too
    assert [row["offset"] for row in rows] == sorted(row["offset"] for row in rows)
    with FileStorage(str(db), readonly=True) as storage:
        for row in rows:
            record = journal.decode_record_at(db.read_bytes(), row["offset"], str(db))
            assert row["oid"] == int.from_bytes(record.oid, "big")
            assert row["size"] == len(record.data)
            assert row["refs"] == [int.from_bytes(o, "big") for o in record.ref_oids()]
        assert storage.load(int8_to_str(2)).data[:1] == b"P"
    last = rows[-1]
    assert last["class"] == "dhruva.persistent_dict.PersistentDict"
    assert last["serializer"] == "pickle" and last["time"].endswith("Z")
    thing = next(row for row in rows if row["oid"] == 2)
    assert thing["class"] == f"{__name__}.Thing" and thing["refs"] == [0]


@pytest.mark.req("TOOL-021")
def test_dump_text(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _err = run(capsys, "dump", str(db))
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("transaction tid=1 time=") and "offset=64" in lines[0]
    assert sum(line.startswith("transaction ") for line in lines) == 4
    assert sum(line.startswith("  oid ") for line in lines) == 6


@pytest.mark.req("TOOL-022")
def test_stats_counts_live_and_garbage_bytes(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = db.read_bytes()
    result = journal.scan(data, journal.FILE_HEADER_SIZE, str(db))
    sizes: list[tuple[bytes, int]] = []
    for span in result.spans:
        for record in journal.decode_transaction(data, span.offset, str(db)).records:
            sizes.append(
                (record.oid, journal.RECORD_HEADER_SIZE + len(record.data) + len(record.refs))
            )
    current = dict(sizes)
    figures = dbtools.stats(str(db))
    assert figures.records == 6 and figures.objects == 3 and figures.reachable == 2
    assert figures.unreachable_bytes == current[int8_to_str(1)]  # the dropped list
    assert figures.live_bytes == current[int8_to_str(0)] + current[int8_to_str(2)]
    assert figures.superseded_bytes == sum(size for _oid, size in sizes) - sum(current.values())
    assert figures.garbage_bytes == figures.superseded_bytes + figures.unreachable_bytes
    assert figures.file_bytes == len(data)
    assert figures.census[f"{__name__}.Thing"] == [1, current[int8_to_str(2)]]
    status, out, _err = run(capsys, "stats", "--json", str(db))
    assert status == 0 and json.loads(out)["garbage_bytes"] == figures.garbage_bytes
    status, out, _err = run(capsys, "stats", str(db))
    assert "garbage estimate:" in out and f"{__name__}.Thing" in out


# --- convert ------------------------------------------------------------------------------------


def _records(storage: Storage) -> dict[bytes, tuple[bytes, bytes]]:
    return {oid: storage.load(oid)[1:] for oid in storage.iter_oids()}  # type: ignore[misc]


@pytest.mark.req("TOOL-040", "TOOL-041")
@pytest.mark.parametrize("chain", [("sqlite", "file2"), ("file2", "file"), ("file", "sqlite")])
def test_convert_copies_records_byte_for_byte(
    db: Path, tmp_path: Path, chain: tuple[str, str]
) -> None:
    before = snapshot(db.parent)
    with FileStorage(str(db), readonly=True) as storage:
        original = _records(storage)
    middle, last = tmp_path / "one", tmp_path / "two"
    assert dbtools.convert(str(db), str(middle), chain[0]) == 3
    assert dbtools.convert(str(middle), str(last), chain[1]) == 3
    opener = SqliteStorage if chain[1] == "sqlite" else FileStorage
    with opener(str(last), readonly=True) as storage:
        assert _records(storage) == original
    assert {k: v for k, v in snapshot(db.parent).items() if k in before} == before


@pytest.mark.req("TOOL-040", "TOOL-007")
def test_convert_refuses_an_existing_target(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _out, err = run(capsys, "convert", str(db), str(db), "-q")
    assert (
        status == 1 and err == f"dhruva: {db} already exists; convert writes a new database only\n"
    )


@pytest.mark.req("TOOL-042")
def test_convert_reencodes_with_another_serializer(db: Path, tmp_path: Path) -> None:
    pytest.importorskip("msgspec")
    target = tmp_path / "m.dhruva"
    dbtools.convert(str(db), str(target), "file", serializer="msgspec")
    with FileStorage(str(target), readonly=True) as storage:
        assert {storage.load(oid).data[:1] for oid in storage.iter_oids()} == {b"M"}
        assert sorted(storage.iter_oids()) == [int8_to_str(n) for n in range(3)]
    with Connection(str(target)) as connection:
        root = connection.get_root()
        assert root["thing"].name == "thing" and root["thing"].friend is root
        assert connection[1] == [1, 2, 3]  # unreachable, but kept under its oid


@pytest.mark.req("TOOL-046", "TOOL-040")
def test_convert_compares_every_record_and_fails_on_a_difference(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A target back-end that stores one byte wrong: convert must notice.
    new_storage = dbtools._new_storage

    def corrupting(path: str, backend: str) -> Storage:
        storage = new_storage(path, backend)
        store = storage.store

        def store_flipped(oid: bytes, data: bytes, refs: bytes = b"") -> None:
            if oid == int8_to_str(1):
                data = data[:-1] + bytes([data[-1] ^ 1])
            store(oid, data, refs)

        storage.store = store_flipped  # type: ignore[method-assign]
        return storage

    monkeypatch.setattr(dbtools, "_new_storage", corrupting)
    target = tmp_path / "flipped"
    with pytest.raises(DhruvaError, match="copy of oid 1 differs"):
        dbtools.convert(str(db), str(target), "sqlite")
    assert not [name for name in os.listdir(tmp_path) if name.startswith("flipped")]
    # Unchanged, the same copy passes the comparison.
    monkeypatch.setattr(dbtools, "_new_storage", new_storage)
    assert dbtools.convert(str(db), str(target), "sqlite") == 3


@pytest.mark.req("TOOL-040")
def test_a_failed_convert_leaves_nothing(db: Path, tmp_path: Path) -> None:
    pytest.importorskip("msgspec")
    with Connection(FileStorage(str(db))) as connection:
        connection.get_root()["thing"].odd = Fraction(1, 3)  # msgspec cannot hold it
        connection.commit()
    target = tmp_path / "bad"
    with pytest.raises(SerializationError, match="Fraction"):
        dbtools.convert(str(db), str(target), "sqlite", serializer="msgspec")
    assert not [name for name in os.listdir(tmp_path) if name.startswith("bad")]


@pytest.mark.req("TOOL-007")
def test_progress_goes_to_stderr_unless_quiet(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "convert", str(db), str(tmp_path / "a"))
    assert status == 0 and out == ""
    assert "convert: 3/3 (100%)" in err
    status, out, err = run(capsys, "convert", str(db), str(tmp_path / "b"), "--quiet")
    assert (status, out, err) == (0, "", "")


def test_register_adds_the_commands_to_a_parser() -> None:
    parser = argparse.ArgumentParser(prog="dhruva")
    dbtools.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["stats", "x", "--json"])
    assert args.json is True and callable(args.run)
    registered: list[str] = []
    dbtools.register_commands(lambda name, help, configure, run: registered.append(name))
    assert registered == ["verify", "dump", "stats", "convert", "import-durus"]


def test_current_table_dense_and_sparse_oids_give_the_same_answers() -> None:
    from dhruva.tools.dbinspect import RecordInfo
    from dhruva.tools.dbtools import _CurrentTable
    from dhruva.utils import int8_to_str

    def build(numbers: list[int]) -> _CurrentTable:
        table = _CurrentTable()
        # The root references every object; the last object is superseded once.
        root_refs = b"".join(int8_to_str(n) for n in numbers[1:])
        table.add(RecordInfo(int8_to_str(0), 0, root_refs, 100, class_name="Root"))
        for n in numbers[1:]:
            table.add(RecordInfo(int8_to_str(n), 0, b"", 10, class_name="Leaf"))
        table.add(RecordInfo(int8_to_str(numbers[-1]), 0, b"", 7, class_name="Leaf"))
        table.add(RecordInfo(int8_to_str(numbers[-1] + 1), 0, b"", 5, class_name="Orphan"))
        return table

    for numbers in ([0, 1, 2, 3], [0, 5, 1 << 40, (1 << 62) + 3]):
        table = build(numbers)
        assert len(table) == 5
        assert int8_to_str(numbers[2]) in table and int8_to_str(numbers[2] + 7) not in table
        present = dict(table.slots())
        assert sorted(present.values()) == sorted(
            int8_to_str(n) for n in [*numbers, numbers[-1] + 1]
        )
        reachable = table.reachable()
        by_oid = {oid: slot for slot, oid in present.items()}
        assert reachable.count() == 4
        orphan = by_oid[int8_to_str(numbers[-1] + 1)]
        assert orphan not in reachable and table.class_name(orphan) == "Orphan"
        assert table.sizes[by_oid[int8_to_str(numbers[-1])]] == 7


# --- bounded memory (TOOL-008) --------------------------------------------------------------

THING_DATA = b"P" + pickle.dumps(Thing, 5) + pickle.dumps({}, 5)


def make_graph(path: Path, numbers: list[int], commits: int = 1) -> None:
    """A root referencing every other oid of ``numbers`` (one chain each), in ``commits`` parts."""
    with FileStorage(str(path)) as storage:
        parts = [numbers[1:][i::commits] for i in range(commits)]
        for part in parts:
            storage.begin()
            for n in part:
                storage.store(int8_to_str(n), THING_DATA, b"")
            storage.end()
        # The root last: it references them all and one oid that has no record.
        store_raw(storage, 0, THING_DATA, [*numbers[1:], max(numbers) + 1])
        store_raw(storage, numbers[1], THING_DATA, [numbers[2]])  # superseded once


@pytest.mark.req("TOOL-008")
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_windowed_walk_finds_what_a_whole_file_scan_finds(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dhruva.tools import dbinspect

    numbers = list(range(40)) if kind == "dense" else [0, 5, 7, 90_000, 200_001]
    path = tmp_path / f"{kind}.dhruva"
    make_graph(path, numbers, commits=4)
    with open(path, "ab") as file:
        file.write(journal.TXN_TAG + b"\x00" * 30)  # a torn tail after them
    whole = journal.scan(path.read_bytes(), journal.FILE_HEADER_SIZE, str(path))
    expected = (run(capsys, "verify", str(path)), run(capsys, "stats", "--json", str(path)))
    assert expected[0][0] == 1 and "which has no record" in expected[0][1]
    assert "torn tail" not in expected[0][1] and "not a complete transaction" in expected[0][1]

    # One transaction a window, pages released after every byte and every read.
    monkeypatch.setattr(dbinspect, "SCAN_WINDOW_BYTES", 1)
    monkeypatch.setattr(dbinspect, "RELEASE_EVERY_BYTES", 1)
    monkeypatch.setattr(dbinspect, "RELEASE_EVERY_READS", 1)
    source = dbinspect.JournalSource(str(path))
    try:
        assert source.spans == whole.spans and len(source.spans) == 6
        assert [issue.kind for issue in source.issues] == ["torn tail"]
    finally:
        source.close()
    assert (run(capsys, "verify", str(path)), run(capsys, "stats", "--json", str(path))) == expected
    figures = json.loads(expected[1][1])
    assert figures["objects"] == len(numbers) and figures["reachable"] == len(numbers)


@pytest.mark.req("TOOL-008")
def test_windowed_walk_still_reports_damage_in_the_middle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dhruva.tools import dbinspect

    path = tmp_path / "damaged.dhruva"
    make_graph(path, list(range(30)), commits=5)
    data = bytearray(path.read_bytes())
    second = journal.scan(bytes(data), journal.FILE_HEADER_SIZE, str(path)).spans[1]
    data[second.offset + 50] ^= 0xFF
    path.write_bytes(bytes(data))
    expected = run(capsys, "verify", str(path))
    monkeypatch.setattr(dbinspect, "SCAN_WINDOW_BYTES", 1)
    assert run(capsys, "verify", str(path)) == expected
    assert expected[0] == 1
    assert f"at offset {second.offset}: transaction checksum mismatch" in expected[1]


@pytest.mark.req("TOOL-008", "TOOL-004")
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_streamed_index_check_finds_stale_and_missing_entries(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    numbers = list(range(12)) if kind == "dense" else [0, 3, 70_000, 150_000]
    path = tmp_path / f"{kind}.dhruva"
    make_graph(path, numbers, commits=2)
    FileStorage(str(path)).close()  # write the index
    status, out, _err = run(capsys, "verify", str(path))
    assert status == 1 and out.count("DAMAGE:") == 1  # only the dangling reference
    index = Path(str(path) + ".index")
    raw = bytearray(index.read_bytes())
    struct.pack_into(">Q", raw, _index_entry_position(numbers[-1]), 0)  # missing
    struct.pack_into(">Q", raw, _index_entry_position(numbers[1]), 104)  # stale
    index.write_bytes(bytes(raw))
    status, out, _err = run(capsys, "verify", str(path))
    assert status == 1
    assert f"has no entry for oid {numbers[-1]}" in out
    assert f"the entry of oid {numbers[1]} points at offset 104 but its current record" in out


def make_chain(path: Path, count: int) -> None:
    """Objects 0 (the root) -> 1 -> ... -> count - 1, in transactions of 1000 records."""
    with FileStorage(str(path)) as storage:
        for first in range(0, count, 1000):
            storage.begin()
            for n in range(first, min(first + 1000, count)):
                refs = int8_to_str(n + 1) if n + 1 < count else b""
                storage.store(int8_to_str(n), THING_DATA, refs)
            storage.end()
    os.unlink(str(path) + ".index")  # the index check reads the index in fixed chunks


@pytest.mark.req("TOOL-008")
def test_verify_and_stats_keep_a_few_bytes_per_object(tmp_path: Path) -> None:
    import tracemalloc

    def peak_bytes(tool: Any, path: Path) -> int:
        tracemalloc.start()
        try:
            tool(str(path))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = tmp_path / "small.dhruva", tmp_path / "large.dhruva"
    make_chain(small, 4_000)
    make_chain(large, 16_000)
    for tool in (dbtools.verify, dbtools.stats):
        report = tool(str(large))
        assert report.objects == 16_000
        per_object = (peak_bytes(tool, large) - peak_bytes(tool, small)) / 12_000
        # The table is 20 bytes an object and a bit; a dict or set keyed by
        # oid, or a RecordInfo an object, would cost 100 bytes or more.
        assert per_object < 32, (tool.__name__, per_object)
