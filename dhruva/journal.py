"""The journal codec: file header, transactions and records (sans-IO).

Spec: ``spec/file-format.md`` (FMT layouts, RCV-001 validity and recovery).

Theory of operation.  A data file is a 64-byte file header followed by
transactions appended one after another.  A transaction is a 40-byte header
(:class:`TxnHeader`), the records (each a :class:`RecordHeader`, the data and
the references), and a 16-byte trailer (:class:`CommitTrailer`, the commit
marker) whose CRC covers the header and every record.  Format version 2 adds a
CRC of each record to its header, so that a load checks the bytes it returns
(FMT-020); version 1 files (16-byte record headers, no record CRC) are still
read and appended to in their own layout.

This module is the one owner of the layout: every other module reads headers
through the named structures here, and every reader decides whether the bytes
at an offset are a transaction with the one function
:func:`check_transaction` (RCV-001), which names the first check that failed.
A transaction whose bytes do not all check out is not a transaction: either it
is the torn tail of an interrupted append (nothing valid follows it, and
nothing proves it was committed) or the file is damaged (RCV-002, RCV-003,
RCV-008).

Everything here takes bytes-like objects (or a ``read(length, offset)``
callable) and returns values; nothing opens a file.  ``path`` arguments serve
only to name the file in error messages.  All offsets are absolute file
offsets; a buffer passed with ``base`` holds the file bytes starting at that
offset.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Callable, MutableMapping, Sequence
from typing import NamedTuple

from dhruva import speedups
from dhruva.error import CorruptionError, FormatError
from dhruva.record import Record, new_record

Buffer = bytes | bytearray | memoryview | mmap.mmap
#: ``read(length, offset)``: at most ``length`` bytes of the file from ``offset``.
Read = Callable[[int, int], Buffer]

# --- constants and layouts (spec: file-format.md, "File header") -------------

MAGIC = b"\x89DHRUVA\n"
#: Version 1: record headers of 16 bytes, no record checksum.
FORMAT_V1 = 1
#: Version 2: record headers of 20 bytes ending in a CRC of the record (FMT-020).
FORMAT_V2 = 2
#: The version new files are written in.
MAJOR_VERSION = FORMAT_V2
#: The versions this code reads (and appends to, each in its own layout).
SUPPORTED_VERSIONS = (FORMAT_V1, FORMAT_V2)
MINOR_VERSION = 0
FILE_ID_SIZE = 16

# magic, major, minor, flags, file_id, reserved, crc
FILE_HEADER = struct.Struct(">8sHHI16s28sI")
assert FILE_HEADER.size == 64
FILE_HEADER_SIZE = FILE_HEADER.size
FILE_HEADER_CRC_START = 60
assert FILE_HEADER_CRC_START == FILE_HEADER_SIZE - 4

TXN_TAG = b"DTXN"
COMMIT_TAG = b"DCMT"

# tag, record_count, body_length, tid, time_us, reserved, header crc
TXN_HEADER = struct.Struct(">4sIQQQII")
assert TXN_HEADER.size == 40
_TXN_HEADER_NO_CRC = struct.Struct(">4sIQQQI")
#: The header checksum covers header bytes [0, TXN_HEADER_CRC_START).
TXN_HEADER_CRC_START = _TXN_HEADER_NO_CRC.size
assert TXN_HEADER_CRC_START == 36
TXN_HEADER_SIZE = TXN_HEADER.size

# Version 1 record header: oid, data_length, ref_count
RECORD_HEADER_V1 = struct.Struct(">8sII")
assert RECORD_HEADER_V1.size == 16
# Version 2 record header: oid, data_length, ref_count, record crc
RECORD_HEADER_V2 = struct.Struct(">8sIII")
assert RECORD_HEADER_V2.size == 20
#: The record checksum covers record header bytes [0, RECORD_CRC_START), then
#: the data, then the references.
RECORD_CRC_START = RECORD_HEADER_V1.size
assert RECORD_CRC_START == 16

# tag, crc over header and body, total_length
TXN_TRAILER = struct.Struct(">4sIQ")
assert TXN_TRAILER.size == 16
TXN_TRAILER_SIZE = TXN_TRAILER.size

TXN_OVERHEAD = TXN_HEADER_SIZE + TXN_TRAILER_SIZE
assert TXN_OVERHEAD == 56
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF


def record_header_size(version: int = MAJOR_VERSION) -> int:
    """Return the size of a record header in a file of format ``version``."""
    return RECORD_HEADER_V2.size if version >= FORMAT_V2 else RECORD_HEADER_V1.size


#: The record header size of the current format (new files).
RECORD_HEADER_SIZE = record_header_size(MAJOR_VERSION)


class FileHeader(NamedTuple):
    """The decoded file header."""

    major: int
    minor: int
    flags: int
    file_id: bytes


class TxnHeader(NamedTuple):
    """A transaction header, field by field (spec: "Transactions")."""

    tag: bytes
    record_count: int
    body_length: int
    tid: int
    time_us: int
    reserved: int
    header_crc: int

    @property
    def length(self) -> int:
        """The bytes of the whole transaction: header, body and trailer."""
        return TXN_OVERHEAD + self.body_length

    @staticmethod
    def unpack_from(buf: Buffer, pos: int = 0) -> TxnHeader:
        """Decode the 40 bytes at ``buf[pos:]`` (no check; see :func:`check_transaction`)."""
        tag, count, body_length, tid, time_us, reserved, crc = TXN_HEADER.unpack_from(buf, pos)
        return TxnHeader(bytes(tag), count, body_length, tid, time_us, reserved, crc)


def encode_txn_header(record_count: int, body_length: int, tid: int, time_us: int) -> bytes:
    """Return the 40-byte header of a transaction, with its checksum (FMT-010)."""
    head = _TXN_HEADER_NO_CRC.pack(TXN_TAG, record_count, body_length, tid, time_us, 0)
    return head + zlib.crc32(head).to_bytes(4, "big")


class RecordHeader(NamedTuple):
    """A record header, field by field; ``crc`` is 0 in a version 1 file."""

    oid: bytes
    data_length: int
    ref_count: int
    crc: int
    header_size: int

    @property
    def size(self) -> int:
        """The bytes of the whole record: header, data and references."""
        return self.header_size + self.data_length + 8 * self.ref_count

    @staticmethod
    def unpack_from(buf: Buffer, pos: int = 0, version: int = MAJOR_VERSION) -> RecordHeader:
        """Decode the record header at ``buf[pos:]`` of a file of format ``version``."""
        if version >= FORMAT_V2:
            oid, data_length, ref_count, crc = RECORD_HEADER_V2.unpack_from(buf, pos)
            return RecordHeader(bytes(oid), data_length, ref_count, crc, RECORD_HEADER_V2.size)
        oid, data_length, ref_count = RECORD_HEADER_V1.unpack_from(buf, pos)
        return RecordHeader(bytes(oid), data_length, ref_count, 0, RECORD_HEADER_V1.size)


def encode_record_header(
    oid: bytes, data: Buffer, refs: Buffer, version: int = MAJOR_VERSION
) -> bytes:
    """Return the header of the record ``(oid, data, refs)`` in format ``version``."""
    head = RECORD_HEADER_V1.pack(oid, len(data), len(refs) >> 3)
    if version < FORMAT_V2:
        return head
    # [FMT-020] The record checksum covers header bytes 0..15, data and refs.
    crc = zlib.crc32(refs, zlib.crc32(data, zlib.crc32(head)))
    return head + crc.to_bytes(4, "big")


class CommitTrailer(NamedTuple):
    """A transaction trailer (the commit marker), field by field."""

    tag: bytes
    crc: int
    total_length: int

    @staticmethod
    def unpack_from(buf: Buffer, pos: int = 0) -> CommitTrailer:
        """Decode the 16 bytes at ``buf[pos:]`` (no check)."""
        tag, crc, total = TXN_TRAILER.unpack_from(buf, pos)
        return CommitTrailer(bytes(tag), crc, total)

    def pack(self) -> bytes:
        return TXN_TRAILER.pack(self.tag, self.crc, self.total_length)


def encode_trailer(crc: int, body_length: int) -> bytes:
    """Return the trailer of a transaction whose header and body have checksum ``crc``."""
    return CommitTrailer(COMMIT_TAG, crc, TXN_OVERHEAD + body_length).pack()


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


class CheckedTransaction(NamedTuple):
    """A transaction that passed every check of RCV-001.

    ``records`` lists ``(oid, absolute offset of its record header)`` in file
    order; ``trailer_crc`` is the checksum its trailer holds.
    """

    header: TxnHeader
    offset: int
    end: int
    records: list[tuple[bytes, int]]
    trailer_crc: int

    @property
    def span(self) -> TxnSpan:
        return TxnSpan(self.offset, self.end, self.header.tid, self.header.time_us)


class ScanResult(NamedTuple):
    """The outcome of :func:`scan`.

    ``spans`` lists the valid transactions in file order; ``end`` is the offset
    just past the last of them (the start when there is none).  ``tail`` is
    ``(offset, end_of_buffer)`` of bytes that are not valid transactions, or
    None.  ``tail_reason`` says why the first of those bytes were rejected.
    ``corrupt`` is True when those bytes are damage rather than a torn tail
    (possible only with ``repair=True``; otherwise scan raises).
    ``last_trailer_crc`` is the trailer checksum of the last valid
    transaction (0 when there is none).  ``tail_code`` is the reason code of
    ``tail_reason`` (RCV-052).
    """

    spans: list[TxnSpan]
    end: int
    tail: tuple[int, int] | None
    tail_reason: str | None
    corrupt: bool
    last_trailer_crc: int = 0
    tail_code: str | None = None


# --- file header ---------------------------------------------------------------


def encode_file_header(file_id: bytes, version: int = MAJOR_VERSION) -> bytes:
    """Return the 64-byte file header for a new data file (FMT-001, FMT-006, FMT-021)."""
    if len(file_id) != FILE_ID_SIZE:
        raise ValueError(f"a file id is {FILE_ID_SIZE} bytes, not {len(file_id)}")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"format version {version} is not one of {SUPPORTED_VERSIONS}")
    head = FILE_HEADER.pack(MAGIC, version, MINOR_VERSION, 0, file_id, bytes(28), 0)
    crc = zlib.crc32(head[:FILE_HEADER_CRC_START])
    return head[:FILE_HEADER_CRC_START] + crc.to_bytes(4, "big")


def decode_file_header(buf: Buffer, path: str) -> FileHeader:
    """Decode the file header at the start of ``buf``.

    Raises FormatError when ``buf`` does not start with the dhruva magic or
    carries a major version this code does not read (FMT-022), and
    CorruptionError when the header is short or its checksum does not match.
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
        raise FormatError(path, 0, reason, "magic")
    if len(buf) < 12:
        raise CorruptionError(
            path, 0, f"file header truncated to {len(buf)} bytes", "file-header-short"
        )
    major, minor = struct.unpack_from(">HH", buf, 8)
    # [FMT-022] The major version is checked before the checksum: a future
    # major version may lay the header out differently.
    if major not in SUPPORTED_VERSIONS:
        raise FormatError(
            path,
            8,
            f"data file format version {major}.{minor} is not supported "
            f"(this dhruva reads versions 1.x and 2.x); use a matching dhruva release",
            "major-version",
        )
    if len(buf) < FILE_HEADER_SIZE:
        raise CorruptionError(
            path, 0, f"file header truncated to {len(buf)} bytes", "file-header-short"
        )
    _magic, major, minor, flags, file_id, _reserved, crc = FILE_HEADER.unpack_from(buf, 0)
    # [FMT-005] The header checksum covers bytes 0..59.
    if zlib.crc32(buf[:FILE_HEADER_CRC_START]) != crc:
        raise CorruptionError(path, 0, "file header checksum mismatch", "file-header-crc")
    # [FMT-004] Flags and higher minor versions are ignored by this reader.
    return FileHeader(major, minor, flags, bytes(file_id))


def is_unfinished_header(buf: Buffer) -> bool:
    """Return True when ``buf`` (a whole file) is what an interrupted creation can leave.

    That is at most 64 bytes, not a valid header, and every byte either zero or
    the byte a writer puts there: the magic, a supported version with minor 0,
    zero flags and zero reserved bytes; the file id and checksum positions may
    hold anything (RCV-006).  A foreign file almost never passes this test.
    """
    if len(buf) > FILE_HEADER_SIZE:
        return False
    expected = [encode_file_header(bytes(FILE_ID_SIZE), v) for v in SUPPORTED_VERSIONS]
    for position, value in enumerate(bytes(buf)):
        if 16 <= position < 32 or position >= FILE_HEADER_CRC_START:
            continue  # file id and checksum
        if value and all(value != header[position] for header in expected):
            return False
    if len(buf) == FILE_HEADER_SIZE:
        try:
            decode_file_header(buf, "")
        except CorruptionError:
            return True
        return False
    return True


# --- transactions ----------------------------------------------------------------


_c_encode_transaction = speedups.encode_transaction


def encode_transaction(
    tid: int,
    time_us: int,
    records: Sequence[tuple[bytes, Buffer, bytes]],
    version: int = MAJOR_VERSION,
) -> bytes:
    """Return the bytes of one transaction holding ``records`` (FMT-010..FMT-016, FMT-020).

    ``records`` are ``(oid, data, refs)`` with distinct 8-byte oids and refs a
    multiple of 8 bytes; ``version`` is the format of the file it goes into.
    Raises ValueError for a repeated oid or a field that does not fit its width.
    """
    if _c_encode_transaction is not None and type(records) is list:
        # The C version answers the ordinary case; None means "do it here".
        txn = _c_encode_transaction(tid, time_us, records, version)
        if txn is not None:
            return txn
    if not 0 < tid <= _U64_MAX or not 0 <= time_us <= _U64_MAX:
        raise ValueError(f"tid {tid} or time {time_us} out of range")
    parts: list[Buffer] = [b""]
    body_length = 0
    header_size = record_header_size(version)
    for oid, data, refs in records:
        data_length = len(data)
        if data_length > _U32_MAX or len(refs) // 8 > _U32_MAX:
            raise ValueError(f"record {oid!r} is too large for one record")
        parts.append(encode_record_header(oid, data, refs, version))
        parts.append(data)
        parts.append(refs)
        body_length += header_size + data_length + len(refs)
    count = len(records)
    # [FMT-013] An oid appears at most once per transaction.
    if count > 1 and len({record[0] for record in records}) != count:
        raise ValueError("an oid appears twice in one transaction")
    parts[0] = encode_txn_header(count, body_length, tid, time_us)
    txn = b"".join(parts)
    return txn + encode_trailer(zlib.crc32(txn), body_length)


class InvalidTransaction(Exception):
    """The bytes at an offset are not a valid transaction (RCV-001).

    Not a DhruvaError: the caller decides from the context whether the bytes
    are a torn tail or damage (RCV-002, RCV-003, RCV-008).  ``reason`` says
    which check failed, for people; ``code`` names it for programs, with the
    reason codes of ``conformance/vectors/README.md`` (RCV-052).
    """

    def __init__(self, reason: str, code: str) -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)


def check_transaction(
    read: Read,
    offset: int,
    limit: int,
    *,
    last_tid: int = 0,
    version: int = MAJOR_VERSION,
    chunk_bytes: int | None = None,
) -> CheckedTransaction:
    """Check the transaction at file offset ``offset`` of a file ``limit`` bytes long.

    The one implementation of the validity rule: the journal scan, the
    streaming walk, verify, pack, backup and history all call it.  It runs the
    checks of RCV-001 in the order the spec lists them (RCV-009) and raises
    InvalidTransaction naming the first that fails.  ``read(length, offset)``
    returns file bytes; the body is read in one piece, or in pieces of at most
    ``chunk_bytes`` (memory stays one chunk plus the oids of the transaction).
    ``last_tid`` is the tid of the previous transaction (0 for none).
    """
    # [RCV-001] 1: room for a header and a trailer.
    if limit - offset < TXN_OVERHEAD:
        raise InvalidTransaction(
            f"only {limit - offset} bytes left, too short for a transaction", "short"
        )
    head = read(TXN_HEADER_SIZE, offset)
    if len(head) < TXN_HEADER_SIZE:
        raise InvalidTransaction("the file ended inside a transaction header", "short")
    header = TxnHeader.unpack_from(head)
    # 2: the tag; 3: the header checksum (before any length is trusted).
    if header.tag != TXN_TAG:
        raise InvalidTransaction(f"transaction tag {header.tag!r} is not {TXN_TAG!r}", "txn-tag")
    if zlib.crc32(head[:TXN_HEADER_CRC_START]) != header.header_crc:
        raise InvalidTransaction("transaction header checksum mismatch", "header-crc")
    body_start = offset + TXN_HEADER_SIZE
    body_end = body_start + header.body_length
    end = body_end + TXN_TRAILER_SIZE
    # 4: the transaction lies within the file.
    if end > limit:
        raise InvalidTransaction(
            f"transaction of {end - offset} bytes runs past the end of the file",
            "past-end",
        )
    raw_trailer = read(TXN_TRAILER_SIZE, body_end)
    if len(raw_trailer) < TXN_TRAILER_SIZE:
        raise InvalidTransaction("the file ended inside a transaction trailer", "short")
    trailer = CommitTrailer.unpack_from(raw_trailer)
    # 5: the commit tag; 6: the trailer's length agrees with the header's.
    if trailer.tag != COMMIT_TAG:
        raise InvalidTransaction(f"commit tag {trailer.tag!r} is not {COMMIT_TAG!r}", "commit-tag")
    if trailer.total_length != end - offset:
        raise InvalidTransaction(
            f"trailer length {trailer.total_length} does not match header length {end - offset}",
            "total-length",
        )
    # 7: the checksum of header and body, computed as the body arrives, with
    # the record headers walked on the way (they are trusted only after it).
    crc = zlib.crc32(head)
    records: list[tuple[bytes, int]] = []
    next_record = body_start  # file offset of the next record header
    carry = b""  # bytes of a record header split between two chunks
    chunk_start = body_start
    step = header.body_length if chunk_bytes is None else chunk_bytes
    header_size = record_header_size(version)
    unpack = RECORD_HEADER_V1.unpack_from  # oid, data_length, ref_count: same in v1 and v2
    while chunk_start < body_end:
        chunk = read(min(step, body_end - chunk_start), chunk_start)
        if not chunk:
            raise InvalidTransaction(
                f"the file ended at {chunk_start}, inside a transaction", "short"
            )
        crc = zlib.crc32(chunk, crc)
        buffer: Buffer = carry + bytes(chunk) if carry else chunk
        buffer_start = chunk_start - len(carry)
        buffer_end = buffer_start + len(buffer)
        while next_record < body_end and next_record + header_size <= buffer_end:
            oid, data_length, ref_count = unpack(buffer, next_record - buffer_start)
            records.append((bytes(oid), next_record))
            next_record += header_size + data_length + 8 * ref_count
        carry = bytes(buffer[next_record - buffer_start :]) if next_record < buffer_end else b""
        chunk_start += len(chunk)
    if crc != trailer.crc:
        raise InvalidTransaction("transaction checksum mismatch", "txn-crc")
    # 8: the records tile the body exactly; 9: no oid repeats (FMT-013).
    count = header.record_count
    if next_record != body_end or len(records) != count:
        raise InvalidTransaction(
            f"{count} records do not tile the body of {header.body_length} bytes",
            "record-sizes",
        )
    if len({oid for oid, _ in records}) != count:
        raise InvalidTransaction("an oid appears twice in one transaction", "repeated-oid")
    # 10: [FMT-012] tids strictly increase within a file.
    if header.tid <= last_tid:
        raise InvalidTransaction(
            f"transaction id {header.tid} does not follow {last_tid}", "tid-order"
        )
    return CheckedTransaction(header, offset, end, records, trailer.crc)


def _buffer_reader(view: memoryview, base: int) -> Read:
    def read(length: int, offset: int) -> memoryview:
        position = offset - base
        return view[position : position + length]

    return read


def _as_view(buf: Buffer) -> memoryview:
    return buf if isinstance(buf, memoryview) else memoryview(buf)


def decode_transaction(
    buf: Buffer, offset: int, path: str, base: int = 0, version: int = MAJOR_VERSION
) -> Transaction:
    """Decode the transaction at file offset ``offset``, checking every record.

    ``buf[0]`` is file offset ``base``.  Raises CorruptionError(path, offset,
    reason) when the bytes there are not a valid transaction (RCV-001), or
    naming the record when a version 2 record fails its checksum (FMT-023).
    """
    view = _as_view(buf)
    try:
        checked = check_transaction(
            _buffer_reader(view, base), offset, base + len(view), version=version
        )
    except InvalidTransaction as exc:
        raise CorruptionError(path, offset, exc.reason, exc.code) from None
    records = [
        TxnRecord(record.oid, record.data, record.refs, record_offset)
        for record, record_offset in (
            (decode_record_at(view, position, path, base, version), position)
            for _oid, position in checked.records
        )
    ]
    header = checked.header
    return Transaction(header.tid, header.time_us, offset, checked.end - offset, records)


def damage_error(
    path: str, offset: int, reason: str, proof: str, code: str | None = None
) -> CorruptionError:
    """Return the error for an invalid transaction that is damage, not a torn tail.

    ``proof`` says what shows it (a valid transaction after it, RCV-003, or
    the index, RCV-008).  Every path (open, walk, verify) builds its error
    here, so the same bytes give the same message.
    """
    return CorruptionError(
        path,
        offset,
        f"{reason}; {proof}, so this is damage, not an interrupted commit "
        "(open with repair=True to cut the file here)",
        code,
    )


def damage_proof(
    buf: Buffer,
    offset: int,
    *,
    base: int = 0,
    version: int = MAJOR_VERSION,
    committed_end: int = 0,
) -> str | None:
    """Say why the invalid transaction at ``offset`` is damage, or return None for a torn tail.

    ``buf`` holds the file from ``base`` to its end.  The bytes are damage when
    something proves the transaction was committed: ``committed_end``, the
    offset up to which the sidecar index says transactions were committed
    (RCV-008), lies beyond ``offset`` and within the file, or a valid transaction begins at a later
    offset (RCV-002, RCV-003).
    """
    # A data file shorter than the index's covered offset is not the file the
    # index describes (an older copy put back, RCV-031); only damage in place
    # below the covered offset is proven committed.
    if offset < committed_end <= base + len(buf):
        # [RCV-008] The index was written after this transaction was synced.
        return f"the index shows the file was committed up to offset {committed_end}"
    later = find_valid_transaction(buf, offset + 1, base=base, version=version)
    if later is not None:
        return f"a valid transaction follows at offset {later}"
    return None


def scan(
    buf: Buffer,
    start: int,
    path: str,
    *,
    last_tid: int = 0,
    repair: bool = False,
    index: MutableMapping[bytes, int] | None = None,
    base: int = 0,
    version: int = MAJOR_VERSION,
    committed_end: int = 0,
) -> ScanResult:
    """Walk the transactions from file offset ``start`` to the end of ``buf``.

    ``buf[0]`` is file offset ``base`` and ``buf`` ends at the end of the file.
    ``last_tid`` is the tid of the transaction before ``start`` (0 for none).
    When ``index`` is given, ``index[oid]`` is set to the offset of each record
    of each valid transaction, so that it ends holding current records.
    ``committed_end`` is the offset up to which the file is known committed
    (the sidecar index's covered offset, RCV-008), 0 when nothing is known.

    Applies the recovery rule (RCV-001..RCV-004, RCV-008): bytes at the first
    invalid transaction are a torn tail unless :func:`damage_proof` finds them
    to be damage, in which case CorruptionError(path, offset, reason) is
    raised, unless ``repair`` is set, in which case the result has
    ``corrupt=True`` and the tail runs from the damage to the end.
    """
    view = _as_view(buf)
    read = _buffer_reader(view, base)
    limit = base + len(view)
    pos = start
    spans: list[TxnSpan] = []
    last_crc = 0
    while pos < limit:
        try:
            checked = check_transaction(read, pos, limit, last_tid=last_tid, version=version)
        except InvalidTransaction as exc:
            reason, code = exc.reason, exc.code
            break
        if index is not None:
            for oid, record_pos in checked.records:
                index[oid] = record_pos
        spans.append(checked.span)
        last_tid = checked.header.tid
        last_crc = checked.trailer_crc
        pos = checked.end
    else:
        return ScanResult(spans, pos, None, None, False, last_crc)
    # [RCV-002] Damage is a torn tail only if nothing proves it committed.
    proof = damage_proof(view, pos, base=base, version=version, committed_end=committed_end)
    if proof is None and is_free_space(view[pos - base :]):
        # [RCV-060] Zero bytes after the last transaction: the writer's free space.
        return ScanResult(spans, pos, None, None, False, last_crc)
    if proof is not None:
        # [RCV-003] [RCV-008] The file is corrupt.
        if not repair:
            raise damage_error(path, pos, reason, proof, code)
        return ScanResult(spans, pos, (pos, limit), reason, True, last_crc, code)
    return ScanResult(spans, pos, (pos, limit), reason, False, last_crc, code)


def is_free_space(buf: Buffer) -> bool:
    """Return True when every byte of ``buf`` is zero: free space, not a torn tail (RCV-060)."""
    view = _as_view(buf)
    return view == bytes(len(view))


def find_valid_transaction(
    buf: Buffer, offset: int, *, base: int = 0, version: int = MAJOR_VERSION
) -> int | None:
    """Return the file offset of the first valid transaction at or after ``offset``.

    ``buf`` holds the file from offset ``base`` to its end.  A candidate is
    checked fully (RCV-001) except for the tid order, which needs its
    predecessor.
    """
    # memoryview has no find(); damage is rare, so the copy is acceptable.
    searchable = buf if isinstance(buf, bytes | bytearray) else bytes(buf)
    read = _buffer_reader(memoryview(searchable), base)
    limit = base + len(searchable)
    pos = offset - base
    while True:
        pos = searchable.find(TXN_TAG, pos)
        if pos < 0:
            return None
        try:
            # [RCV-050] Every check but the tid order: last_tid=-1 admits tid 0.
            check_transaction(read, pos + base, limit, last_tid=-1, version=version)
        except InvalidTransaction:
            pos += 1
            continue
        return pos + base


def trailer_crc_before(buf: Buffer, end: int, base: int = 0) -> int:
    """Return the checksum stored in the trailer that ends at file offset ``end``.

    The on-disk index records it to recognise the transaction it covers up to.
    """
    crc: int = TXN_TRAILER.unpack_from(buf, end - base - TXN_TRAILER_SIZE)[1]
    return crc


# --- records -------------------------------------------------------------------


# oid-less view of a record header: data_length, ref_count (same in both versions)
RECORD_LENGTHS = struct.Struct(">II")
assert RECORD_LENGTHS.size == 8
_unpack_v1 = RECORD_HEADER_V1.unpack_from
_unpack_v2 = RECORD_HEADER_V2.unpack_from
_crc32 = zlib.crc32


def record_size(header: Buffer, version: int = MAJOR_VERSION) -> int:
    """Return the full size of the record whose header starts ``header``."""
    data_length, ref_count = RECORD_LENGTHS.unpack_from(header, 8)
    header_size = 20 if version >= FORMAT_V2 else 16
    return int(header_size + data_length + 8 * ref_count)


def decode_record_at(
    buf: Buffer, offset: int, path: str, base: int = 0, version: int = MAJOR_VERSION
) -> Record:
    """Decode the record at file offset ``offset``; ``buf[0]`` is file offset ``base``.

    Raises CorruptionError(path, offset, reason) when the buffer ends before
    the record does, or when a version 2 record fails its checksum (FMT-023).
    Version 1 records carry no checksum and are returned unchecked.  This is
    the load path of every storage, so it reads the struct directly rather
    than building a :class:`RecordHeader`.
    """
    pos = offset - base
    v2 = version >= FORMAT_V2
    header_size = 20 if v2 else 16
    if pos < 0 or pos + header_size > len(buf):
        raise CorruptionError(path, offset, "record header runs past the end of the file")
    if v2:
        oid, data_length, ref_count, stored_crc = _unpack_v2(buf, pos)
    else:
        oid, data_length, ref_count = _unpack_v1(buf, pos)
    d = pos + header_size
    r = d + data_length
    e = r + 8 * ref_count
    if e > len(buf):
        raise CorruptionError(path, offset, "record runs past the end of the file")
    data = bytes(buf[d:r])
    refs = bytes(buf[r:e])
    # [FMT-023] Every load checks the bytes it returns.  Data and refs are
    # contiguous, so one pass covers both.
    if v2 and _crc32(buf[d:e], _crc32(buf[pos : pos + RECORD_CRC_START])) != stored_crc:
        raise CorruptionError(
            path,
            offset,
            f"record of oid {int.from_bytes(oid, 'big')} fails its checksum: its "
            "bytes changed after they were committed",
            "record-crc",
        )
    return new_record((oid, data, refs))
