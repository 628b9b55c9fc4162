"""Tests of point-in-time reads and restore (spec: point-in-time.md, HIST)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from _journal_storages import commit, contents, data_end, oid

from dhruva import journal
from dhruva.connection import Connection
from dhruva.error import CorruptionError, DhruvaError, DhruvaKeyError, ReadOnlyError
from dhruva.file_storage import FileStorage, FileStorage2
from dhruva.file_storage2 import JournalStorage
from dhruva.history import list_transactions, open_at, restore
from dhruva.journal_walk import CHUNK_BYTES, JournalWalk


def make_history(cls: type[JournalStorage], path: str) -> None:
    with cls(path) as storage:
        commit(storage, (0, b"root 1", [1]), (1, b"one 1", []))
        commit(storage, (1, b"one 2", []), (2, b"two 2", []))
        commit(storage, (0, b"root 3", [1, 2]))


@pytest.mark.req("HIST-010")
def test_list_transactions(cls: type[JournalStorage], path: str) -> None:
    make_history(cls, path)
    listed = list_transactions(path)
    assert [t.tid for t in listed] == [1, 2, 3]
    assert [t.record_count for t in listed] == [2, 2, 1]
    assert listed[0].offset == journal.FILE_HEADER_SIZE
    assert all(a.offset + a.size_bytes == b.offset for a, b in itertools.pairwise(listed))
    assert listed[-1].offset + listed[-1].size_bytes == data_end(path)
    assert [t.time_us for t in listed] == sorted(t.time_us for t in listed)
    assert listed[0].time.tzinfo is not None


@pytest.mark.req("HIST-020", "HIST-021")
def test_view_as_of_each_tid(cls: type[JournalStorage], path: str) -> None:
    make_history(cls, path)
    expected = {
        1: {0: b"root 1", 1: b"one 1"},
        2: {0: b"root 1", 1: b"one 2", 2: b"two 2"},
        3: {0: b"root 3", 1: b"one 2", 2: b"two 2"},
    }
    for tid, state in expected.items():
        with open_at(path, tid) as view:
            assert contents(view) == state
            assert view.get_size() == len(state)
    with open_at(path, 1) as view, pytest.raises(DhruvaKeyError):
        view.load(oid(2))


@pytest.mark.req("HIST-022")
def test_view_refuses_writes(cls: type[JournalStorage], path: str) -> None:
    make_history(cls, path)
    view = open_at(path, 2)
    for action in (view.new_oid, view.begin, view.end, view.pack):
        with pytest.raises(ReadOnlyError):
            action()
    with pytest.raises(ReadOnlyError):
        view.store(oid(5), b"x")
    view.close()
    view.close()
    with pytest.raises(DhruvaError, match="closed"):
        view.load(oid(0))


@pytest.mark.req("HIST-001", "HIST-023")
def test_view_works_with_a_connection_while_a_writer_holds_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with Connection(FileStorage(path)) as writer:
        root = writer.get_root()
        root["n"] = 1
        writer.commit()
        first = list_transactions(path)[-1].tid
        root["n"] = 2
        writer.commit()
        # The writer still holds its exclusive lock; the view reads without one.
        browser = Connection(open_at(path, first))
        assert browser.get_root()["n"] == 1
        browser.close()


@pytest.mark.req("HIST-024")
def test_unknown_tid_is_an_error_naming_the_range(cls: type[JournalStorage], path: str) -> None:
    make_history(cls, path)
    with pytest.raises(DhruvaError, match="no transaction 9"):
        open_at(path, 9)
    with pytest.raises(DhruvaError, match="no transaction 0"):
        open_at(path, 0)


@pytest.mark.req("HIST-030", "HIST-031")
def test_history_before_the_pack_point_is_gone(cls: type[JournalStorage], path: str) -> None:
    make_history(cls, path)
    with cls(path) as storage:
        storage.pack()
        commit(storage, (2, b"two 4", []))
    assert [t.tid for t in list_transactions(path)] == [3, 4]
    with pytest.raises(DhruvaError, match="packed"):
        open_at(path, 2)
    with open_at(path, 3) as view:
        assert contents(view) == {0: b"root 3", 1: b"one 2", 2: b"two 2"}
    with open_at(path, 4) as view:
        assert view.load(oid(2)).data == b"two 4"


@pytest.mark.req("HIST-031", "PACK-021")
def test_states_during_a_two_phase_pack_survive_it(cls: type[JournalStorage], path: str) -> None:
    with cls(path) as storage:
        commit(storage, (0, b"root", [1]), (1, b"a", [2]), (2, b"b", []))
        storage.pack_begin()
        commit(storage, (1, b"a without b", []))  # tid 2: b unreachable from now on
        storage.pack_finish()
    with open_at(path, 1) as view:
        assert contents(view) == {0: b"root", 1: b"a", 2: b"b"}
    with open_at(path, 2) as view:
        assert view.load(oid(1)).data == b"a without b"


@pytest.mark.req("HIST-025", "HIST-026", "HIST-044")
def test_restore_writes_the_database_as_of_a_tid(
    cls: type[JournalStorage], path: str, tmp_path: Path
) -> None:
    make_history(cls, path)
    output = str(tmp_path / "restored.dhruva")
    result = restore(path, 2, output)
    assert result.last_tid == 2 and result.transactions == 2
    assert not os.path.exists(output + ".partial")
    source_header = journal.decode_file_header(Path(path).read_bytes(), path)
    restored_header = journal.decode_file_header(Path(output).read_bytes(), output)
    assert restored_header.file_id != source_header.file_id
    with cls(output) as storage:
        assert storage.load(oid(0)).data == b"root 1"
        assert storage.load(oid(1)).data == b"one 2"
        assert [tid for tid, *_ in storage.iter_transactions()] == [1, 2]
        commit(storage, (3, b"new", []))  # a database of its own
    with pytest.raises(DhruvaError, match="exists"):
        restore(path, 1, output)
    with pytest.raises(DhruvaError, match="other than the input"):
        restore(path, 1, path)
    with pytest.raises(DhruvaError, match="no transaction"):
        restore(path, 7, str(tmp_path / "other"))
    assert not os.path.exists(tmp_path / "other")


@pytest.mark.req("HIST-002")
def test_walk_splits_large_transactions_into_chunks(path: str) -> None:
    with FileStorage2(path) as storage:
        big = b"z" * (CHUNK_BYTES + 5)
        commit(storage, *[(n, b"s" * 13, []) for n in range(20000)], (99999, big, [0]))
        commit(storage, (1, b"small", []))
    data = Path(path).read_bytes()
    reads: list[int] = []

    def pread(length: int, offset: int) -> bytes:
        reads.append(length)
        return data[offset : offset + length]

    walk = JournalWalk(pread, len(data), path)
    assert [t.tid for t in walk] == [1, 2]
    assert max(reads) <= CHUNK_BYTES
    # The same checks as the codec's scan: cut the file anywhere in the last
    # transaction and the walk stops before it; flip a byte before and it raises.
    last = journal.scan(data, 64, path).spans[-1]
    for cut in (last.offset + 1, last.end - 1):
        prefix = data[:cut]
        walk = JournalWalk(lambda n, o, p=prefix: p[o : o + n], cut, path)
        assert [t.tid for t in walk] == [1]
        assert walk.tail == (last.offset, cut)
    damaged = bytearray(data)
    damaged[100] ^= 0xFF
    with pytest.raises(CorruptionError):
        list(JournalWalk(lambda n, o: bytes(damaged[o : o + n]), len(damaged), path))


@pytest.mark.req("HIST-001")
def test_reading_history_changes_no_file(
    cls: type[JournalStorage], path: str, tmp_path: Path
) -> None:
    make_history(cls, path)
    with open(path, "ab") as file:
        file.write(b"DTXN torn")  # a torn tail that a writable open would set aside
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    list_transactions(path)
    with open_at(path, 2) as view:
        view.load(oid(0))
    restore(path, 3, str(tmp_path / "out"))
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "out"}
    assert after == before
