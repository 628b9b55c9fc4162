"""A full disk (spec/fault-model.md, "Full disk": FLT-070..FLT-072).

A full disk must be an OSError that the storage survives, never a signal, and
the storage must recover by itself once space is back: loads keep working
while the disk is full, and the first commit after it cuts the file back to
the last durable end and proceeds.  Two ways to fill a disk: a real 3 MiB
tmpfs (needs root and ``mount``; the SIGBUS of issue 10 lived only there),
and a file layer that answers ENOSPC to every write while ``full`` is set.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from _fault_layers import FaultLayer
from _journal_storages import commit, oid

from dhruva import wire
from dhruva.client_storage import ClientStorage
from dhruva.error import DhruvaError
from dhruva.file_index import DiskIndex
from dhruva.file_storage import FileStorage
from dhruva.journal_storage import JournalStorage
from dhruva.server.storage_server import StorageServer

# --- the storage on a full disk ------------------------------------------------------


@pytest.mark.req("FLT-070", "FLT-071")
def test_storage_recovers_once_space_is_back(
    cls: type[JournalStorage], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    layer = FaultLayer()
    storage = cls(path, file_layer=layer)
    commit(storage, (0, b"root", [1]), (1, b"one", []))
    layer.full = True
    with caplog.at_level(logging.WARNING, logger="dhruva.file_storage"):
        for attempt in range(2):
            with pytest.raises(OSError) as info:
                commit(storage, (1, b"lost %d" % attempt, []), (2, b"new", []))
            assert info.value.errno == errno.ENOSPC
            # [FLT-070] Loads answer from the committed data while the disk is full.
            assert storage.load(oid(1)).data == b"one"
            assert storage.load(oid(0)).data == b"root"
            assert storage.get_size() == 2
    assert any("a commit failed" in r.getMessage() for r in caplog.records)
    layer.full = False
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dhruva.file_storage"):
        # [FLT-071] No reopen: the next commit cuts the file back and proceeds.
        commit(storage, (1, b"after", []), (2, b"new", []))
    assert any("cut back" in r.getMessage() for r in caplog.records)
    assert storage.load(oid(1)).data == b"after"
    storage.close()
    with cls(path) as reopened:
        assert reopened.load(oid(1)).data == b"after"
        assert reopened.load(oid(2)).data == b"new"
        assert [tid for tid, *_ in reopened.iter_transactions()] == [1, 2]
    # Nothing had to be set aside: the failed commits' bytes were cut cleanly.
    assert not os.path.exists(path + ".tr0")


@pytest.mark.req("FLT-072")
def test_index_growth_on_a_full_disk_is_an_error_not_a_signal(path: str) -> None:
    """The sidecar grows by reserving space: ENOSPC there fails the checkpoint only."""
    layer = FaultLayer()
    storage = FileStorage(path, file_layer=layer)
    commit(storage, (0, b"root", []))
    storage.checkpoint()
    capacity = storage._disk.capacity if storage._disk is not None else 0
    storage.begin()
    for number in range(1, capacity + 10):  # past the index's capacity: it must grow
        storage.store(oid(number), b"x")
    storage.end()
    layer.full = True
    storage.close()  # the checkpoint at close fails; close does not
    assert layer.refused >= 1
    layer.full = False
    with FileStorage(path) as reopened:
        assert reopened.get_size() == capacity + 10
        assert reopened.load(oid(capacity + 9)).data == b"x"
    index = DiskIndex.open(path + ".index", reopened.file_id, readonly=True)
    assert index is not None
    index.close()


@pytest.mark.req("RCV-060", "FLT-070")
def test_a_nearly_full_disk_takes_small_commits_without_free_space(
    cls: type[JournalStorage], path: str
) -> None:
    layer = FaultLayer()
    storage = cls(path, file_layer=layer)
    commit(storage, (0, b"root", []))
    free_end = os.path.getsize(path)
    assert free_end >= 64 * 1024, "the first commit left no free space"
    # Fill the free space, then leave the disk room for 4 KiB more: a commit
    # that does not fit is written without the 64 KiB of free space after it.
    layer.room = 4096
    number = 1
    while os.path.getsize(path) <= free_end + 1024:
        commit(storage, (number, b"x" * 100, []))
        number += 1
    assert number > 300, "the free space held too few commits"
    assert layer.refused >= 1, "no commit was refused its free space"
    storage.close()
    with cls(path, readonly=True) as reopened:
        assert reopened.get_size() == number
        assert reopened.load(oid(number - 1)).data == b"x" * 100
    assert not os.path.exists(path + ".tr0")


# --- a real full disk: a small tmpfs ----------------------------------------------------

_SCENARIO = """
import os, sys
from dhruva import Connection
from dhruva.file_storage import FileStorage
from dhruva.persistent_dict import PersistentDict
directory = sys.argv[1]
storage = FileStorage(os.path.join(directory, "db.dhruva"))
connection = Connection(storage)
root = connection.get_root()
for i in range(60):
    for j in range(50):
        root[(i, j)] = PersistentDict()
    connection.commit()
try:
    with open(os.path.join(directory, "filler"), "wb") as filler:
        while True:
            filler.write(bytes(4096))
            filler.flush()
except OSError as exc:
    assert exc.errno == 28, exc
storage.close()
print("closed")
"""


@pytest.mark.req("FLT-072")
def test_close_on_a_full_tmpfs_does_not_die_of_sigbus(small_tmpfs: Path) -> None:
    """Issue 10 item 1: the index checkpoint at close used to write into a hole."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-c", _SCENARIO, str(small_tmpfs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "closed" in result.stdout
    os.unlink(small_tmpfs / "filler")
    with FileStorage(str(small_tmpfs / "db.dhruva"), readonly=True) as storage:
        assert storage.get_size() == 1 + 60 * 50


# --- the server on a full disk -------------------------------------------------------------


@pytest.mark.req("FLT-070", "FLT-071")
def test_server_answers_loads_on_a_full_disk_and_commits_once_space_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes: list[int] = []
    real_error = ClientStorage._error

    def recording_error(self: ClientStorage, error: wire.Error) -> DhruvaError:
        codes.append(error.code)
        return real_error(self, error)

    monkeypatch.setattr(ClientStorage, "_error", recording_error)
    layer = FaultLayer()
    storage = FileStorage(str(tmp_path / "db.dhruva"), file_layer=layer)
    server = StorageServer(storage, str(tmp_path / "server.sock"))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    writer: Any = None
    reader: Any = None
    try:
        writer = ClientStorage(server.address)
        reader = ClientStorage(server.address)
        first = writer.new_oid()
        commit(writer, (int.from_bytes(first, "big"), b"kept", []))
        reader.sync()  # learn of the commit (else its load is a read conflict)
        layer.full = True
        second = writer.new_oid()
        writer.begin()
        writer.store(second, b"refused", b"")
        with pytest.raises(DhruvaError):
            writer.end()
        assert codes == [wire.ErrorCode.STORAGE_FAILURE]
        # Loads are answered while the disk is full, for every client.
        assert reader.load(first).data == b"kept"
        assert writer.load(first).data == b"kept"
        layer.full = False
        # Space is back: the next commit succeeds without a restart.
        writer.begin()
        writer.store(second, b"stored", b"")
        writer.end()
        reader.sync()
        assert reader.load(second).data == b"stored"
        assert codes == [wire.ErrorCode.STORAGE_FAILURE]
    finally:
        for client in (writer, reader):
            if client is not None:
                client.close()
        server.stop()
        thread.join(timeout=10)
