"""Tests of the journal codec (dhruva/journal.py) against spec/file-format.md."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from _vectors import read_vector

from dhruva import journal
from dhruva.error import CorruptionError, FormatError
from dhruva.utils import int8_to_str

VECTORS = Path(__file__).resolve().parent.parent / "conformance" / "vectors" / "file-format"
PATH = "test.dhruva"


def txn(tid: int, *records: tuple[int, bytes, list[int]], time_us: int = 1000) -> bytes:
    return journal.encode_transaction(
        tid,
        time_us,
        [(int8_to_str(o), d, b"".join(int8_to_str(r) for r in refs)) for o, d, refs in records],
    )


def make_file(*txns: bytes) -> bytes:
    return journal.encode_file_header(bytes(16)) + b"".join(txns)


def txn_v1(tid: int, *records: tuple[int, bytes, list[int]], time_us: int = 1000) -> bytes:
    return journal.encode_transaction(
        tid,
        time_us,
        [(int8_to_str(o), d, b"".join(int8_to_str(r) for r in refs)) for o, d, refs in records],
        journal.FORMAT_V1,
    )


# --- vectors ----------------------------------------------------------------------


@pytest.mark.req("FMT-001", "FMT-004", "FMT-021", "FMT-022")
@pytest.mark.parametrize("name", ["file-header", "file-header-v1"])
def test_file_header_vector_round_trips(name: str) -> None:
    data, expect = read_vector(VECTORS, name)
    file_id = bytes.fromhex(str(expect["file_id"]))
    version = int(expect["major"])
    assert journal.encode_file_header(file_id, version) == data
    header = journal.decode_file_header(data, PATH)
    assert header == journal.FileHeader(version, 0, 0, file_id)
    assert len(data) == journal.FILE_HEADER_SIZE == 64
    # [FMT-021] New files are written in version 2.
    assert journal.encode_file_header(file_id)[8:10] == b"\x00\x02"


@pytest.mark.req("FMT-010", "FMT-020", "FMT-022")
@pytest.mark.parametrize("name", ["transaction", "transaction-v1"])
def test_transaction_vector_round_trips(name: str) -> None:
    data, expect = read_vector(VECTORS, name)
    records = expect["records"]
    version = int(expect["version"])
    assert isinstance(records, list)
    encoded = journal.encode_transaction(
        int(str(expect["tid"])),
        int(str(expect["time_us"])),
        [
            (int8_to_str(r["oid"]), r["data"].encode(), b"".join(int8_to_str(x) for x in r["refs"]))
            for r in records
        ],
        version,
    )
    assert encoded == data
    decoded = journal.decode_transaction(data, 0, PATH, version=version)
    assert decoded.tid == expect["tid"]
    assert decoded.time_us == expect["time_us"]
    assert decoded.length == len(data)
    assert [(r.oid, r.data, r.offset) for r in decoded.records] == [
        (int8_to_str(r["oid"]), r["data"].encode(), r["offset"]) for r in records
    ]
    # The layout rules of FMT-010, checked independently of the encoder.
    assert data[:4] == b"DTXN"
    assert zlib.crc32(data[:36]) == int.from_bytes(data[36:40], "big")
    body_length = int.from_bytes(data[8:16], "big")
    assert len(data) == 56 + body_length
    assert data[-16:-12] == b"DCMT"
    assert zlib.crc32(data[:-16]) == int.from_bytes(data[-12:-8], "big")
    assert int.from_bytes(data[-8:], "big") == len(data)
    # [FMT-020] Each version 2 record header ends in the CRC of the record.
    if version == 2:
        for r in records:
            start = r["offset"]
            size = 20 + len(r["data"]) + 8 * len(r["refs"])
            stored = int.from_bytes(data[start + 16 : start + 20], "big")
            assert stored == zlib.crc32(data[start : start + 16] + data[start + 20 : start + size])


# --- file header ------------------------------------------------------------------


@pytest.mark.req("FMT-002")
def test_not_a_dhruva_file_is_a_format_error_naming_file_and_bytes() -> None:
    with pytest.raises(FormatError) as info:
        journal.decode_file_header(b"SQLite format 3\x00" + bytes(48), "/db/x")
    assert "/db/x" in str(info.value)
    assert "SQLite f" in str(info.value)
    with pytest.raises(FormatError):
        journal.decode_file_header(b"", "/db/x")


def header_with(
    major: int = 1, minor: int = 0, flags: int = 0, reserved: bytes = bytes(28)
) -> bytes:
    head = journal.FILE_HEADER.pack(journal.MAGIC, major, minor, flags, bytes(16), reserved, 0)
    return head[:60] + zlib.crc32(head[:60]).to_bytes(4, "big")


@pytest.mark.req("FMT-022")
def test_unknown_major_version_is_a_format_error_checked_before_the_crc() -> None:
    with pytest.raises(FormatError, match=r"version 3\.0") as info:
        journal.decode_file_header(header_with(major=3), PATH)
    assert PATH in str(info.value)
    assert journal.decode_file_header(header_with(major=1), PATH).major == 1
    assert journal.decode_file_header(header_with(major=2), PATH).major == 2
    # A future layout: same magic and version fields, anything after them.
    with pytest.raises(FormatError, match="version 7"):
        journal.decode_file_header(journal.MAGIC + b"\x00\x07\x00\x00" + b"garbage", PATH)


@pytest.mark.req("FMT-004")
def test_higher_minor_flags_and_reserved_bytes_are_ignored() -> None:
    header = journal.decode_file_header(
        header_with(minor=9, flags=0xFFFF, reserved=b"x" * 28), PATH
    )
    assert (header.major, header.minor, header.flags) == (1, 9, 0xFFFF)
    written = journal.encode_file_header(bytes(16))
    assert written[12:16] == bytes(4) and written[32:60] == bytes(28)


@pytest.mark.req("FMT-005")
def test_header_checksum_mismatch_is_corruption() -> None:
    data = bytearray(journal.encode_file_header(bytes(16)))
    data[20] ^= 1
    with pytest.raises(CorruptionError, match="checksum") as info:
        journal.decode_file_header(bytes(data), PATH)
    assert not isinstance(info.value, FormatError)
    with pytest.raises(CorruptionError, match="truncated"):
        journal.decode_file_header(bytes(data[:40]), PATH)


# --- transactions -----------------------------------------------------------------


@pytest.mark.req("FMT-011")
def test_reserved_transaction_field_is_written_zero_and_ignored() -> None:
    data = bytearray(txn(1, (5, b"x", [])))
    assert data[32:36] == bytes(4)
    data[32:36] = b"\xff\xff\xff\xff"
    data[36:40] = zlib.crc32(data[:36]).to_bytes(4, "big")
    crc = zlib.crc32(data[:-16])
    data[-12:-8] = crc.to_bytes(4, "big")
    decoded = journal.decode_transaction(bytes(data), 0, PATH)
    assert decoded.records[0].data == b"x"


@pytest.mark.req("FMT-013")
def test_writer_refuses_and_reader_rejects_a_repeated_oid() -> None:
    with pytest.raises(ValueError, match="twice"):
        txn(1, (5, b"a", []), (5, b"b", []))
    # Hand-build a transaction repeating oid 5 with valid checksums.
    record = journal.encode_record_header(int8_to_str(5), b"a", b"") + b"a"
    body = record + record
    head = struct.pack(">4sIQQQI", b"DTXN", 2, len(body), 1, 0, 0)
    head += zlib.crc32(head).to_bytes(4, "big")
    assert head == journal.encode_txn_header(2, len(body), 1, 0)
    data = head + body
    data += journal.TXN_TRAILER.pack(b"DCMT", zlib.crc32(data), len(data) + 16)
    with pytest.raises(CorruptionError, match="twice"):
        journal.decode_transaction(data, 0, PATH)
    result = journal.scan(make_file(data), 64, PATH)
    assert result.spans == [] and result.tail == (64, 64 + len(data))


@pytest.mark.req("FMT-012")
def test_a_tid_that_does_not_increase_makes_the_transaction_invalid() -> None:
    first = txn(5, (1, b"a", []))
    again = txn(5, (2, b"b", []))
    result = journal.scan(make_file(first, again), 64, PATH)
    assert [span.tid for span in result.spans] == [5]
    assert result.tail is not None and "does not follow" in str(result.tail_reason)
    with pytest.raises(ValueError):
        txn(0, (1, b"a", []))
    # A tid below the one before the scan start is invalid too.
    assert journal.scan(make_file(first), 64, PATH, last_tid=9).spans == []


@pytest.mark.req("FMT-014")
def test_scan_index_ends_with_the_last_record_of_each_oid() -> None:
    first = txn(1, (1, b"old", []), (2, b"two", []))
    second = txn(2, (1, b"new", []))
    data = make_file(first, second)
    index: dict[bytes, int] = {}
    journal.scan(data, 64, PATH, index=index)
    assert journal.decode_record_at(data, index[int8_to_str(1)], PATH).data == b"new"
    assert journal.decode_record_at(data, index[int8_to_str(2)], PATH).data == b"two"


def test_scan_reports_spans_and_end() -> None:
    a = txn(1, (1, b"a", []), time_us=10)
    b = txn(2, (2, b"b", [1]), time_us=20)
    data = make_file(a, b)
    result = journal.scan(data, 64, PATH)
    assert result.spans == [
        journal.TxnSpan(64, 64 + len(a), 1, 10),
        journal.TxnSpan(64 + len(a), len(data), 2, 20),
    ]
    assert result.end == len(data) and result.tail is None and not result.corrupt
    # A buffer holding only the bytes from an offset on (base) gives the same spans.
    tail_result = journal.scan(data[64 + len(a) :], 64 + len(a), PATH, last_tid=1, base=64 + len(a))
    assert tail_result.spans == result.spans[1:]
    assert journal.trailer_crc_before(data, len(data)) == int.from_bytes(b[-12:-8], "big")


# --- validity and recovery rule ---------------------------------------------------


def damaged_variants(t: bytes) -> dict[str, bytes]:
    """Each check of RCV-001 failed once (the others kept valid where possible)."""

    def fix_crcs(data: bytearray) -> bytes:
        data[36:40] = zlib.crc32(data[:36]).to_bytes(4, "big")
        data[-12:-8] = zlib.crc32(data[:-16]).to_bytes(4, "big")
        return bytes(data)

    variants = {
        "short": t[:50],
        "tag": b"XTXN" + t[4:],
        "header crc": t[:20] + bytes([t[20] ^ 1]) + t[21:],
        "past end": t[:-1],
        "commit tag": t[:-16] + b"XCMT" + t[-12:],
        "trailer length": t[:-8] + (len(t) + 8).to_bytes(8, "big"),
        "crc": t[:45] + bytes([t[45] ^ 1]) + t[46:],
    }
    bad_count = bytearray(t)
    bad_count[4:8] = (3).to_bytes(4, "big")  # the records do not add up to the body
    variants["record lengths"] = fix_crcs(bad_count)
    return variants


@pytest.mark.req("RCV-001", "RCV-002")
@pytest.mark.parametrize("check", list(damaged_variants(txn(2, (1, b"x" * 9, [3])))))
def test_each_failed_check_of_the_last_transaction_is_a_torn_tail(check: str) -> None:
    good = txn(1, (1, b"a", []))
    bad = damaged_variants(txn(2, (1, b"x" * 9, [3])))[check]
    data = make_file(good, bad)
    result = journal.scan(data, 64, PATH)
    assert [span.tid for span in result.spans] == [1]
    assert result.tail == (64 + len(good), len(data))
    assert result.end == 64 + len(good)
    assert not result.corrupt


@pytest.mark.req("RCV-001", "RCV-003")
@pytest.mark.parametrize("check", list(damaged_variants(txn(2, (1, b"x" * 9, [3])))))
def test_damage_followed_by_a_valid_transaction_is_corruption(check: str) -> None:
    good = txn(1, (1, b"a", []))
    bad = damaged_variants(txn(2, (1, b"x" * 9, [3])))[check]
    later = txn(3, (4, b"later", []))
    data = make_file(good, bad, later)
    with pytest.raises(CorruptionError) as info:
        journal.scan(data, 64, "/db/file")
    assert info.value.path == "/db/file"
    assert info.value.offset == 64 + len(good)
    assert "valid transaction follows" in info.value.reason


@pytest.mark.req("RCV-007")
def test_repair_cuts_at_the_damage() -> None:
    good = txn(1, (1, b"a", []))
    later = txn(3, (4, b"later", []))
    data = make_file(good, b"garbage!", later)
    index: dict[bytes, int] = {}
    result = journal.scan(data, 64, PATH, repair=True, index=index)
    assert result.corrupt
    assert result.tail == (64 + len(good), len(data))
    assert list(index) == [int8_to_str(1)]


def test_tail_at_every_cut_of_the_last_transaction() -> None:
    a = txn(1, (1, b"a" * 30, [2]))
    b = txn(2, (2, b"b" * 30, [1]), (3, b"c", []))
    data = make_file(a, b)
    for cut in range(64, len(data) + 1):
        result = journal.scan(data[:cut], 64, PATH)
        expected = [1, 2] if cut == len(data) else [1] if cut >= 64 + len(a) else []
        assert [span.tid for span in result.spans] == expected, cut
        assert (result.tail is None) == (cut in (64, 64 + len(a), len(data))), cut


def test_decode_record_at_reports_short_buffers() -> None:
    t = txn(1, (7, b"data", [1, 2]))
    record = journal.decode_record_at(t, 40, PATH)
    assert record.oid == int8_to_str(7) and record.data == b"data"
    assert record.ref_oids() == [int8_to_str(1), int8_to_str(2)]
    assert journal.record_size(t[40:]) == 20 + 4 + 16
    assert journal.record_size(txn_v1(1, (7, b"data", [1, 2]))[40:], journal.FORMAT_V1) == 36
    with pytest.raises(CorruptionError):
        journal.decode_record_at(t[:50], 40, PATH)
    with pytest.raises(CorruptionError):
        journal.decode_record_at(t, len(t) - 4, PATH)
    assert journal.decode_record_at(t[40:], 40, PATH, base=40) == record


def test_memoryview_buffers_are_accepted() -> None:
    data = make_file(txn(1, (1, b"a", [])), b"DTXN" + bytes(80))
    result = journal.scan(memoryview(data), 64, PATH)
    assert len(result.spans) == 1 and result.tail is not None
    header = journal.decode_file_header(memoryview(data), PATH)
    assert header.file_id == bytes(16)


@pytest.mark.req("RCV-006")
def test_unfinished_header_recognition() -> None:
    header = journal.encode_file_header(bytes(range(16)))
    for cut in range(64):
        assert journal.is_unfinished_header(header[:cut]), cut
        zero_filled = header[:cut] + bytes(64 - cut)
        assert journal.is_unfinished_header(zero_filled), cut
    assert not journal.is_unfinished_header(header)
    assert not journal.is_unfinished_header(header + b"x")
    assert not journal.is_unfinished_header(b"hello world\n")
    assert not journal.is_unfinished_header(journal.MAGIC[:4] + b"\x01")
