"""The journal codec: file header, transactions and records (sans-IO).

Spec: ``spec/file-format.md`` (FMT layouts, RCV recovery rule).

Theory of operation.  A data file is a 64-byte file header followed by
transactions appended one after another.  A transaction is a 40-byte header, the
records, and a 16-byte trailer (the commit marker) whose CRC covers the header
and every record.  A transaction whose bytes do not all check out is not a
transaction: either it is the torn tail of an interrupted append (nothing valid
follows it) or the file is damaged (a valid transaction follows it).

Everything here takes bytes-like objects and returns values; nothing opens a
file.  ``path`` arguments serve only to name the file in error messages.  All
offsets are absolute file offsets; a buffer passed with ``base`` holds the file
bytes starting at that offset.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import MutableMapping, Sequence
from typing import NamedTuple

from dhruva.error import CorruptionError, FormatError
from dhruva.record import Record

Buffer = bytes | bytearray | memoryview

# --- constants and layouts (spec: file-format.md, "File header") -------------

MAGIC = b"\x89DHRUVA\n"
MAJOR_VERSION = 1
MINOR_VERSION = 0
FILE_ID_SIZE = 16

# magic, major, minor, flags, file_id, reserved, crc
FILE_HEADER = struct.Struct(">8sHHI16s28sI")
assert FILE_HEADER.size == 64
FILE_HEADER_SIZE = FILE_HEADER.size
_FILE_HEADER_CRC_START = 60

TXN_TAG = b"DTXN"
COMMIT_TAG = b"DCMT"

# tag, record_count, body_length, tid, time_us, reserved, header crc
TXN_HEADER = struct.Struct(">4sIQQQII")
assert TXN_HEADER.size == 40
_TXN_HEADER_NO_CRC = struct.Struct(">4sIQQQI")
assert _TXN_HEADER_NO_CRC.size == 36
TXN_HEADER_SIZE = TXN_HEADER.size

# oid, data_length, ref_count
RECORD_HEADER = struct.Struct(">8sII")
assert RECORD_HEADER.size == 16
RECORD_HEADER_SIZE = RECORD_HEADER.size

# tag, crc over header and body, total_length
TXN_TRAILER = struct.Struct(">4sIQ")
assert TXN_TRAILER.size == 16
TXN_TRAILER_SIZE = TXN_TRAILER.size

TXN_OVERHEAD = TXN_HEADER_SIZE + TXN_TRAILER_SIZE
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF


class FileHeader(NamedTuple):
    """The decoded file header."""

    major: int
    minor: int
    flags: int
    file_id: bytes


class TxnRecord(NamedTuple):
    """One record of a decoded transaction, with its absolute file offset."""

    oid: bytes
    data: bytes
    refs: bytes
    offset: int


class Transaction(NamedTuple):
    """A decoded transaction: ``length`` counts header, records and trailer."""

    tid: int
    time_us: int
    offset: int
    length: int
    records: list[TxnRecord]


class TxnSpan(NamedTuple):
    """Where one valid transaction lies: bytes ``[offset, end)``."""

    offset: int
    end: int
    tid: int
    time_us: int


class ScanResult(NamedTuple):
    """The outcome of :func:`scan`.

    ``spans`` lists the valid transactions in file order; ``end`` is the offset
    just past the last of them (the start when there is none).  ``tail`` is
    ``(offset, end_of_buffer)`` of bytes that are not valid transactions, or
    None.  ``tail_reason`` says why the first of those bytes were rejected.
    ``corrupt`` is True when a valid transaction follows the tail (possible
    only with ``repair=True``; otherwise scan raises).
    """

    spans: list[TxnSpan]
    end: int
    tail: tuple[int, int] | None
    tail_reason: str | None
    corrupt: bool


# --- file header ---------------------------------------------------------------


def encode_file_header(file_id: bytes) -> bytes:
    """Return the 64-byte file header for a new data file (FMT-001, FMT-004, FMT-006)."""
    if len(file_id) != FILE_ID_SIZE:
        raise ValueError(f"a file id is {FILE_ID_SIZE} bytes, not {len(file_id)}")
    head = FILE_HEADER.pack(MAGIC, MAJOR_VERSION, MINOR_VERSION, 0, file_id, bytes(28), 0)
    crc = zlib.crc32(head[:_FILE_HEADER_CRC_START])
    return head[:_FILE_HEADER_CRC_START] + crc.to_bytes(4, "big")


def decode_file_header(buf: Buffer, path: str) -> FileHeader:
    """Decode the file header at the start of ``buf``.

    Raises FormatError when ``buf`` does not start with the dhruva magic or
    carries a major version other than 1, and CorruptionError when the header is
    short or its checksum does not match.
    """
    found = bytes(buf[:8])
    # [FMT-002] The magic identifies the file; anything else is not ours.
    if found != MAGIC:
        reason = f"not a dhruva data file (found {found!r} where the magic {MAGIC!r} belongs)"
        if found.startswith((b"SHELF-1\n", b"DFS20\x00")):
            # [TOOL-043] A Durus 4.x file (its two magics): say how to convert it.
            reason = (
                "a Durus file, not a dhruva data file; convert it with "
                f"'dhruva import-durus {path} NEW.dhruva'"
            )
        raise FormatError(path, 0, reason)
    if len(buf) < 12:
        raise CorruptionError(path, 0, f"file header truncated to {len(buf)} bytes")
    major, minor = struct.unpack_from(">HH", buf, 8)
    # [FMT-003] The major version is checked before the checksum: a future
    # major version may lay the header out differently.
    if major != MAJOR_VERSION:
        raise FormatError(
            path,
            8,
            f"data file format version {major}.{minor} is not supported "
            f"(this dhruva reads version {MAJOR_VERSION}.x); use a matching dhruva release",
        )
    if len(buf) < FILE_HEADER_SIZE:
        raise CorruptionError(path, 0, f"file header truncated to {len(buf)} bytes")
    _magic, major, minor, flags, file_id, _reserved, crc = FILE_HEADER.unpack_from(buf, 0)
    # [FMT-005] The header checksum covers bytes 0..59.
    if zlib.crc32(buf[:_FILE_HEADER_CRC_START]) != crc:
        raise CorruptionError(path, 0, "file header checksum mismatch")
    # [FMT-004] Flags and higher minor versions are ignored by this reader.
    return FileHeader(major, minor, flags, bytes(file_id))


def is_unfinished_header(buf: Buffer) -> bool:
    """Return True when ``buf`` (a whole file) is what an interrupted creation can leave.

    That is at most 64 bytes, not a valid header, and every byte either zero or
    the byte a writer puts there: the magic, version 1.0, zero flags and zero
    reserved bytes; the file id and checksum positions may hold anything
    (RCV-006).  A foreign file almost never passes this test.
    """
    if len(buf) > FILE_HEADER_SIZE:
        return False
    expected = encode_file_header(bytes(FILE_ID_SIZE))
    for position, value in enumerate(bytes(buf)):
        if 16 <= position < 32 or position >= _FILE_HEADER_CRC_START:
            continue  # file id and checksum
        if value and value != expected[position]:
            return False
    if len(buf) == FILE_HEADER_SIZE:
        try:
            decode_file_header(buf, "")
        except CorruptionError:
            return True
        return False
    return True


# --- transactions ----------------------------------------------------------------


def encode_transaction(
    tid: int, time_us: int, records: Sequence[tuple[bytes, Buffer, bytes]]
) -> bytes:
    """Return the bytes of one transaction holding ``records`` (FMT-010..FMT-016).

    ``records`` are ``(oid, data, refs)`` with distinct 8-byte oids and refs a
    multiple of 8 bytes.  Raises ValueError for a repeated oid or a field that
    does not fit its width.
    """
    if not 0 < tid <= _U64_MAX or not 0 <= time_us <= _U64_MAX:
        raise ValueError(f"tid {tid} or time {time_us} out of range")
    parts: list[Buffer] = [b""]
    body_length = 0
    pack_record = RECORD_HEADER.pack
    for oid, data, refs in records:
        data_length = len(data)
        if data_length > _U32_MAX or len(refs) // 8 > _U32_MAX:
            raise ValueError(f"record {oid!r} is too large for one record")
        parts.append(pack_record(oid, data_length, len(refs) >> 3))
        parts.append(data)
        parts.append(refs)
        body_length += RECORD_HEADER_SIZE + data_length + len(refs)
    count = len(records)
    # [FMT-013] An oid appears at most once per transaction.
    if count > 1 and len({record[0] for record in records}) != count:
        raise ValueError("an oid appears twice in one transaction")
    head = _TXN_HEADER_NO_CRC.pack(TXN_TAG, count, body_length, tid, time_us, 0)
    parts[0] = head + zlib.crc32(head).to_bytes(4, "big")
    txn = b"".join(parts)
    total = TXN_OVERHEAD + body_length
    return txn + TXN_TRAILER.pack(COMMIT_TAG, zlib.crc32(txn), total)


class _Invalid(Exception):
    """Internal: the bytes at an offset are not a valid transaction."""


def _check_transaction(
    buf: Buffer, pos: int, limit: int
) -> tuple[int, int, int, list[tuple[bytes, int]]]:
    """Validate the transaction at ``pos``.

    Returns ``(end, tid, time_us, [(oid, record position), ...])``; raises
    _Invalid naming the first check that failed (RCV-001).
    """
    if limit - pos < TXN_OVERHEAD:
        raise _Invalid(f"only {limit - pos} bytes left, too short for a transaction")
    tag, count, body_length, tid, time_us, _reserved, head_crc = TXN_HEADER.unpack_from(buf, pos)
    if tag != TXN_TAG:
        raise _Invalid(f"transaction tag {bytes(tag)!r} is not {TXN_TAG!r}")
    if zlib.crc32(buf[pos : pos + 36]) != head_crc:
        raise _Invalid("transaction header checksum mismatch")
    body_end = pos + TXN_HEADER_SIZE + body_length
    end = body_end + TXN_TRAILER_SIZE
    if end > limit:
        raise _Invalid(f"transaction of {end - pos} bytes runs past the end of the file")
    ctag, crc, total = TXN_TRAILER.unpack_from(buf, body_end)
    if ctag != COMMIT_TAG:
        raise _Invalid(f"commit tag {bytes(ctag)!r} is not {COMMIT_TAG!r}")
    if total != end - pos:
        raise _Invalid(f"trailer length {total} does not match header length {end - pos}")
    if zlib.crc32(buf[pos:body_end]) != crc:
        raise _Invalid("transaction checksum mismatch")
    # The checksums passed; now the record lengths must tile the body exactly.
    offsets: list[tuple[bytes, int]] = []
    p = pos + TXN_HEADER_SIZE
    unpack = RECORD_HEADER.unpack_from
    for _ in range(count):
        if p + RECORD_HEADER_SIZE > body_end:
            raise _Invalid(f"record at {p} runs past the transaction body")
        oid, data_length, ref_count = unpack(buf, p)
        offsets.append((bytes(oid), p))
        p += RECORD_HEADER_SIZE + data_length + 8 * ref_count
    if p != body_end:
        raise _Invalid(f"records end at {p}, the transaction body at {body_end}")
    if len({oid for oid, _ in offsets}) != count:
        raise _Invalid("an oid appears twice in one transaction")
    return end, tid, time_us, offsets


def decode_transaction(buf: Buffer, offset: int, path: str, base: int = 0) -> Transaction:
    """Decode the transaction at file offset ``offset``.

    ``buf[0]`` is file offset ``base``.  Raises CorruptionError(path, offset,
    reason) when the bytes there are not a valid transaction.
    """
    pos = offset - base
    try:
        end, tid, time_us, _offsets = _check_transaction(buf, pos, len(buf))
    except _Invalid as exc:
        raise CorruptionError(path, offset, str(exc)) from None
    records = []
    p = pos + TXN_HEADER_SIZE
    body_end = end - TXN_TRAILER_SIZE
    while p < body_end:
        oid, data_length, ref_count = RECORD_HEADER.unpack_from(buf, p)
        d = p + RECORD_HEADER_SIZE
        r = d + data_length
        e = r + 8 * ref_count
        records.append(TxnRecord(bytes(oid), bytes(buf[d:r]), bytes(buf[r:e]), p + base))
        p = e
    return Transaction(tid, time_us, offset, end - pos, records)


def scan(
    buf: Buffer,
    start: int,
    path: str,
    *,
    last_tid: int = 0,
    repair: bool = False,
    index: MutableMapping[bytes, int] | None = None,
    base: int = 0,
) -> ScanResult:
    """Walk the transactions from file offset ``start`` to the end of ``buf``.

    ``buf[0]`` is file offset ``base`` and ``buf`` ends at the end of the file.
    ``last_tid`` is the tid of the transaction before ``start`` (0 for none).
    When ``index`` is given, ``index[oid]`` is set to the offset of each record
    of each valid transaction, so that it ends holding current records.

    Applies the recovery rule (RCV-001..RCV-004): bytes at the first invalid
    transaction are a torn tail when no valid transaction starts anywhere after
    them; otherwise the file is damaged and CorruptionError(path, offset,
    reason) is raised, unless ``repair`` is set, in which case the result has
    ``corrupt=True`` and the tail runs from the damage to the end.
    """
    limit = len(buf)
    pos = start - base
    spans: list[TxnSpan] = []
    check = _check_transaction
    while pos < limit:
        try:
            end, tid, time_us, offsets = check(buf, pos, limit)
            # [FMT-012] Tids strictly increase within a file.
            if tid <= last_tid:
                raise _Invalid(f"transaction id {tid} does not follow {last_tid}")
        except _Invalid as exc:
            reason = str(exc)
            break
        if index is not None:
            for oid, record_pos in offsets:
                index[oid] = record_pos + base
        spans.append(TxnSpan(pos + base, end + base, tid, time_us))
        last_tid = tid
        pos = end
    else:
        return ScanResult(spans, pos + base, None, None, False)
    # [RCV-002] Damage is a torn tail only if nothing valid follows it.
    later = _find_valid_transaction(buf, pos + 1, limit)
    if later is not None:
        # [RCV-003] A valid transaction after the damage: the file is corrupt.
        if not repair:
            raise CorruptionError(
                path,
                pos + base,
                f"{reason}; a valid transaction follows at offset {later + base}, so this is "
                "damage, not an interrupted commit (open with repair=True to cut the file here)",
            )
        return ScanResult(spans, pos + base, (pos + base, limit + base), reason, True)
    return ScanResult(spans, pos + base, (pos + base, limit + base), reason, False)


def _find_valid_transaction(buf: Buffer, pos: int, limit: int) -> int | None:
    """Return the buffer position of the first valid transaction at or after ``pos``."""
    # memoryview has no find(); damage is rare, so the copy is acceptable.
    searchable = buf if isinstance(buf, bytes | bytearray) else bytes(buf)
    while True:
        pos = searchable.find(TXN_TAG, pos, limit)
        if pos < 0:
            return None
        try:
            _check_transaction(searchable, pos, limit)
        except _Invalid:
            pos += 1
            continue
        return pos


def trailer_crc_before(buf: Buffer, end: int, base: int = 0) -> int:
    """Return the checksum stored in the trailer that ends at file offset ``end``.

    The on-disk index records it to recognise the transaction it covers up to.
    """
    _tag, crc, _total = TXN_TRAILER.unpack_from(buf, end - base - TXN_TRAILER_SIZE)
    return int(crc)


# --- records -------------------------------------------------------------------


def record_size(header: Buffer) -> int:
    """Return the full size of the record whose 16-byte header starts ``header``."""
    _oid, data_length, ref_count = RECORD_HEADER.unpack_from(header, 0)
    return int(RECORD_HEADER_SIZE + data_length + 8 * ref_count)


def decode_record_at(buf: Buffer, offset: int, path: str, base: int = 0) -> Record:
    """Decode the record at file offset ``offset``; ``buf[0]`` is file offset ``base``.

    Raises CorruptionError when the buffer ends before the record does.
    """
    pos = offset - base
    if pos < 0 or pos + RECORD_HEADER_SIZE > len(buf):
        raise CorruptionError(path, offset, "record header runs past the end of the file")
    oid, data_length, ref_count = RECORD_HEADER.unpack_from(buf, pos)
    d = pos + RECORD_HEADER_SIZE
    r = d + data_length
    e = r + 8 * ref_count
    if e > len(buf):
        raise CorruptionError(path, offset, "record runs past the end of the file")
    return Record(bytes(oid), bytes(buf[d:r]), bytes(buf[r:e]))
