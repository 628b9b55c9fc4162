"""VersionLedger (dhruva/snapshots.py) and the snapshot paths of the local storages.

The storage contract itself is in conformance/test_snapshots.py; these are
the ledger's own rules and the white-box checks of how the storages use it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dhruva.error import DhruvaError, SnapshotTooOldError
from dhruva.file_storage import FileStorage, FileStorage2
from dhruva.journal_storage import JournalStorage
from dhruva.snapshots import CURRENT, VersionLedger
from dhruva.storage import CAP_SNAPSHOTS, Record, Storage
from dhruva.utils import int8_to_str

A = int8_to_str(1)
B = int8_to_str(2)


def rec(oid: bytes, data: bytes, refs: bytes = b"") -> Record:
    return Record(oid, data, refs)


# --- VersionLedger --------------------------------------------------------------------


@pytest.mark.req("SAPI-092", "SAPI-093")
def test_ledger_answers_each_tid_with_the_version_it_saw() -> None:
    ledger = VersionLedger(start_tid=1)
    ledger.set_floor(1)
    ledger.supersede(2, [(A, rec(A, b"a1")), (B, None)])
    ledger.supersede(3, [(A, rec(A, b"a2"))])
    assert ledger.lookup(A, 1) == rec(A, b"a1")
    assert ledger.lookup(A, 2) == rec(A, b"a2")
    assert ledger.lookup(A, 3) is CURRENT
    assert ledger.lookup(B, 1) is None  # B was created by tid 2
    assert ledger.lookup(B, 2) is CURRENT
    assert len(ledger) == 3


@pytest.mark.req("SAPI-093")
def test_ledger_keeps_nothing_while_no_snapshot_is_held() -> None:
    ledger = VersionLedger(start_tid=5)
    assert not ledger.wanted(6)
    ledger.supersede(6, ())
    assert len(ledger) == 0 and ledger.kept_bytes == 0
    # The commit's old versions were not kept: tid 5 can no longer be answered.
    with pytest.raises(SnapshotTooOldError) as info:
        ledger.lookup(A, 5)
    assert (info.value.tid, info.value.oldest) == (5, 6)
    assert ledger.lookup(A, 6) is CURRENT


@pytest.mark.req("SAPI-093", "SAPI-094")
def test_ledger_floor_drops_what_no_snapshot_reads() -> None:
    ledger = VersionLedger(start_tid=1)
    ledger.set_floor(1)
    ledger.supersede(2, [(A, rec(A, b"a1"))])
    ledger.supersede(3, [(A, rec(A, b"a2"))])
    ledger.set_floor(2)
    assert len(ledger) == 1  # the version superseded at 2 is read by no held snapshot
    assert ledger.lookup(A, 2) == rec(A, b"a2")
    with pytest.raises(SnapshotTooOldError):
        ledger.lookup(A, 1)
    ledger.set_floor(None)
    assert len(ledger) == 0
    with pytest.raises(SnapshotTooOldError):
        ledger.lookup(A, 2)
    assert ledger.lookup(A, 3) is CURRENT


@pytest.mark.req("SAPI-094")
def test_ledger_bound_moves_oldest_never_answers_wrongly() -> None:
    ledger = VersionLedger(start_tid=0, limit_bytes=200)
    ledger.set_floor(0)
    for tid in range(1, 11):
        ledger.supersede(tid, [(A, rec(A, b"x" * 50 + bytes([tid])))])
    assert ledger.kept_bytes <= 200
    assert ledger.oldest > 0
    for tid in range(0, 10):
        if tid < ledger.oldest:
            with pytest.raises(SnapshotTooOldError):
                ledger.lookup(A, tid)
        else:
            # The version tid saw is the one superseded at tid + 1.
            assert ledger.lookup(A, tid) == rec(A, b"x" * 50 + bytes([tid + 1]))


@pytest.mark.req("SAPI-094")
def test_ledger_with_no_room_keeps_nothing() -> None:
    ledger = VersionLedger(limit_bytes=0)
    ledger.set_floor(0)
    assert not ledger.wanted(1)
    with pytest.raises(ValueError):
        VersionLedger(limit_bytes=-1)


@pytest.mark.req("SAPI-096")
def test_ledger_kept_refs_are_those_of_kept_versions() -> None:
    ledger = VersionLedger(start_tid=1)
    ledger.set_floor(1)
    ledger.supersede(2, [(A, rec(A, b"a", B)), (B, None)])
    ledger.supersede(3, [(B, rec(B, b"b"))])
    assert list(ledger.kept_refs()) == [B]
    ledger.set_floor(None)
    assert list(ledger.kept_refs()) == []


@pytest.mark.req("SAPI-094", "PG-086")
def test_ledger_forget_before_makes_older_snapshots_too_old() -> None:
    ledger = VersionLedger(start_tid=1)
    ledger.set_floor(1)
    ledger.supersede(2, [(A, rec(A, b"a1"))])
    # A commit whose replaced versions could not be read (a lost connection).
    ledger.supersede(3, ())
    ledger.forget_before(3)
    for tid in (1, 2):
        with pytest.raises(SnapshotTooOldError):
            ledger.lookup(A, tid)
    assert ledger.lookup(A, 3) is CURRENT
    assert len(ledger) == 0


# --- storages -------------------------------------------------------------------------


@pytest.mark.req("SAPI-097")
def test_storage_without_the_capability_refuses() -> None:
    class Plain(Storage):
        pass

    storage = Plain()
    assert CAP_SNAPSHOTS not in storage.capabilities
    with pytest.raises(DhruvaError):
        storage.last_tid()
    with pytest.raises(DhruvaError):
        storage.load_at(A, 0)


@pytest.mark.parametrize("cls", [FileStorage, FileStorage2])
@pytest.mark.req("SAPI-093")
def test_file_commit_reads_nothing_while_no_snapshot_is_held(
    cls: type[JournalStorage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cls(str(tmp_path / "data.dhruva")) as storage:
        storage.begin()
        storage.store(A, b"a1")
        storage.end()
        loads: list[bytes] = []
        real_load = storage.load

        def counting_load(oid: bytes) -> Record:
            loads.append(oid)
            return real_load(oid)

        monkeypatch.setattr(storage, "load", counting_load)
        storage.begin()
        storage.store(A, b"a2")
        storage.end()
        assert loads == []  # the single-process case pays nothing
        storage.set_oldest_snapshot(storage.last_tid())
        storage.begin()
        storage.store(A, b"a3")
        storage.store(B, b"b3")
        storage.end()
        assert sorted(loads) == [A, B]
        assert storage._ledger.lookup(A, 2) == rec(A, b"a2")


@pytest.mark.parametrize("cls", [FileStorage, FileStorage2])
@pytest.mark.req("SAPI-090", "SAPI-098")
def test_file_last_tid_is_the_journal_tid_and_the_ledger_restarts(
    cls: type[JournalStorage], tmp_path: Path
) -> None:
    path = str(tmp_path / "data.dhruva")
    with cls(path) as storage:
        for n in range(3):
            storage.begin()
            storage.store(A, b"a%d" % n)
            storage.end()
        assert storage.last_tid() == max(t for t, *_ in storage.iter_transactions())
        held = storage.last_tid()
        storage.set_oldest_snapshot(held)
        storage.begin()
        storage.store(A, b"a3")
        storage.end()
        assert storage.load_at(A, held).data == b"a2"
        with pytest.raises(SnapshotTooOldError):
            storage.load_at(A, 1)  # committed while no snapshot was held
        last = storage.last_tid()
    with cls(path) as storage:
        assert storage.last_tid() == last
        with pytest.raises(SnapshotTooOldError):
            storage.load_at(A, held)
        assert storage.load_at(A, last).data == b"a3"
    with cls(path, readonly=True) as storage:
        assert storage.last_tid() == last
        assert storage.load_at(A, last).data == b"a3"
