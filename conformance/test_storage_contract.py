"""The storage contract (spec: ``spec/storage-api.md``), run against every back-end.

Each test uses only the Storage interface, so it holds any back-end to the
same contract.  Tests that need a capability declare it with ``needs``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dhruva_conformance.backends import StorageFactory
from dhruva_conformance.faults import FaultyFileLayer

from dhruva.error import DhruvaError, DhruvaKeyError, ReadOnlyError, UnallocatedOidError
from dhruva.storage import Record, Storage
from dhruva.utils import ROOT_OID, int8_to_str, str_to_int8


def commit(storage: Storage, records: dict[bytes, tuple[bytes, bytes]]) -> None:
    """Store ``records`` (oid -> (data, refs)) in one transaction."""
    storage.begin()
    for oid, (data, refs) in records.items():
        storage.store(oid, data, refs)
    storage.end()


def commit_chosen_oids(storage: Storage, records: dict[bytes, tuple[bytes, bytes]]) -> None:
    """Commit records whose oids the test chose itself, not new_oid.

    Skips the test when the back-end refuses such oids, as SAPI-013 allows,
    and only then: any other error fails the test.
    """
    try:
        commit(storage, records)
    except UnallocatedOidError as exc:
        storage.abort_transaction()
        pytest.skip(f"the back-end refuses oids it did not allocate (SAPI-013): {exc}")


def fresh_oids(storage: Storage, count: int) -> list[bytes]:
    """Return ``count`` new oids other than the root's.

    A storage MAY hand out the root oid first (Durus does, and a Connection
    then stores the root there); tests that name the root explicitly must not
    receive it again as an ordinary oid.
    """
    oids: list[bytes] = []
    while len(oids) < count:
        oid = storage.new_oid()
        if oid != ROOT_OID:
            oids.append(oid)
    return oids


# --- oids --------------------------------------------------------------------------


@pytest.mark.req("SAPI-001", "SAPI-010")
def test_new_oid_is_eight_bytes_and_unique(storage: Storage) -> None:
    oids = [storage.new_oid() for _ in range(500)]
    assert all(isinstance(oid, bytes) and len(oid) == 8 for oid in oids)
    assert len(set(oids)) == len(oids)


@pytest.mark.req("SAPI-011")
def test_first_new_oid_of_an_empty_database_is_the_root(storage: Storage) -> None:
    assert storage.new_oid() == ROOT_OID
    assert storage.new_oid() != ROOT_OID


@pytest.mark.req("SAPI-010", "SAPI-013")
def test_new_oid_never_returns_a_stored_oid(storage: Storage) -> None:
    # An oid chosen by the caller, far above anything allocated so far.
    high = int8_to_str(1000)
    commit_chosen_oids(storage, {ROOT_OID: (b"root", high), high: (b"high", b"")})
    oids = fresh_oids(storage, 1100)
    assert high not in oids
    assert ROOT_OID not in oids


@pytest.mark.needs("reopen")
@pytest.mark.req("SAPI-010")
def test_new_oid_not_reissued_after_reopen(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    stored = fresh_oids(storage, 10)
    commit(storage, {oid: (b"x" + oid, b"") for oid in stored})
    storage.close()
    storage = storage_factory.open(reopen=True)
    again = fresh_oids(storage, 50)
    assert not set(again) & set(stored)


@pytest.mark.needs("reopen")
@pytest.mark.req("SAPI-010")
def test_new_oid_after_commit_of_the_highest_oid(storage_factory: StorageFactory) -> None:
    """Durus's SQLite storage reissued the highest oid after a reopen."""
    storage = storage_factory.open()
    oids = fresh_oids(storage, 3)
    highest = oids[-1]
    # Only the highest allocated oid is stored, in the last transaction.
    commit(storage, {highest: (b"last", b"")})
    storage.close()
    storage = storage_factory.open(reopen=True)
    assert highest not in fresh_oids(storage, 20)
    storage.close()
    # The same after a crash rather than an orderly close.
    storage = storage_factory.open(reopen=True)
    storage_factory.crash(storage)
    storage = storage_factory.open(reopen=True)
    assert highest not in fresh_oids(storage, 20)


@pytest.mark.needs("reopen")
@pytest.mark.req("SAPI-010")
def test_new_oid_after_reopen_skips_caller_chosen_high_oid(
    storage_factory: StorageFactory,
) -> None:
    storage = storage_factory.open()
    high = int8_to_str(5000)
    commit_chosen_oids(storage, {high: (b"high", b"")})
    storage.close()
    storage = storage_factory.open(reopen=True)
    assert high not in fresh_oids(storage, 5100)


# --- records -------------------------------------------------------------------------


@pytest.mark.req("SAPI-002", "SAPI-020")
def test_store_commit_load_round_trip(storage: Storage) -> None:
    a, b = fresh_oids(storage, 2)
    commit(storage, {a: (b"alpha", b), b: (b"", b"")})
    record = storage.load(a)
    assert isinstance(record, Record)
    assert (record.oid, record.data, record.refs) == (a, b"alpha", b)
    assert type(record.data) is bytes
    assert storage.load(b) == Record(b, b"", b"")


@pytest.mark.req("SAPI-005", "DM-004")
def test_data_is_opaque(storage: Storage) -> None:
    every_byte = bytes(range(256)) * 3
    lookalike = b"DTXN\x00\x00\x00\x01DCMT" + b"\x89DHRUVA\n"
    a, b = fresh_oids(storage, 2)
    commit(storage, {a: (every_byte, b""), b: (lookalike, b"")})
    assert storage.load(a).data == every_byte
    assert storage.load(b).data == lookalike


@pytest.mark.req("SAPI-020")
def test_later_transaction_supersedes(storage: Storage) -> None:
    (a,) = fresh_oids(storage, 1)
    commit(storage, {a: (b"one", b"")})
    commit(storage, {a: (b"two", a)})
    assert storage.load(a) == Record(a, b"two", a)


@pytest.mark.req("SAPI-032")
def test_last_store_in_a_transaction_wins(storage: Storage) -> None:
    (a,) = fresh_oids(storage, 1)
    storage.begin()
    storage.store(a, b"first", b"")
    storage.store(a, b"second", a)
    storage.store(a, b"third", b"")
    storage.end()
    assert storage.load(a) == Record(a, b"third", b"")


@pytest.mark.req("SAPI-038", "SAPI-032")
def test_store_many_stores_each_triple_in_order(storage: Storage) -> None:
    a, b, c, d = fresh_oids(storage, 4)
    storage.begin()
    storage.store(a, b"stored first", b"")
    storage.store_many([(a, b"a1", b""), (b, b"b1", a), (a, b"a2", b + c)])
    storage.store_many([])
    storage.store_many((oid, b"from a generator", b"") for oid in (c, d))
    storage.store(d, b"stored last", b"")
    storage.end()
    assert list(storage.bulk_load([a, b, c, d])) == [
        Record(a, b"a2", b + c),
        Record(b, b"b1", a),
        Record(c, b"from a generator", b""),
        Record(d, b"stored last", b""),
    ]


@pytest.mark.req("SAPI-038", "SAPI-003", "SAPI-004", "SAPI-031")
def test_store_many_refuses_the_first_malformed_triple_as_store_does(storage: Storage) -> None:
    a, b, c = fresh_oids(storage, 3)
    with pytest.raises(DhruvaError):
        storage.store_many([(a, b"outside a transaction", b"")])
    bad: list[tuple[object, type[Exception]]] = [
        ((b"short", b"x", b""), ValueError),
        ((c, b"x", b"1234567"), ValueError),
        ((c, "text is not bytes", b""), TypeError),
        ((c, b"two fields"), ValueError),
    ]
    for triple, error in bad:
        storage.begin()
        with pytest.raises(error):
            storage.store_many([(a, b"before", b""), triple, (b, b"after", b"")])  # type: ignore[list-item]
        # The triple before it is staged, none after: end() commits exactly that.
        storage.end()
        assert storage.load(a) == Record(a, b"before", b"")
        with pytest.raises(DhruvaKeyError):
            storage.load(b)
    with pytest.raises(DhruvaKeyError):
        storage.load(c)


@pytest.mark.req("SAPI-003", "SAPI-004")
def test_store_rejects_malformed_records(storage: Storage) -> None:
    (a,) = fresh_oids(storage, 1)
    storage.begin()
    with pytest.raises(ValueError):
        storage.store(a, b"x", b"1234567")
    with pytest.raises(ValueError):
        storage.store(b"short", b"x", b"")
    with pytest.raises(TypeError):
        storage.store(a, "text is not bytes", b"")  # type: ignore[arg-type]
    storage.abort_transaction()
    storage.begin()
    storage.end()
    with pytest.raises(DhruvaKeyError):
        storage.load(a)


@pytest.mark.req("SAPI-005")
def test_large_records(storage: Storage) -> None:
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB
    a, b = fresh_oids(storage, 2)
    commit(storage, {a: (big, b""), b: (big[::-1], a)})
    assert storage.load(a).data == big
    assert storage.load(b).data == big[::-1]


@pytest.mark.req("SAPI-002", "SAPI-003")
def test_many_refs(storage: Storage) -> None:
    oids = fresh_oids(storage, 20001)
    refs = b"".join(oids[1:])
    commit(storage, {oids[0]: (b"hub", refs)})
    record = storage.load(oids[0])
    assert record.refs == refs
    assert record.ref_oids() == oids[1:]


# --- missing oids and bulk load ------------------------------------------------------


@pytest.mark.req("SAPI-021")
def test_missing_oid_raises_dhruva_key_error(storage: Storage) -> None:
    missing = int8_to_str(123456)
    with pytest.raises(DhruvaKeyError) as info:
        storage.load(missing)
    assert isinstance(info.value, KeyError)
    assert info.value.oid == missing
    with pytest.raises(KeyError):
        storage.load(ROOT_OID)


@pytest.mark.req("SAPI-021")
def test_allocated_but_unstored_oid_is_missing(storage: Storage) -> None:
    (a,) = fresh_oids(storage, 1)
    with pytest.raises(DhruvaKeyError):
        storage.load(a)


@pytest.mark.req("SAPI-022")
def test_bulk_load_keeps_order(storage: Storage) -> None:
    oids = fresh_oids(storage, 30)
    commit(storage, {oid: (b"d%d" % str_to_int8(oid), b"") for oid in oids})
    wanted = oids[::-1] + oids[:3]
    records = list(storage.bulk_load(wanted))
    assert [r.oid for r in records] == wanted
    assert all(r.data == b"d%d" % str_to_int8(r.oid) for r in records)


@pytest.mark.req("SAPI-022")
def test_bulk_load_missing_raises(storage: Storage) -> None:
    oids = fresh_oids(storage, 3)
    commit(storage, {oids[0]: (b"a", b""), oids[2]: (b"c", b"")})
    with pytest.raises(DhruvaKeyError) as info:
        list(storage.bulk_load(oids))
    assert info.value.oid == oids[1]


@pytest.mark.req("SAPI-022")
def test_bulk_load_of_nothing(storage: Storage) -> None:
    assert list(storage.bulk_load([])) == []


# --- transactions ------------------------------------------------------------------------


@pytest.mark.req("SAPI-030")
def test_begin_twice_raises(storage: Storage) -> None:
    (a,) = fresh_oids(storage, 1)
    storage.begin()
    storage.store(a, b"kept", b"")
    with pytest.raises(DhruvaError):
        storage.begin()
    # The open transaction is unharmed and still commits.
    storage.end()
    assert storage.load(a).data == b"kept"


@pytest.mark.req("SAPI-031")
def test_store_outside_transaction_raises(storage: Storage) -> None:
    (a,) = fresh_oids(storage, 1)
    with pytest.raises(DhruvaError):
        storage.store(a, b"x", b"")
    with pytest.raises(DhruvaKeyError):
        storage.load(a)


@pytest.mark.req("SAPI-035")
def test_end_without_begin_raises(storage: Storage) -> None:
    with pytest.raises(DhruvaError):
        storage.end()


@pytest.mark.req("SAPI-033")
def test_stores_invisible_until_end(storage: Storage) -> None:
    a, b = fresh_oids(storage, 2)
    commit(storage, {a: (b"old", b"")})
    storage.begin()
    storage.store(a, b"new", b"")
    storage.store(b, b"fresh", b"")
    assert storage.load(a).data == b"old"
    with pytest.raises(DhruvaKeyError):
        storage.load(b)
    storage.end()
    assert storage.load(a).data == b"new"
    assert storage.load(b).data == b"fresh"


@pytest.mark.req("SAPI-036")
def test_empty_transaction(storage: Storage) -> None:
    (a,) = fresh_oids(storage, 1)
    commit(storage, {a: (b"x", b"")})
    storage.begin()
    storage.end()
    assert storage.load(a).data == b"x"
    assert sorted(storage.iter_oids()) == [a]


@pytest.mark.req("SAPI-037")
def test_abort_transaction_drops_stores(storage: Storage) -> None:
    a, b = fresh_oids(storage, 2)
    commit(storage, {a: (b"old", b"")})
    storage.begin()
    storage.store(a, b"new", b"")
    storage.store(b, b"new", b"")
    storage.abort_transaction()
    assert storage.load(a).data == b"old"
    with pytest.raises(DhruvaKeyError):
        storage.load(b)
    # A new transaction can begin, and does not carry the aborted stores.
    storage.begin()
    storage.end()
    with pytest.raises(DhruvaKeyError):
        storage.load(b)
    # Aborting with no open transaction is harmless.
    storage.abort_transaction()


@pytest.mark.needs("reopen")
@pytest.mark.req("SAPI-037", "SAPI-040")
def test_aborted_transaction_not_written(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    a, b = fresh_oids(storage, 2)
    commit(storage, {a: (b"kept", b"")})
    storage.begin()
    storage.store(b, b"dropped", b"")
    storage.abort_transaction()
    storage.close()
    storage = storage_factory.open(reopen=True)
    assert storage.load(a).data == b"kept"
    with pytest.raises(DhruvaKeyError):
        storage.load(b)


@pytest.mark.needs("reopen")
@pytest.mark.req("SAPI-040")
def test_committed_data_survives_reopen(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    oids = fresh_oids(storage, 5)
    for i, oid in enumerate(oids):
        commit(storage, {oid: (b"v%d" % i, b"".join(oids[:i]))})
    commit(storage, {oids[0]: (b"rewritten", b"")})
    storage.close()
    storage = storage_factory.open(reopen=True)
    assert storage.load(oids[0]) == Record(oids[0], b"rewritten", b"")
    for i, oid in enumerate(oids[1:], 1):
        assert storage.load(oid) == Record(oid, b"v%d" % i, b"".join(oids[:i]))


@pytest.mark.needs("reopen", "durable")
@pytest.mark.req("SAPI-040")
def test_committed_data_survives_crash(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    oids = fresh_oids(storage, 3)
    commit(storage, {oid: (oid, b"") for oid in oids})
    storage.begin()
    storage.store(oids[0], b"never committed", b"")
    storage_factory.crash(storage)
    storage = storage_factory.open(reopen=True)
    assert [storage.load(oid).data for oid in oids] == oids


@pytest.mark.needs("reopen", "file-layer")
@pytest.mark.req("SAPI-034")
def test_failed_end_makes_nothing_visible(storage_factory: StorageFactory) -> None:
    """An I/O error while committing: end() raises and the commit is absent."""
    storage_factory.open().close()
    dry = FaultyFileLayer()
    storage = storage_factory.open(reopen=True, file_layer=dry)
    before = dry.operations
    a, b = fresh_oids(storage, 2)
    commit(storage, {a: (b"first", b"")})
    per_commit = dry.operations - before
    storage.close()
    for failing in range(per_commit):
        storage_factory.open().close()
        layer = FaultyFileLayer(crash_at=before + per_commit + failing, fail_with=OSError)
        storage = storage_factory.open(reopen=True, file_layer=layer)
        a, b = fresh_oids(storage, 2)
        commit(storage, {a: (b"first", b"")})
        storage.begin()
        storage.store(a, b"second", b"")
        storage.store(b, b"second", b"")
        with pytest.raises((OSError, DhruvaError)):
            storage.end()
        # Whatever the storage still answers must not show the failed commit.
        try:
            shown = storage.load(a).data
        except DhruvaError:
            shown = b"first"
        assert shown == b"first"
        storage.close()
        storage = storage_factory.open(reopen=True)
        assert storage.load(a).data == b"first"
        with pytest.raises(DhruvaKeyError):
            storage.load(b)
        storage.close()


# --- sync, enumeration ---------------------------------------------------------------------


@pytest.mark.req("SAPI-050")
def test_sync_without_other_writers(storage: Storage) -> None:
    assert storage.sync() == []
    (a,) = fresh_oids(storage, 1)
    commit(storage, {a: (b"x", b"")})
    # This storage's own commits are not "changed by other writers".
    assert storage.sync() == []


@pytest.mark.req("SAPI-070")
def test_iter_oids_and_get_size(storage: Storage) -> None:
    assert list(storage.iter_oids()) == []
    assert storage.get_size() == 0
    oids = fresh_oids(storage, 12)
    commit(storage, {oid: (b"x", b"") for oid in oids[:8]})
    commit(storage, {oid: (b"y", b"") for oid in oids[4:]})
    listed = list(storage.iter_oids())
    assert len(listed) == len(set(listed))
    assert set(listed) == set(oids)
    assert storage.get_size() == 12


@pytest.mark.req("SAPI-071")
def test_gen_oid_record(storage: Storage) -> None:
    oids = fresh_oids(storage, 6)
    # A cycle through the root, and one unreachable object.
    root = ROOT_OID
    chain = {root: (b"root", oids[0])}
    chain[oids[0]] = (b"a", oids[1] + oids[2])
    chain[oids[1]] = (b"b", root)
    chain[oids[2]] = (b"c", oids[1])
    chain[oids[5]] = (b"lonely", b"")
    commit(storage, chain)
    everything = dict(storage.gen_oid_record())
    assert set(everything) == set(chain)
    assert all(everything[oid].data == chain[oid][0] for oid in chain)
    walked = [oid for oid, _record in storage.gen_oid_record(start_oid=root)]
    assert len(walked) == len(set(walked))
    assert set(walked) == {root, oids[0], oids[1], oids[2]}


# --- pack ---------------------------------------------------------------------------------


@pytest.mark.needs("pack")
@pytest.mark.req("SAPI-061")
def test_pack_keeps_reachable_drops_unreachable(storage: Storage) -> None:
    a, b, c, d = fresh_oids(storage, 4)
    commit(storage, {ROOT_OID: (b"root", a), a: (b"a", b), b: (b"b", a), c: (b"c", d)})
    commit(storage, {d: (b"d", b""), a: (b"a2", b)})
    storage.pack()
    assert storage.load(ROOT_OID) == Record(ROOT_OID, b"root", a)
    assert storage.load(a) == Record(a, b"a2", b)
    assert storage.load(b) == Record(b, b"b", a)
    for gone in (c, d):
        with pytest.raises(DhruvaKeyError):
            storage.load(gone)
    assert set(storage.iter_oids()) == {ROOT_OID, a, b}
    # The store keeps working after a pack.
    commit(storage, {c: (b"c again", b"")})
    assert storage.load(c).data == b"c again"


@pytest.mark.needs("pack", "reopen")
@pytest.mark.req("SAPI-061", "SAPI-010")
def test_pack_survives_reopen(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    a, b = fresh_oids(storage, 2)
    commit(storage, {ROOT_OID: (b"root", a), a: (b"a", b""), b: (b"garbage", b"")})
    storage.pack()
    storage.close()
    storage = storage_factory.open(reopen=True)
    assert storage.load(a).data == b"a"
    with pytest.raises(DhruvaKeyError):
        storage.load(b)
    assert a not in fresh_oids(storage, 10)


@pytest.mark.req("SAPI-060")
def test_pack_without_capability_raises(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    if "pack" in storage.capabilities:
        pytest.skip(f"back-end {storage_factory.name!r} has capability 'pack'")
    with pytest.raises(DhruvaError):
        storage.pack()


@pytest.mark.req("CONF-022", "SAPI-060")
def test_factory_declares_storage_capabilities(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    assert isinstance(storage.capabilities, frozenset)
    assert storage.capabilities <= storage_factory.capabilities


# --- close --------------------------------------------------------------------------------


@pytest.mark.req("SAPI-080")
def test_close_twice_is_harmless(storage: Storage) -> None:
    storage.close()
    storage.close()


@pytest.mark.req("SAPI-080")
def test_use_after_close_raises(storage: Storage) -> None:
    (a,) = fresh_oids(storage, 1)
    commit(storage, {a: (b"x", b"")})
    storage.close()
    with pytest.raises(DhruvaError):
        storage.load(a)
    with pytest.raises(DhruvaError):
        storage.new_oid()
    with pytest.raises(DhruvaError):
        storage.begin()
    with pytest.raises(DhruvaError):
        storage.store(a, b"y", b"")


@pytest.mark.needs("reopen")
@pytest.mark.req("SAPI-081")
def test_close_with_open_transaction_discards_it(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    a, b = fresh_oids(storage, 2)
    commit(storage, {a: (b"kept", b"")})
    storage.begin()
    storage.store(b, b"dropped", b"")
    storage.close()
    storage = storage_factory.open(reopen=True)
    assert storage.load(a).data == b"kept"
    with pytest.raises(DhruvaKeyError):
        storage.load(b)


@pytest.mark.req("SAPI-082")
def test_context_manager_closes(storage_factory: StorageFactory) -> None:
    with storage_factory.open() as storage:
        (a,) = fresh_oids(storage, 1)
        commit(storage, {a: (b"x", b"")})
    with pytest.raises(DhruvaError):
        storage.load(a)


@pytest.mark.needs("reopen", "readonly-open")
@pytest.mark.req("SAPI-083")
def test_readonly_open_refuses_writes(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    (a,) = fresh_oids(storage, 1)
    commit(storage, {a: (b"x", b"")})
    storage.close()
    before = {path: Path(path).read_bytes() for path in storage_factory.paths()[:1]}
    storage = storage_factory.open(reopen=True, readonly=True)
    assert storage.load(a).data == b"x"
    with pytest.raises(ReadOnlyError):
        storage.begin()
        storage.store(a, b"y", b"")
        storage.end()
    storage.abort_transaction()
    storage.close()
    after = {path: Path(path).read_bytes() for path in before}
    assert after == before
