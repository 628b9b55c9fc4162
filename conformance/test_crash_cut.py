"""Crash recovery by editing the data file: cuts and bit flips (spec CONF-050, CONF-051).

Each case writes a few transactions through the back-end, closes it, damages
a copy of the data file, reopens it and checks the four crash properties of
``spec/conformance.md`` plus the recovery rules of ``spec/file-format.md``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from dhruva_conformance.backends import StorageFactory
from dhruva_conformance.faults import (
    FILE_HEADER_SIZE,
    Commit,
    check_accepts_commits,
    check_recovered,
    make_commits,
    state_after,
    transaction_spans,
    write_commits,
)

from dhruva.error import CorruptionError, DhruvaError
from dhruva.storage import Storage

pytestmark = pytest.mark.needs("reopen", "raw-file")

Written = tuple[bytes, list[Commit], list[tuple[int, int]]]


def small_commits() -> list[Commit]:
    """Five ordinary commits, then two small ones (cut at every byte)."""
    commits = make_commits(5, seed=7)
    commits.append({(1).to_bytes(8, "big"): (b"penultimate", b"")})
    commits.append({(2).to_bytes(8, "big"): (b"last", (1).to_bytes(8, "big"))})
    return commits


@pytest.fixture
def written(storage_factory: StorageFactory) -> Written:
    """The bytes of a data file holding ``small_commits()``, and its transactions."""
    storage = storage_factory.open()
    commits = small_commits()
    assert write_commits(storage, commits) == len(commits)
    storage.close()
    data = Path(storage_factory.paths()[0]).read_bytes()
    spans = transaction_spans(data)
    assert len(spans) == len(commits), "the data file does not hold one transaction per commit"
    end = spans[-1][1]
    # [RCV-060] A writer may leave zero bytes of free space after the last
    # transaction; the cases below cut the transactions, and add free space
    # of their own where they test it.
    assert data[end:] == bytes(len(data) - end), "non-zero bytes after the last transaction"
    return data[:end], commits, spans


def tail_files(data_path: str) -> list[Path]:
    path = Path(data_path)
    return sorted(path.parent.glob(path.name + ".tr*"))


def reopen(factory: StorageFactory) -> Storage:
    return factory.open(reopen=True)


def check_cut(factory: StorageFactory, written: Written, cut: int, free: int = 0) -> None:
    """Reopen a copy of the data file cut to ``cut`` bytes and check everything.

    ``free`` zero bytes follow the cut, as when a commit written into free
    space ([RCV-060]) is torn.
    """
    data, commits, spans = written
    context = f"data file cut at {cut} of {len(data)} bytes, then {free} zero bytes"
    factory.replace_data_file(data[:cut] + bytes(free))
    data_path = factory.paths()[0]
    storage = reopen(factory)
    complete = sum(1 for _start, end in spans if end <= cut)
    boundary = spans[complete - 1][1] if complete else FILE_HEADER_SIZE
    # P1-P3; bytes of a partial transaction cannot make it visible, so the
    # recovered state is exactly the complete transactions.
    visible = check_recovered(storage, commits, complete, context)
    assert visible == complete, f"{context}: a partial transaction became visible"
    tails = tail_files(data_path)
    if cut > boundary:
        # [RCV-005] The torn tail is set aside as PATH.trN, not destroyed,
        # with the zeros after it ([RCV-060]).
        assert Path(data_path).stat().st_size == boundary, f"{context}: tail not cut off"
        assert [p.name for p in tails] == [Path(data_path).name + ".tr0"], context
        torn = data[boundary:cut] + bytes(free)
        assert tails[0].read_bytes() == torn, f"{context}: .tr0 content"
    else:
        # [RCV-060] Free space after a clean cut is kept, not reported.
        assert tails == [], f"{context}: a clean cut left {tails}"
        size = Path(data_path).stat().st_size
        assert size == cut + free, f"{context}: the file is {size} bytes after the open"
    # P4: the store takes new commits, which survive another reopen.
    storage = check_accepts_commits(
        lambda: reopen(factory), storage, state_after(commits, complete), context
    )
    storage.close()


@pytest.mark.req(
    "CONF-041",
    "CONF-042",
    "CONF-043",
    "CONF-044",
    "SAPI-043",
    "CONF-050",
    "SAPI-041",
    "RCV-002",
    "RCV-005",
    "FLT-020",
)
def test_cut_at_transaction_boundaries(storage_factory: StorageFactory, written: Written) -> None:
    data, _commits, spans = written
    boundaries = [FILE_HEADER_SIZE] + [end for _start, end in spans]
    cuts = sorted(
        {c for b in boundaries for c in (b - 1, b, b + 1) if FILE_HEADER_SIZE <= c <= len(data)}
    )
    for cut in cuts:
        check_cut(storage_factory, written, cut)


@pytest.mark.req(
    "CONF-041",
    "CONF-042",
    "CONF-043",
    "CONF-044",
    "SAPI-043",
    "CONF-050",
    "SAPI-041",
    "DM-010",
    "RCV-002",
    "RCV-005",
    "FLT-020",
)
def test_cut_at_every_byte_of_the_last_two_transactions(
    storage_factory: StorageFactory, written: Written
) -> None:
    data, _commits, spans = written
    for cut in range(spans[-2][0], len(data) + 1):
        check_cut(storage_factory, written, cut)


@pytest.mark.req("CONF-041", "CONF-042", "CONF-050", "RCV-060", "RCV-002")
def test_free_space_after_the_last_transaction_is_kept(
    storage_factory: StorageFactory, written: Written
) -> None:
    data, _commits, spans = written
    for cut in (FILE_HEADER_SIZE, spans[0][1], len(data)):
        for free in (1, 40, 4096, 65536):
            check_cut(storage_factory, written, cut, free)


@pytest.mark.req("CONF-041", "CONF-042", "CONF-043", "CONF-050", "RCV-060", "RCV-005", "FLT-001")
def test_a_commit_torn_in_free_space_is_set_aside_with_the_zeros(
    storage_factory: StorageFactory, written: Written
) -> None:
    """A crash while the last commit was written over free space: a prefix of
    it then zeros, or its bytes with the first sector's worth never written."""
    data, commits, spans = written
    start, end = spans[-1]
    for cut in range(start + 1, end):
        check_cut(storage_factory, written, cut, free=4096)
    # The write reached the disk out of order: the header is still zeros.
    for hole in (4, 8, 40):
        damaged = data[:start] + bytes(hole) + data[start + hole :] + bytes(4096)
        storage_factory.replace_data_file(damaged)
        data_path = storage_factory.paths()[0]
        storage = reopen(storage_factory)
        context = f"the last transaction's first {hole} bytes left zero"
        assert check_recovered(storage, commits, len(spans) - 1, context) == len(spans) - 1
        assert Path(data_path).stat().st_size == start, f"{context}: tail not cut off"
        tails = tail_files(data_path)
        assert [p.read_bytes() for p in tails] == [damaged[start:]], context
        storage.close()


# --- bit flips ------------------------------------------------------------------------

# Where to flip, relative to the start of the second transaction, named for
# the field hit (spec/file-format.md byte tables).
FLIP_FIELDS = {
    "header tag": 0,
    "record count": 7,
    "body length": 15,
    "tid": 23,
    "time": 31,
    "header crc": 39,
    "record oid": 40 + 7,
    "record data length": 40 + 11,
    "record data": 40 + 20,  # version 2: the first data byte; version 1: a data byte
    "record crc or data": 40 + 16,  # version 2: the record crc; version 1: the first data byte
}
TRAILER_FIELDS = {"commit tag": 0, "trailer crc": 4, "total length": 15}


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 1 << bit
    return bytes(changed)


def flip_positions(spans: list[tuple[int, int]], which: int) -> dict[str, int]:
    start, end = spans[which]
    positions = {name: start + rel for name, rel in FLIP_FIELDS.items()}
    positions.update({name: end - 16 + rel for name, rel in TRAILER_FIELDS.items()})
    return positions


@pytest.mark.req("CONF-051", "SAPI-042", "RCV-001", "RCV-003")
def test_bit_flip_in_early_transaction_is_corruption(
    storage_factory: StorageFactory, written: Written
) -> None:
    data, _commits, spans = written
    data_path = storage_factory.paths()[0]
    for field, position in flip_positions(spans, 1).items():
        damaged = flip(data, position)
        storage_factory.replace_data_file(damaged)
        with pytest.raises(CorruptionError) as info:
            reopen(storage_factory)
        error = info.value
        assert error.path == data_path, f"flip in {field}: error names {error.path!r}"
        assert error.offset == spans[1][0], (
            f"flip in {field}: error names offset {error.offset}, the damaged "
            f"transaction starts at {spans[1][0]}"
        )
        assert str(spans[1][0]) in str(error) and data_path in str(error)
        # Refusing to open must not touch the file.
        assert Path(data_path).read_bytes() == damaged, f"flip in {field}: file changed"
        assert tail_files(data_path) == []


@pytest.mark.needs("repair")
@pytest.mark.req("CONF-051", "SAPI-042", "CONF-044", "SAPI-043", "RCV-007")
def test_repair_cuts_at_the_damage(storage_factory: StorageFactory, written: Written) -> None:
    data, commits, spans = written
    data_path = storage_factory.paths()[0]
    damaged = flip(data, spans[2][0] + 40 + 16)
    storage_factory.replace_data_file(damaged)
    storage = storage_factory.open(reopen=True, repair=True)
    assert check_recovered(storage, commits, 2, "repair") == 2
    assert [p.read_bytes() for p in tail_files(data_path)] == [damaged[spans[2][0] :]]
    storage = check_accepts_commits(
        lambda: reopen(storage_factory), storage, state_after(commits, 2), "repair"
    )
    storage.close()


@pytest.mark.req("CONF-051", "CONF-041", "CONF-043", "RCV-001", "RCV-002", "RCV-005")
def test_bit_flip_in_last_transaction_is_a_torn_tail(
    storage_factory: StorageFactory, written: Written
) -> None:
    """Nothing valid follows the last transaction, so its damage is a torn tail."""
    data, commits, spans = written
    data_path = storage_factory.paths()[0]
    last = len(spans) - 1
    for field, position in flip_positions(spans, last).items():
        if field.startswith("record") and position >= spans[last][1] - 16:
            continue
        storage_factory.replace_data_file(flip(data, position))
        storage = reopen(storage_factory)
        context = f"flip in {field} of the last transaction"
        assert check_recovered(storage, commits, last, context) == last, context
        assert [p.read_bytes() for p in tail_files(data_path)] == [
            flip(data, position)[spans[last][0] :]
        ], context
        storage.close()


def recompute_checksums(data: bytes, span: tuple[int, int]) -> bytes:
    """Rewrite the header and trailer CRCs of the transaction at ``span``."""
    start, end = span
    changed = bytearray(data)
    changed[start + 36 : start + 40] = zlib.crc32(changed[start : start + 36]).to_bytes(4, "big")
    body_end = end - 16
    changed[body_end + 4 : body_end + 8] = zlib.crc32(changed[start:body_end]).to_bytes(4, "big")
    return bytes(changed)


def record_header_size(data: bytes) -> int:
    """The record header size of the data file ``data`` (spec: file-format.md, FMT-020)."""
    return 20 if data[8:10] == b"\x00\x02" else 16


@pytest.mark.req("CONF-051", "FMT-023", "FLT-030")
def test_flip_with_recomputed_transaction_checksum_in_data(
    storage_factory: StorageFactory, written: Written
) -> None:
    """A transaction CRC catches accidental damage, not a consistent rewrite.

    Flipping a data byte and recomputing the transaction checksums yields a
    file whose transactions are valid.  In format version 2 the record's own
    crc still catches it at load (CorruptionError naming file and record
    offset); a version 1 file has no record crc and reads what it says.
    """
    data, commits, spans = written
    start, end = spans[1]
    header_size = record_header_size(data)
    # The first record of the second transaction that no later commit
    # supersedes (else the first record): its flip is visible to a load.
    record = start + 40
    while True:
        oid = data[record : record + 8]
        data_length = int.from_bytes(data[record + 8 : record + 12], "big")
        ref_count = int.from_bytes(data[record + 12 : record + 16], "big")
        following = record + header_size + data_length + 8 * ref_count
        if data_length and not any(oid in later for later in commits[2:]):
            break
        if following >= end - 16:
            record = start + 40
            oid = data[record : record + 8]
            break
        record = following
    assert int.from_bytes(data[record + 8 : record + 12], "big") > 0
    damaged = recompute_checksums(flip(data, record + header_size), spans[1])
    storage_factory.replace_data_file(damaged)
    storage = reopen(storage_factory)
    expected = state_after(commits, len(commits))
    if any(oid in later for later in commits[2:]):
        # A later commit supersedes the altered record: nothing visible changed.
        assert storage.load(oid).data == expected[oid][0]
    elif header_size == 20:
        # Through a server the error arrives as a DhruvaError carrying the
        # message (the wire protocol has no corruption code); never as data.
        with pytest.raises(DhruvaError) as info:
            storage.load(oid)
        if isinstance(info.value, CorruptionError):
            assert info.value.path == storage_factory.paths()[0]
            assert info.value.offset == record
        assert f"offset {record}" in str(info.value)
    else:
        altered = bytearray(commits[1][oid][0])
        altered[0] ^= 1
        assert storage.load(oid).data == bytes(altered)
    storage.close()


@pytest.mark.req("CONF-051", "SAPI-042", "RCV-001", "RCV-003")
def test_flip_with_recomputed_checksum_in_length_is_detected(
    storage_factory: StorageFactory, written: Written
) -> None:
    """Record lengths that no longer tile the body are caught without a CRC."""
    data, _commits, spans = written
    start = spans[1][0]
    damaged = recompute_checksums(flip(data, start + 40 + 11), spans[1])
    storage_factory.replace_data_file(damaged)
    with pytest.raises(CorruptionError) as info:
        reopen(storage_factory)
    assert info.value.offset == start
    assert info.value.path == storage_factory.paths()[0]
