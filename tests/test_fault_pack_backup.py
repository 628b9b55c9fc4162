"""A full disk and EIO during pack, backup and load (spec/fault-model.md, FLT-080..).

Issue 10, "also worth doing": ENOSPC while a pack writes ``PATH.pack`` or a
backup writes ``DEST.partial`` must be a clear OSError naming the file, leave
the database untouched and usable and no partial output behind; an EIO from
the disk on a read must fail that load (never return wrong bytes) and leave
the storage, and a server on it, serving every other load.

The faults come from a file layer (``FaultLayer``) for the storages, and
from a patched ``OSFile`` for backup, which opens its files itself.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from _fault_layers import FaultLayer
from _journal_storages import commit, contents, data_end, oid

from dhruva import backup as backup_module
from dhruva import file_pack, wire
from dhruva.client_storage import ClientStorage
from dhruva.error import DhruvaError, DiskReadError
from dhruva.file_storage import FileStorage
from dhruva.fileio import OSFile
from dhruva.journal_storage import JournalStorage
from dhruva.server.storage_server import StorageServer
from dhruva.storage import Storage
from dhruva.tools import admin


def _populate(storage: Storage, garbage: int = 200) -> None:
    """Commit a root, live objects, and garbage for a pack to drop."""
    commit(storage, (0, b"root", [1, 2]), (1, b"one", []), (2, b"two", []))
    for number in range(garbage):
        commit(storage, (100 + number, b"garbage %d" % number + bytes(500), []))
    commit(storage, (1, b"one again", []))


def _populate_with_a_distant_record(storage: Storage) -> None:
    """As :func:`_populate`, then oid 2 rewritten far (8 KiB) from every other current record.

    A load reads a few KiB from a record's offset, so a bad span under oid
    2's record must lie beyond the reads of the others.
    """
    _populate(storage, garbage=20)
    commit(storage, (900, bytes(8192), []))
    commit(storage, (2, b"two late", []))


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# --- ENOSPC during pack -----------------------------------------------------------------


@pytest.mark.req("FLT-080", "FLT-081", "FLT-082")
@pytest.mark.parametrize("when", ["begin", "step", "finish"])
def test_enospc_during_pack_leaves_the_database_untouched(
    cls: type[JournalStorage], path: str, tmp_path: Path, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every batch of copied records is written at once, so a step writes too.
    monkeypatch.setattr(file_pack, "WRITE_BUFFER_BYTES", 1)
    with cls(path) as storage:
        _populate(storage)
    layer = FaultLayer()
    storage = cls(path, file_layer=layer)
    before = Path(path).read_bytes()
    expected = contents(storage)
    files_before = _files(tmp_path)
    pack_path = path + ".pack"

    def pack_is_full(name: str) -> bool:
        return name == pack_path

    with pytest.raises(OSError) as info:
        if when == "begin":
            layer.full = pack_is_full
            storage.pack()
        else:
            storage.pack_begin()
            layer.full = pack_is_full
            if when == "step":
                storage.pack_step(budget=10)
                pytest.fail("pack_step() wrote to a full disk without an error")
            storage.pack_finish()
    # [FLT-080] The error keeps its errno and names the file that could not be written.
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == pack_path
    assert path in str(info.value) and "untouched" in str(info.value)
    assert layer.refused >= 1
    # [FLT-081] No partial output is left; the data file is byte for byte the same.
    assert not os.path.exists(pack_path)
    assert _files(tmp_path) == files_before
    assert Path(path).read_bytes() == before
    assert not storage.packing
    # [FLT-081] The storage goes on loading and committing on the old file.
    assert contents(storage) == expected
    layer.full = lambda name: False
    commit(storage, (2, b"two after", []))
    assert storage.load(oid(2)).data == b"two after"
    # [FLT-082] Once space is back, a pack succeeds.
    storage.pack()
    assert not os.path.exists(pack_path)
    assert storage.load(oid(1)).data == b"one again"
    assert storage.load(oid(2)).data == b"two after"
    assert storage.get_size() == 3
    storage.close()
    with cls(path) as reopened:
        assert contents(reopened) == {0: b"root", 1: b"one again", 2: b"two after"}
    assert os.path.getsize(path) < len(before)


@pytest.mark.req("FLT-080", "FLT-081")
def test_eio_reading_the_database_abandons_the_pack(cls: type[JournalStorage], path: str) -> None:
    with cls(path) as storage:
        _populate(storage)
    layer = FaultLayer()
    storage = cls(path, file_layer=layer)
    try:
        expected = contents(storage)
        before = Path(path).read_bytes()
        offset = storage._index.get(oid(2)) or storage._lookup_more(oid(2))
        assert offset
        layer.bad_spans.append((path, offset, offset + 1))
        with pytest.raises(OSError) as info:
            storage.pack()
        assert info.value.errno == errno.EIO
        assert info.value.filename == path
        assert not os.path.exists(path + ".pack")
        assert not storage.packing
        assert Path(path).read_bytes() == before
        layer.bad_spans.clear()
        assert contents(storage) == expected
        storage.pack()  # the garbage goes, the live objects stay
        assert contents(storage) == {0: b"root", 1: b"one again", 2: b"two"}
    finally:
        storage.close()


# --- a real full disk: a small tmpfs ------------------------------------------------------


def _fill(directory: Path) -> Path:
    """Write ``directory/filler`` until the disk is full; return its path."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(bytes(4096))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.req("FLT-080", "FLT-081", "FLT-082")
def test_pack_on_a_full_tmpfs(cls: type[JournalStorage], small_tmpfs: Path) -> None:
    path = str(small_tmpfs / "db.dhruva")
    storage = cls(path)
    try:
        # About 600 KiB of live data, so the pack output cannot fit once the disk is full.
        commit(storage, (0, b"root", list(range(1, 151))))
        for number in range(1, 151):
            commit(storage, (number, bytes([number % 256]) * 4000, []))
        commit(storage, (1, b"one", []))
        expected = contents(storage)
        filler = _fill(small_tmpfs)
        before = Path(path).read_bytes()
        files_before = _files(small_tmpfs)
        with pytest.raises(OSError) as info:
            storage.pack()
        assert info.value.errno == errno.ENOSPC
        assert info.value.filename == path + ".pack"
        assert _files(small_tmpfs) == files_before
        assert Path(path).read_bytes() == before
        assert contents(storage) == expected
        filler.unlink()
        commit(storage, (2, b"two", []))
        storage.pack()
        expected[2] = b"two"
        assert contents(storage) == expected
    finally:
        storage.close()
    with cls(path) as reopened:
        assert contents(reopened) == expected


@pytest.mark.req("FLT-083")
def test_backup_to_a_full_tmpfs(path: str, small_tmpfs: Path) -> None:
    with FileStorage(path) as storage:
        commit(storage, (0, b"root", list(range(1, 151))))
        for number in range(1, 151):
            commit(storage, (number, bytes([number % 256]) * 4000, []))
        expected = contents(storage)
    before = Path(path).read_bytes()
    filler = _fill(small_tmpfs)
    dest = str(small_tmpfs / "copy.dhruva")
    with pytest.raises(OSError) as info:
        backup_module.backup(path, dest)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == dest + ".partial"
    assert _files(small_tmpfs) == {"filler"}
    assert Path(path).read_bytes() == before
    filler.unlink()
    backup_module.backup(path, dest)
    with FileStorage(dest, readonly=True) as copy:
        assert contents(copy) == expected


# --- ENOSPC during backup ---------------------------------------------------------------


def _refuse_writes_to(monkeypatch: pytest.MonkeyPatch, suffix: str, after_bytes: int) -> None:
    """Make OSFile writes to paths ending in ``suffix`` fail with ENOSPC past ``after_bytes``."""
    real_pwrite = OSFile.pwrite

    def pwrite(self: OSFile, data: bytes, offset: int) -> None:
        if self.path.endswith(suffix) and offset + len(data) > after_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_pwrite(self, data, offset)

    monkeypatch.setattr(OSFile, "pwrite", pwrite)


@pytest.mark.req("FLT-083")
@pytest.mark.parametrize("after_bytes", [0, 4096])
def test_enospc_during_backup_removes_the_partial_copy(
    cls: type[JournalStorage],
    path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    after_bytes: int,
) -> None:
    with cls(path) as storage:
        _populate(storage)
        expected = contents(storage)
    before = Path(path).read_bytes()
    assert len(before) > 4096 * 4
    dest_dir = tmp_path / "backups"
    dest_dir.mkdir()
    dest = str(dest_dir / "copy.dhruva")
    _refuse_writes_to(monkeypatch, ".partial", after_bytes)
    with pytest.raises(OSError) as info:
        backup_module.backup(path, dest)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == dest + ".partial"
    assert path in str(info.value) and "untouched" in str(info.value)
    assert _files(dest_dir) == set()
    assert Path(path).read_bytes() == before
    monkeypatch.undo()
    result = backup_module.backup(path, dest)
    assert _files(dest_dir) == {"copy.dhruva"}
    with cls(dest, readonly=True) as copy:
        assert contents(copy) == expected
    assert result.size_bytes == data_end(path)  # the copy has no free space (RCV-060)


@pytest.mark.req("FLT-083")
def test_backup_command_on_a_full_disk_prints_one_line(
    path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FileStorage(path) as storage:
        _populate(storage)
    before = Path(path).read_bytes()
    dest = str(tmp_path / "copy.dhruva")
    _refuse_writes_to(monkeypatch, ".partial", 1024)
    status = admin.main(["backup", path, dest])
    assert status == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dhruva backup: ")
    assert dest + ".partial" in lines[0]
    assert os.strerror(errno.ENOSPC) in lines[0]
    assert not os.path.exists(dest) and not os.path.exists(dest + ".partial")
    assert Path(path).read_bytes() == before


# --- EIO on read --------------------------------------------------------------------------


@pytest.mark.req("FLT-084")
def test_eio_on_a_load_fails_that_load_and_no_other(cls: type[JournalStorage], path: str) -> None:
    with cls(path) as storage:
        _populate_with_a_distant_record(storage)
    layer = FaultLayer()
    storage = cls(path, readonly=True, file_layer=layer)
    try:
        expected = contents(storage)
        # A bad sector under the current record of oid 2 only.
        offset = storage._index.get(oid(2)) or storage._lookup_more(oid(2))
        assert offset
        layer.bad_spans.append((path, offset, offset + 1))
        for _ in range(2):
            with pytest.raises(DiskReadError) as info:
                storage.load(oid(2))
            # A typed error that is also the OSError, naming file and offset.
            assert isinstance(info.value, OSError) and isinstance(info.value, DhruvaError)
            assert info.value.errno == errno.EIO
            assert info.value.filename == path
            assert info.value.offset == offset
            assert str(info.value).startswith(f"{path} at offset {offset}: ")
            # The storage keeps serving every other load.
            assert storage.load(oid(1)).data == expected[1]
            assert storage.load(oid(0)).data == expected[0]
        assert layer.failed_reads >= 2
        layer.bad_spans.clear()  # the sector is readable again (remapped)
        assert storage.load(oid(2)).data == expected[2]
    finally:
        storage.close()


@pytest.mark.req("FLT-085")
def test_eio_through_the_server_fails_one_load_and_serves_other_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes: list[int] = []
    real_error = ClientStorage._error

    def recording_error(self: ClientStorage, error: wire.Error) -> DhruvaError:
        codes.append(error.code)
        return real_error(self, error)

    monkeypatch.setattr(ClientStorage, "_error", recording_error)
    path = str(tmp_path / "db.dhruva")
    with FileStorage(path) as storage:
        _populate_with_a_distant_record(storage)
    layer = FaultLayer()
    storage = FileStorage(path, file_layer=layer)
    offset = storage._index.get(oid(2)) or storage._lookup_more(oid(2))
    assert offset
    layer.bad_spans.append((path, offset, offset + 1))
    server = StorageServer(storage, str(tmp_path / "server.sock"))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    victim: Any = None
    other: Any = None
    try:
        victim = ClientStorage(server.address)
        other = ClientStorage(server.address)
        with pytest.raises(DhruvaError):
            victim.load(oid(2))
        assert codes == [wire.ErrorCode.STORAGE_FAILURE]
        # The same client and another one go on being served.
        assert victim.load(oid(1)).data == b"one again"
        assert other.load(oid(0)).data == b"root"
        with pytest.raises(DhruvaError):
            other.load(oid(2))
        assert codes == [wire.ErrorCode.STORAGE_FAILURE] * 2
        layer.bad_spans.clear()
        assert other.load(oid(2)).data == b"two late"
    finally:
        for client in (victim, other):
            if client is not None:
                client.close()
        server.stop()
        thread.join(timeout=10)
