"""Snapshot reads (spec: ``spec/storage-api.md``, "Snapshots"), on every back-end that has them.

Every test needs the capability ``snapshots``.  They use the Storage
interface only, with one white-box exception named where it is used: the
memory bound of the versions kept (SAPI-094) has no public knob, so that
test lowers it on the storage's ``VersionLedger`` and is skipped on a
back-end whose storage has none (the server's bound is tested with it).

A back-end that keeps more history than the reference ones may answer an
old snapshot that the spec allows it to refuse; the tests then accept
either the right record or ``SnapshotTooOldError`` (never another record),
through :func:`assert_version_or_too_old`.
"""

from __future__ import annotations

import pytest
from dhruva_conformance.backends import StorageFactory

from dhruva.error import DhruvaKeyError, SnapshotTooOldError
from dhruva.storage import Record, Storage
from dhruva.utils import ROOT_OID

pytestmark = pytest.mark.needs("snapshots")


def commit(storage: Storage, records: dict[bytes, tuple[bytes, bytes]]) -> int:
    """Store ``records`` (oid -> (data, refs)) in one transaction; return the new last_tid."""
    storage.begin()
    for oid, (data, refs) in records.items():
        storage.store(oid, data, refs)
    storage.end()
    return storage.last_tid()


def new_oids(storage: Storage, count: int) -> list[bytes]:
    """Return ``count`` fresh oids other than the root's."""
    oids: list[bytes] = []
    while len(oids) < count:
        oid = storage.new_oid()
        if oid != ROOT_OID:
            oids.append(oid)
    return oids


def assert_version_or_too_old(
    storage: Storage, oid: bytes, tid: int, expected: tuple[bytes, bytes] | None
) -> bool:
    """Check ``load_at(oid, tid)``: the expected version (None: missing) or SnapshotTooOldError.

    Returns True when the storage answered, False when it said too old.
    """
    try:
        record = storage.load_at(oid, tid)
    except SnapshotTooOldError as exc:
        assert exc.tid == tid
        assert exc.oldest > tid
        return False
    except DhruvaKeyError:
        assert expected is None, f"load_at({oid.hex()}, {tid}) lost a committed version"
        return True
    assert expected is not None, f"load_at({oid.hex()}, {tid}) found a version made later"
    assert (record.data, record.refs) == expected
    return True


# --- the read point -----------------------------------------------------------------


@pytest.mark.req("SAPI-090")
def test_last_tid_starts_at_zero_and_increases(storage: Storage) -> None:
    assert storage.last_tid() == 0
    (a,) = new_oids(storage, 1)
    seen = [storage.last_tid()]
    for n in range(5):
        seen.append(commit(storage, {ROOT_OID: (b"r%d" % n, a), a: (b"a%d" % n, b"")}))
    assert seen == sorted(set(seen)), f"tids do not increase: {seen}"
    # An empty transaction may leave it unchanged; it never goes back.
    storage.begin()
    storage.end()
    assert storage.last_tid() >= seen[-1]
    # sync() of a storage with no other writer leaves it where it is.
    storage.sync()
    assert storage.last_tid() >= seen[-1]


@pytest.mark.req("SAPI-090")
@pytest.mark.needs("reopen")
def test_last_tid_survives_reopen(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    before = commit(storage, {ROOT_OID: (b"one", b"")})
    before = commit(storage, {ROOT_OID: (b"two", b"")})
    storage.close()
    storage = storage_factory.open(reopen=True)
    assert storage.last_tid() >= before
    after = commit(storage, {ROOT_OID: (b"three", b"")})
    assert after > before
    storage.close()


@pytest.mark.req("SAPI-090", "SAPI-098")
@pytest.mark.needs("reopen")
def test_crash_loses_no_commit_and_load_at_works_after_reopen(
    storage_factory: StorageFactory,
) -> None:
    storage = storage_factory.open()
    (a,) = new_oids(storage, 1)
    first = commit(storage, {ROOT_OID: (b"r1", a), a: (b"a1", b"")})
    storage.set_oldest_snapshot(first)
    last = commit(storage, {a: (b"a2", b"")})
    assert storage.load_at(a, first).data == b"a1"
    storage_factory.crash(storage)

    storage = storage_factory.open(reopen=True)
    assert storage.last_tid() >= last
    assert storage.load(a).data == b"a2"
    assert storage.load(ROOT_OID).data == b"r1"
    # [SAPI-098] What the crashed storage kept for its snapshots is gone
    # (memory only); an old tid is answered right or refused, never wrongly.
    assert_version_or_too_old(storage, a, first, (b"a1", b""))
    # The new read point serves snapshots as before.
    point = storage.last_tid()
    storage.set_oldest_snapshot(point)
    commit(storage, {a: (b"a3", b"")})
    assert storage.load_at(a, point).data == b"a2"
    assert storage.load_at(a, storage.last_tid()).data == b"a3"
    storage.close()


# --- load_at -------------------------------------------------------------------------


@pytest.mark.req("SAPI-092", "SAPI-093")
def test_load_at_reads_old_versions_while_a_snapshot_is_held(storage: Storage) -> None:
    a, b = new_oids(storage, 2)
    t1 = commit(storage, {ROOT_OID: (b"root1", a), a: (b"a1", b"")})
    storage.set_oldest_snapshot(t1)
    t2 = commit(storage, {a: (b"a2", b"")})
    t3 = commit(storage, {a: (b"a3", b""), ROOT_OID: (b"root3", a + b), b: (b"b3", a)})
    t4 = commit(storage, {b: (b"b4", b"")})
    assert t1 < t2 < t3 < t4 == storage.last_tid()

    assert storage.load_at(a, t1) == Record(a, b"a1", b"")
    assert storage.load_at(a, t2) == Record(a, b"a2", b"")
    assert storage.load_at(a, t3) == Record(a, b"a3", b"")
    assert storage.load_at(a, t4) == storage.load(a)
    assert storage.load_at(ROOT_OID, t2) == Record(ROOT_OID, b"root1", a)
    assert storage.load_at(ROOT_OID, t3) == Record(ROOT_OID, b"root3", a + b)
    assert storage.load_at(b, t3) == Record(b, b"b3", a)
    # An oid created after the snapshot had no record then.
    for tid in (t1, t2):
        with pytest.raises(DhruvaKeyError):
            storage.load_at(b, tid)
    # Loads at the read point are unchanged by the snapshot.
    assert storage.load(b) == Record(b, b"b4", b"")


@pytest.mark.req("SAPI-092")
def test_load_at_read_point_equals_load(storage: Storage) -> None:
    oids = new_oids(storage, 3)
    commit(storage, {ROOT_OID: (b"root", b"".join(oids))} | {o: (o * 2, b"") for o in oids})
    point = storage.last_tid()
    for oid in [ROOT_OID, *oids]:
        assert storage.load_at(oid, point) == storage.load(oid)
    never = new_oids(storage, 1)[0]
    with pytest.raises(DhruvaKeyError):
        storage.load_at(never, point)


@pytest.mark.req("SAPI-092")
def test_load_at_refuses_bad_tids(storage: Storage) -> None:
    point = commit(storage, {ROOT_OID: (b"root", b"")})
    for bad in ("1", 1.0, None, b"\x00" * 8, True):
        with pytest.raises(TypeError):
            storage.load_at(ROOT_OID, bad)  # type: ignore[arg-type]
    for bad in (-1, point + 1, point + 1000):
        with pytest.raises(ValueError):
            storage.load_at(ROOT_OID, bad)


@pytest.mark.req("SAPI-093", "SAPI-094")
def test_dropped_snapshot_is_too_old_never_wrong(storage: Storage) -> None:
    (a,) = new_oids(storage, 1)
    t1 = commit(storage, {ROOT_OID: (b"root", a), a: (b"a1", b"")})
    storage.set_oldest_snapshot(t1)
    commit(storage, {a: (b"a2", b"")})
    assert storage.load_at(a, t1).data == b"a1"
    storage.set_oldest_snapshot(None)
    t3 = commit(storage, {a: (b"a3", b"")})
    assert_version_or_too_old(storage, a, t1, (b"a1", b""))
    # The root did not change, yet a refusing storage refuses it too: it
    # cannot know which oids the dropped versions would have answered.
    assert_version_or_too_old(storage, ROOT_OID, t1, (b"root", a))
    assert storage.load_at(a, t3).data == b"a3"


@pytest.mark.req("SAPI-094")
def test_commit_without_a_held_snapshot_makes_older_tids_unreliable(storage: Storage) -> None:
    (a,) = new_oids(storage, 1)
    t1 = commit(storage, {ROOT_OID: (b"root", a), a: (b"a1", b"")})
    t2 = commit(storage, {a: (b"a2", b"")})
    assert_version_or_too_old(storage, a, t1, (b"a1", b""))
    assert storage.load_at(a, t2).data == b"a2"


@pytest.mark.req("SAPI-094")
def test_memory_bound_gives_too_old_never_a_wrong_record(storage: Storage) -> None:
    ledger = getattr(storage, "_ledger", None)
    if ledger is None:
        pytest.skip(f"{type(storage).__name__} has no VersionLedger whose bound a test can set")
    ledger.limit_bytes = 4096  # white-box: the only knob of SAPI-094's bound
    (a,) = new_oids(storage, 1)
    t0 = commit(storage, {ROOT_OID: (b"root", a), a: (b"v0", b"")})
    storage.set_oldest_snapshot(t0)
    versions = {t0: b"v0"}
    for n in range(1, 40):
        versions[commit(storage, {a: (b"v%d" % n + b"." * 500, b"")})] = b"v%d" % n + b"." * 500
    answered = refused = 0
    for tid, data in versions.items():
        if assert_version_or_too_old(storage, a, tid, (data, b"")):
            answered += 1
        else:
            refused += 1
    # 40 versions of ~560 bytes cannot all fit in 4 KiB; the recent ones must.
    assert refused > 0
    assert answered >= 2
    # The refused ones are the oldest: the bound drops from the front.
    outcomes = [assert_version_or_too_old(storage, a, tid, (d, b"")) for tid, d in versions.items()]
    assert outcomes == sorted(outcomes)


# --- pack -------------------------------------------------------------------------------


@pytest.mark.req("SAPI-096", "SAPI-099")
@pytest.mark.needs("pack")
def test_pack_keeps_what_a_held_snapshot_reaches(storage: Storage) -> None:
    a, b, c = new_oids(storage, 3)
    # root -> a -> c at t1; then the root drops a for b.
    t1 = commit(storage, {ROOT_OID: (b"root1", a), a: (b"a", c), c: (b"c", b"")})
    storage.set_oldest_snapshot(t1)
    t2 = commit(storage, {ROOT_OID: (b"root2", b), b: (b"b", b"")})
    storage.pack()
    # a and c are unreachable now but reachable at t1: still loadable there.
    assert storage.load_at(ROOT_OID, t1) == Record(ROOT_OID, b"root1", a)
    assert storage.load_at(a, t1) == Record(a, b"a", c)
    assert storage.load_at(c, t1) == Record(c, b"c", b"")
    assert storage.load_at(b, t2) == Record(b, b"b", b"")
    with pytest.raises(DhruvaKeyError):
        storage.load_at(b, t1)
    # Commits and snapshots go on after the pack.
    t3 = commit(storage, {b: (b"b3", b"")})
    assert storage.load_at(b, t2).data == b"b"
    assert storage.load_at(b, t3).data == b"b3"
    assert storage.load_at(a, t1).data == b"a"
    # Once no snapshot holds t1, a pack removes what only t1 reached (SAPI-061).
    storage.set_oldest_snapshot(None)
    storage.pack()
    for gone in (a, c):
        with pytest.raises(DhruvaKeyError):
            storage.load(gone)
    assert storage.load(b).data == b"b3"
