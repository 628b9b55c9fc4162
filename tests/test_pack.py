"""Tests of the two-phase pack of FileStorage and FileStorage2 (spec: pack.md, file-format.md)."""

from __future__ import annotations

import os
import random
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
from _journal_storages import commit, contents, oid

from dhruva import journal
from dhruva.error import DhruvaError, DhruvaKeyError
from dhruva.file_pack import PackProgress, crc32_combine
from dhruva.file_storage2 import JournalStorage
from dhruva.fileio import OS_FILES, DataFile


def check_file(path: str) -> journal.ScanResult:
    """Scan the whole file; it must be valid with no tail."""
    data = Path(path).read_bytes()
    journal.decode_file_header(data, path)
    result = journal.scan(data, journal.FILE_HEADER_SIZE, path)
    assert result.tail is None
    return result


# --- CRC combination ------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(0, 0), (0, 5), (5, 0), (40, 1), (40, 100_000), (3, 7)])
def test_crc32_combine_matches_zlib(sizes: tuple[int, int]) -> None:
    rng = random.Random(sum(sizes))
    first = rng.randbytes(sizes[0])
    second = rng.randbytes(sizes[1])
    combined = crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
    assert combined == zlib.crc32(first + second)


# --- the two-phase pack -----------------------------------------------------------------


@pytest.mark.req("PACK-002", "PACK-010", "PACK-011", "PACK-012", "PACK-020")
def test_commits_during_a_pack_survive_it(cls: type[JournalStorage], path: str) -> None:
    with cls(path) as storage:
        commit(storage, (0, b"root", [1, 2]), (1, b"one", []), (2, b"two", [3]), (3, b"three", []))
        commit(storage, (4, b"garbage", []), (2, b"two v2", []))  # 3 now unreachable
        storage.pack_begin()
        assert storage.packing
        # Commits interleave with the steps: a new object, a rewrite, and a
        # reference to an object that was garbage when the pack began.
        commit(storage, (5, b"new during pack", []), (0, b"root v2", [1, 2, 5]))
        storage.pack_step(budget=1)
        commit(storage, (1, b"one v2", [3]))
        result = storage.pack_finish()
        assert not storage.packing
        assert isinstance(result, PackProgress) and result.phase == "done"
        assert result.commits_during_pack == 2
        expected = {0: b"root v2", 1: b"one v2", 2: b"two v2", 3: b"three", 5: b"new during pack"}
        assert contents(storage) == expected
        commit(storage, (6, b"after", []))
        expected[6] = b"after"
        tids = [tid for tid, *_ in storage.iter_transactions()]
    assert tids == [2, 3, 4, 5]
    check_file(path)
    with cls(path) as storage:
        assert contents(storage) == expected


@pytest.mark.req("PACK-020")
def test_a_rewrite_during_the_pack_wins_over_the_copied_revision(
    cls: type[JournalStorage], path: str
) -> None:
    with cls(path) as storage:
        commit(storage, (0, b"root", [1]), (1, b"old", []))
        storage.pack_begin()
        storage.pack_step()  # object 1's old record is copied now
        commit(storage, (1, b"new", []))
        storage.pack_finish()
        assert storage.load(oid(1)).data == b"new"
    with cls(path) as storage:
        assert storage.load(oid(1)).data == b"new"


@pytest.mark.req("PACK-013")
def test_abort_leaves_the_file_untouched(cls: type[JournalStorage], path: str) -> None:
    with cls(path) as storage:
        commit(storage, (0, b"root", []), (1, b"garbage", []))
        before = Path(path).read_bytes()
        storage.pack_begin()
        assert os.path.exists(path + ".pack")
        storage.pack_step()
        storage.pack_abort()
        assert not os.path.exists(path + ".pack")
        assert Path(path).read_bytes() == before
        assert contents(storage) == {0: b"root", 1: b"garbage"}
        storage.pack_begin()
    # Closing abandons the running pack too.
    assert not os.path.exists(path + ".pack")
    assert Path(path).read_bytes() == before


@pytest.mark.req("PACK-014")
def test_misuse_of_the_pack_api_raises(cls: type[JournalStorage], path: str) -> None:
    with cls(path) as storage:
        commit(storage, (0, b"root", []))
        with pytest.raises(DhruvaError, match="without pack_begin"):
            storage.pack_step()
        with pytest.raises(DhruvaError, match="without pack_begin"):
            storage.pack_finish()
        storage.pack_begin()
        with pytest.raises(DhruvaError, match="already running"):
            storage.pack_begin()
        storage.begin()
        storage.store(oid(1), b"x")
        with pytest.raises(DhruvaError, match="during a transaction"):
            storage.pack_finish()
        assert not os.path.exists(path + ".pack")
        storage.end()
        assert storage.load(oid(0)).data == b"root"


def test_pack_reports_progress(cls: type[JournalStorage], path: str) -> None:
    seen: list[PackProgress] = []
    with cls(path) as storage:
        commit(storage, (0, b"root", [1]), (1, b"one", []), (2, b"garbage", []))
        storage.pack(progress=lambda p: seen.append(p))
    assert seen and seen[-1].phase == "done"
    assert seen[-1].records_copied == 2 and seen[-1].objects_before == 3


@pytest.mark.req("PACK-001")
def test_dangling_references_keep_nothing_and_do_not_fail(
    cls: type[JournalStorage], path: str
) -> None:
    with cls(path) as storage:
        commit(storage, (0, b"root", [7, 1]), (1, b"one", [0]))
        storage.pack()
        assert contents(storage) == {0: b"root", 1: b"one"}
        with pytest.raises(DhruvaKeyError):
            storage.load(oid(7))


# --- memory and syncs -------------------------------------------------------------------


class CountingLayer:
    """The OS file layer, counting syncs per path."""

    def __init__(self) -> None:
        self.syncs: dict[str, int] = {}

    def open(self, path: str, create: bool, readonly: bool) -> DataFile:
        inner = OS_FILES.open(path, create, readonly)
        layer = self

        class Counting:
            def __init__(self) -> None:
                self.path = inner.path

            def __getattr__(self, name: str) -> Any:
                return getattr(inner, name)

            def sync(self) -> None:
                layer.syncs[self.path] = layer.syncs.get(self.path, 0) + 1
                inner.sync()

        result: DataFile = Counting()  # type: ignore[assignment]
        return result

    def exists(self, path: str) -> bool:
        return OS_FILES.exists(path)

    def rename(self, source: str, target: str) -> None:
        OS_FILES.rename(source, target)

    def remove(self, path: str) -> None:
        OS_FILES.remove(path)

    def sync_directory(self, path: str) -> None:
        OS_FILES.sync_directory(path)


def big_database(storage: JournalStorage, count: int, size: int) -> None:
    """``count`` live objects of ``size`` bytes in a chain from the root, and as much garbage."""
    payload = b"p" * size
    for start in range(0, count, 100):
        storage.begin()
        for number in range(start, min(start + 100, count)):
            refs = oid(number + 1) if number + 1 < count else b""
            storage.store(oid(number), payload, refs)
            storage.store(oid(count + number), payload, b"")
        storage.end()


@pytest.mark.req("PACK-030", "PACK-031", "RCV-025")
def test_pack_memory_is_bounded_and_it_syncs_the_new_file_once(
    cls: type[JournalStorage], path: str
) -> None:
    count, size = 1500, 20_000  # 30 MB live, 60 MB file
    layer = CountingLayer()
    with cls(path, file_layer=layer) as storage:
        big_database(storage, count, size)
        assert os.path.getsize(path) > 55_000_000
        layer.syncs.clear()
        tracemalloc.start()
        try:
            storage.pack()
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert storage.get_size() == count
        assert storage.load(oid(count - 1)).data == b"p" * size
    # The write buffer and one read span, never the live data (30 MB).
    assert peak < 8_000_000, f"pack peaked at {peak} bytes"
    # [RCV-025] One sync of PATH.pack, none per record.
    assert layer.syncs.get(path + ".pack") == 1
    check_file(path)


@pytest.mark.req("PACK-040")
def test_step_hook_names_every_step_in_order(cls: type[JournalStorage], path: str) -> None:
    steps: list[str] = []
    with cls(path) as storage:
        commit(storage, (0, b"root", [1]), (1, b"one", []))
        storage._pack_step_hook = steps.append
        storage.pack()
    expected = [
        "created",
        "copied",
        "walked",
        "packed-transaction",
        "commits-copied",
        "synced",
        "index-discarded",
        "renamed",
        "directory-synced",
        "index-written",
    ]
    assert steps == expected


@pytest.mark.req("PACK-021")
def test_the_packed_transaction_holds_the_snapshot_state(
    cls: type[JournalStorage], path: str
) -> None:
    with cls(path) as storage:
        commit(storage, (0, b"root", [1]), (1, b"a at snapshot", [2]), (2, b"b", []))
        storage.pack_begin()
        # Rewritten before the walk reaches it: its snapshot record is still copied.
        commit(storage, (1, b"a later", []))
        storage.pack_finish()
        assert contents(storage)[1] == b"a later"
    data = Path(path).read_bytes()
    first = journal.decode_transaction(data, journal.FILE_HEADER_SIZE, path)
    assert first.tid == 1
    assert {r.oid: r.data for r in first.records} == {
        oid(0): b"root",
        oid(1): b"a at snapshot",
        oid(2): b"b",
    }


def test_pack_bench_runs_and_checks_its_result() -> None:
    import sys

    bench_dir = str(Path(__file__).resolve().parent.parent / "tools" / "bench")
    sys.path.insert(0, bench_dir)
    try:
        import pack_bench
    finally:
        sys.path.remove(bench_dir)
    result = pack_bench.bench_pack(500)
    assert [r["storage"] for r in result["results"]] == ["FileStorage", "FileStorage2"]
    for figures in result["results"]:
        assert figures["live_objects"] == 500 and figures["objects_before"] == 550
        assert figures["bytes_after"] < figures["bytes_before"]


def reachable(model: dict[bytes, tuple[bytes, bytes]]) -> set[bytes]:
    seen: set[bytes] = set()
    todo = [oid(0)]
    while todo:
        current = todo.pop()
        if current in seen or current not in model:
            continue
        seen.add(current)
        refs = model[current][1]
        todo.extend(refs[i : i + 8] for i in range(0, len(refs), 8))
    return seen


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.req("PACK-020", "PACK-021", "HIST-031")
def test_random_commits_interleaved_with_pack_steps(
    cls: type[JournalStorage], path: str, seed: int
) -> None:
    """Against a dict model: every state from the pack point on keeps its reachable objects."""
    from dhruva.history import open_at

    rng = random.Random(seed)
    model: dict[bytes, tuple[bytes, bytes]] = {}
    models: dict[int, dict[bytes, tuple[bytes, bytes]]] = {}
    tid = 0

    def random_commit(storage: JournalStorage) -> None:
        nonlocal tid
        storage.begin()
        for _ in range(rng.randint(1, 4)):
            target = oid(rng.randrange(30))
            refs = b"".join(oid(rng.randrange(30)) for _ in range(rng.randint(0, 3)))
            data = rng.randbytes(rng.randint(0, 40))
            storage.store(target, data, refs)
            model[target] = (data, refs)
        storage.end()
        tid += 1
        models[tid] = dict(model)

    with cls(path) as storage:
        for _ in range(rng.randint(1, 15)):
            random_commit(storage)
        pack_point = tid
        storage.pack_begin()
        while True:
            if rng.random() < 0.6:
                random_commit(storage)
            if storage.pack_step(budget=rng.randint(1, 3)) and rng.random() < 0.3:
                break
        storage.pack_finish()
        for number in reachable(model):
            assert storage.load(number).data == model[number][0]
    for at in range(pack_point, tid + 1):
        with open_at(path, at) as view:
            state = models[at]
            for number in reachable(state):
                assert view.load(number) == (number, *state[number])


# --- held snapshots (SAPI-096, PACK-050) ------------------------------------------------


@pytest.mark.req("PACK-050", "SAPI-096")
def test_two_phase_pack_keeps_what_held_snapshots_reach(
    cls: type[JournalStorage], path: str
) -> None:
    with cls(path) as storage:
        # root -> 1 -> 2 at t1; then the root drops 1, before the pack.
        commit(storage, (0, b"root", [1]), (1, b"one", [2]), (2, b"two", []))
        t1 = storage.last_tid()
        storage.set_oldest_snapshot(t1)
        commit(storage, (0, b"root v2", [3]), (3, b"three", [4]), (4, b"four", []))
        t2 = storage.last_tid()
        storage.pack_begin()
        storage.pack_step(budget=1)
        # During the pack the root drops 3 (reachable at t2) and 2 is rewritten.
        commit(storage, (0, b"root v3", []), (2, b"two v3", []))
        t3 = storage.last_tid()
        storage.pack_step(budget=1)
        storage.pack_finish()
        assert [storage.load_at(oid(n), t1).data for n in (0, 1, 2)] == [b"root", b"one", b"two"]
        assert [storage.load_at(oid(n), t2).data for n in (0, 3, 4)] == [
            b"root v2",
            b"three",
            b"four",
        ]
        assert storage.load_at(oid(2), t3).data == b"two v3"
        with pytest.raises(DhruvaKeyError):
            storage.load_at(oid(3), t1)
        # Released: the next pack keeps only what the root reaches.
        storage.set_oldest_snapshot(None)
        storage.pack()
        assert contents(storage) == {0: b"root v3"}
    check_file(path)


@pytest.mark.req("PACK-001", "SAPI-093")
def test_pack_without_held_snapshot_is_unchanged_by_the_ledger(
    cls: type[JournalStorage], path: str
) -> None:
    with cls(path) as storage:
        commit(storage, (0, b"root", [1]), (1, b"one", []))
        commit(storage, (0, b"root v2", []))
        storage.pack()
        assert contents(storage) == {0: b"root v2"}
