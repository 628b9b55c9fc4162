"""Write the valid, torn, damaged and refused data files of this folder.

Spec: ``spec/file-format.md`` (FMT layouts, "Validity", "Recovery"); the file
format of the vectors and the meaning of every ``expect`` field are in
``conformance/vectors/README.md``.

Every vector is built from dhruva's own writer (``dhruva.journal``'s
``encode_file_header`` and ``encode_transaction``) and then, for the invalid
ones, changed by one named *mutation*: cut the file, flip a byte, rewrite a
header or record field and recompute the checksums (*reseal*) so that exactly
one check of RCV-001 fails.  The expected outcome of each vector is stated
here, beside its mutation, and ``tests/test_vectors.py`` proves it against
dhruva's reader.

    python conformance/vectors/file-recovery/generate.py          # rewrite the files
    python conformance/vectors/file-recovery/generate.py --check  # exit 1 if stale

Run it after any change to the journal format: the mutations address fields
through the codec's structs (``TXN_HEADER``, ``RECORD_HEADER``,
``TXN_TRAILER``), not through fixed offsets, so most survive a layout change;
``reseal`` must learn any new checksum the format adds.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dhruva import journal

HERE = Path(__file__).parent
FILE_ID = bytes(range(16))
TIME_US = 1_700_000_000_000_000


def oid(number: int) -> bytes:
    return number.to_bytes(8, "big")


def txn(tid: int, *records: tuple[int, bytes, list[int]]) -> bytes:
    """One transaction as dhruva's writer encodes it."""
    return journal.encode_transaction(
        tid,
        TIME_US + tid,
        [(oid(o), data, b"".join(oid(r) for r in refs)) for o, data, refs in records],
    )


# --- mutations: each takes a transaction's bytes and returns new bytes ---------------


def header_of(data: bytes) -> journal.TxnHeader:
    return journal.TxnHeader.unpack_from(data, 0)


def with_header(data: bytes, **fields: Any) -> bytes:
    """Rewrite header fields, leaving every checksum as it was."""
    head = header_of(data)._replace(**fields)
    return journal.TXN_HEADER.pack(*head) + data[journal.TXN_HEADER_SIZE :]


def body_end(data: bytes) -> int:
    return journal.TXN_HEADER_SIZE + header_of(data).body_length


def trailer_of(data: bytes) -> journal.CommitTrailer:
    return journal.CommitTrailer.unpack_from(data, body_end(data))


def with_trailer(data: bytes, **fields: Any) -> bytes:
    """Rewrite trailer fields, leaving every checksum as it was (unless given)."""
    end = body_end(data)
    trailer = trailer_of(data)._replace(**fields)
    return data[:end] + journal.TXN_TRAILER.pack(*trailer) + data[end + journal.TXN_TRAILER_SIZE :]


def record_positions(data: bytes) -> list[int]:
    """Where each record header starts, walking the record sizes of the header's count."""
    positions, position = [], journal.TXN_HEADER_SIZE
    for _ in range(header_of(data).record_count):
        positions.append(position)
        position += journal.record_size(data[position : position + journal.RECORD_HEADER_SIZE])
    return positions


def with_record(data: bytes, index: int, **fields: Any) -> bytes:
    """Rewrite fields (``oid``, ``data_length``, ``ref_count``, ``crc``) of one record header.

    The record's own checksum (format version 2) is left as it was unless given.
    """
    position = record_positions(data)[index]
    header = journal.RecordHeader.unpack_from(data, position)
    values = {
        "oid": header.oid,
        "data_length": header.data_length,
        "ref_count": header.ref_count,
        "crc": header.crc,
    }
    values.update(fields)
    packed = journal.RECORD_HEADER_V2.pack(
        values["oid"], values["data_length"], values["ref_count"], values["crc"]
    )
    return data[:position] + packed + data[position + journal.RECORD_HEADER_SIZE :]


def reseal(data: bytes) -> bytes:
    """Recompute the header checksum and the trailer checksum, as a writer would."""
    crc_start = journal.TXN_HEADER_SIZE - 4
    head = data[:crc_start]
    data = head + zlib.crc32(head).to_bytes(4, "big") + data[journal.TXN_HEADER_SIZE :]
    return with_trailer(data, crc=zlib.crc32(data[: body_end(data)]))


def flip(data: bytes, position: int) -> bytes:
    """Invert the lowest bit of one byte."""
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def first_data_byte(data: bytes) -> int:
    return record_positions(data)[0] + journal.RECORD_HEADER_SIZE


# --- the files ---------------------------------------------------------------------

HEADER = journal.encode_file_header(FILE_ID)
T1 = txn(1, (0, b"root", [1]), (1, b"hello", []))
T2 = txn(2, (1, b"world", []))
T3 = txn(3, (0, b"root!", [1, 2]), (2, b"new", []))
# The current records after each transaction, oid -> (data, refs), for "current".
AFTER: dict[int, dict[int, tuple[bytes, list[int]]]] = {
    0: {},
    1: {0: (b"root", [1]), 1: (b"hello", [])},
    2: {0: (b"root", [1]), 1: (b"world", [])},
    3: {0: (b"root!", [1, 2]), 1: (b"world", []), 2: (b"new", [])},
}


@dataclass
class Vector:
    """One data file and what a reader must make of it."""

    name: str
    description: str
    parts: list[tuple[str, bytes]]
    expect: dict[str, Any]
    requirements: list[str] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(part for _label, part in self.parts)


def current(tid: int) -> dict[str, dict[str, Any]]:
    return {str(o): {"data": d.hex(), "refs": refs} for o, (d, refs) in AFTER[tid].items()}


def good(*txns: bytes) -> list[tuple[str, bytes]]:
    return [("file header", HEADER), *((f"transaction tid {header_of(t).tid}", t) for t in txns)]


def offset_after(parts: list[tuple[str, bytes]]) -> int:
    return sum(len(part) for _label, part in parts)


def valid(
    name: str, description: str, txns: list[bytes], requirements: list[str], free: int = 0
) -> Vector:
    """A file of the valid transactions ``txns``, then ``free`` zero bytes of free space."""
    parts = good(*txns)
    last = header_of(txns[-1]).tid if txns else 0
    expect = {
        "outcome": "valid",
        "tids": [header_of(t).tid for t in txns],
        "end": offset_after(parts),
        "current": current(last),
    }
    if free:
        parts.append(("free space: zeros", bytes(free)))
    return Vector(name, description, parts, expect, requirements)


def bad(
    name: str,
    description: str,
    before: list[bytes],
    invalid: tuple[str, bytes],
    reason: str,
    requirements: list[str],
    after: Sequence[tuple[str, bytes]] = (),
) -> Vector:
    """A file of valid transactions ``before``, one invalid one, and optional ``after`` parts.

    The outcome is "damaged" when one of the ``after`` parts is labelled as a
    valid transaction (a reader finds it by searching), "torn" otherwise.
    """
    parts = good(*before)
    offset = offset_after(parts)
    parts.append(invalid)
    valid_after = None
    for label, part in after:
        if valid_after is None and label.startswith("valid"):
            valid_after = offset_after(parts)
        parts.append((label, part))
    last = header_of(before[-1]).tid if before else 0
    expect: dict[str, Any] = {
        "outcome": "damaged" if valid_after is not None else "torn",
        "tids": [header_of(t).tid for t in before],
        "end": offset,
        "offset": offset,
        "reason": reason,
        "current": current(last),
    }
    if valid_after is not None:
        expect["valid_after"] = valid_after
    return Vector(name, description, parts, expect, requirements)


def refused(
    name: str,
    description: str,
    data: bytes,
    error: str,
    offset: int,
    reason: str,
    requirements: list[str],
) -> Vector:
    expect = {"outcome": "refused", "error": error, "offset": offset, "reason": reason}
    return Vector(name, description, [("file header, changed", data)], expect, requirements)


def unfinished(name: str, description: str, data: bytes) -> Vector:
    parts = [("what an interrupted creation left", data)] if data else []
    return Vector(name, description, parts, {"outcome": "unfinished"}, ["RCV-006"])


def vectors() -> list[Vector]:
    """Every vector of this folder, in the order of the README's table."""
    T3_CUT = T3[: len(T3) - 1]
    T2_BAD_CRC = flip(T2, first_data_byte(T2))
    TORN = ["RCV-001", "RCV-002"]
    DAMAGE = ["RCV-001", "RCV-003", "RCV-007"]
    repeated = reseal(with_record(T3, 1, oid=oid(0)))
    bad_magic = b"\x89DURUS\n\0" + HEADER[8:]
    next_major = journal.FILE_HEADER.pack(
        journal.MAGIC, journal.MAJOR_VERSION + 1, 0, 0, FILE_ID, bytes(28), 0
    )
    future_minor = journal.FILE_HEADER.pack(
        journal.MAGIC,
        journal.MAJOR_VERSION,
        journal.MINOR_VERSION + 7,
        0xA5,
        FILE_ID,
        b"\xee" * 28,
        0,
    )
    future_minor = future_minor[:-4] + zlib.crc32(future_minor[:-4]).to_bytes(4, "big")
    return [
        # --- valid -----------------------------------------------------------
        valid("valid-empty", "a file header and no transaction", [], ["FMT-001"]),
        valid(
            "valid-three",
            "three transactions; oid 1 is rewritten by tid 2, oid 0 by tid 3",
            [T1, T2, T3],
            ["FMT-001", "FMT-010", "FMT-012", "FMT-014"],
        ),
        valid(
            "valid-free-space",
            "two transactions, then zeros: free space, or a commit none of whose bytes arrived",
            [T1, T2],
            ["FMT-001", "RCV-060"],
            free=len(T3),
        ),
        valid(
            "valid-empty-free-space",
            "a file header, no transaction, then 256 zero bytes of free space",
            [],
            ["FMT-001", "RCV-060"],
            free=256,
        ),
        Vector(
            "valid-future-minor",
            "a header of a later minor version, with flags and reserved bytes set: read as usual",
            [
                ("file header, minor version +7, flags and reserved set", future_minor),
                ("transaction tid 1", T1),
            ],
            {"outcome": "valid", "tids": [1], "end": 64 + len(T1), "current": current(1)},
            ["FMT-001", "FMT-004"],
        ),
        # --- torn tails: nothing valid follows the first invalid transaction -----
        bad(
            "torn-short",
            "the last transaction cut to 30 bytes (fewer than a header and trailer)",
            [T1, T2],
            ("tid 3, first 30 bytes", T3[:30]),
            "short",
            TORN,
        ),
        bad(
            "torn-past-end",
            "the last transaction cut one byte short",
            [T1, T2],
            ("tid 3, less its last byte", T3_CUT),
            "past-end",
            TORN,
        ),
        bad(
            "torn-before-free-space",
            "the last transaction's trailer zeroed, then free space (zeros)",
            [T1, T2],
            ("tid 3, trailer zeroed", T3[: body_end(T3)] + bytes(journal.TXN_TRAILER_SIZE)),
            "commit-tag",
            [*TORN, "RCV-060"],
            after=[("free space: zeros", bytes(200))],
        ),
        bad(
            "torn-garbage",
            "100 bytes of 0xff after the last transaction",
            [T1, T2, T3],
            ("garbage", b"\xff" * 100),
            "txn-tag",
            TORN,
        ),
        bad(
            "torn-header-crc",
            "the last transaction's tid changed, header checksum not recomputed",
            [T1, T2],
            ("tid 3 with tid field 4, stale checksums", with_header(T3, tid=4)),
            "header-crc",
            TORN,
        ),
        bad(
            "torn-commit-tag",
            "the last transaction's trailer zeroed (its pages never reached the disk)",
            [T1, T2],
            ("tid 3, trailer zeroed", T3[: body_end(T3)] + bytes(journal.TXN_TRAILER_SIZE)),
            "commit-tag",
            TORN,
        ),
        bad(
            "torn-total-length",
            "the trailer's total length is one more than 56 + body length",
            [T1, T2],
            ("tid 3, total length + 1", with_trailer(T3, total_length=len(T3) + 1)),
            "total-length",
            TORN,
        ),
        bad(
            "torn-txn-crc",
            "one bit of the last transaction's record data flipped",
            [T1, T2],
            ("tid 3, data bit flipped", flip(T3, first_data_byte(T3))),
            "txn-crc",
            TORN,
        ),
        bad(
            "torn-record-sizes",
            "the first record's data length + 1, resealed: the records overrun the body",
            [T1, T2],
            ("tid 3, data length + 1, resealed", reseal(with_record(T3, 0, data_length=6))),
            "record-sizes",
            TORN,
        ),
        bad(
            "torn-repeated-oid",
            "the last transaction names oid 0 twice, checksums recomputed",
            [T1, T2],
            ("tid 3 with oid 0 twice, resealed", repeated),
            "repeated-oid",
            [*TORN, "FMT-013"],
        ),
        bad(
            "torn-tid-repeated",
            "the last transaction repeats the previous tid (2); all else is valid",
            [T1, T2],
            ("tid 2 again", txn(2, (0, b"root!", [1]))),
            "tid-order",
            [*TORN, "FMT-012"],
        ),
        bad(
            "torn-first-tid-zero",
            "the only transaction has tid 0, checksums recomputed",
            [],
            ("tid 0, resealed", reseal(with_header(T1, tid=0))),
            "tid-order",
            [*TORN, "FMT-012", "RCV-051"],
        ),
        bad(
            "damaged-first-tid-zero",
            "the first transaction has tid 0 (resealed); a valid tid 2 follows",
            [],
            ("tid 0, resealed", reseal(with_header(T1, tid=0))),
            "tid-order",
            [*DAMAGE, "FMT-012", "RCV-051"],
            after=[("valid transaction tid 2", T2)],
        ),
        bad(
            "torn-candidate-repeats-oid",
            "tid 2 is damaged; the candidate after it repeats an oid: not a transaction",
            [T1],
            ("tid 2, data bit flipped", T2_BAD_CRC),
            "txn-crc",
            [*TORN, "FMT-013"],
            after=[("not valid: tid 3 with oid 0 twice, resealed", repeated)],
        ),
        # --- damage: a valid transaction follows the first invalid one ------------
        bad(
            "damaged-txn-crc",
            "one bit of a middle transaction's data flipped",
            [T1],
            ("tid 2, data bit flipped", T2_BAD_CRC),
            "txn-crc",
            DAMAGE,
            after=[("valid transaction tid 3", T3)],
        ),
        bad(
            "damaged-header-crc",
            "a middle transaction's record count changed, checksums stale",
            [T1],
            ("tid 2, record count 2", with_header(T2, record_count=2)),
            "header-crc",
            DAMAGE,
            after=[("valid transaction tid 3", T3)],
        ),
        bad(
            "damaged-zeroed",
            "a middle transaction's bytes zeroed",
            [T1],
            ("tid 2, zeroed", bytes(len(T2))),
            "txn-tag",
            DAMAGE,
            after=[("valid transaction tid 3", T3)],
        ),
        bad(
            "damaged-record-sizes",
            "a middle transaction's record data length changed, resealed",
            [T1],
            ("tid 2, data length - 1, resealed", reseal(with_record(T2, 0, data_length=4))),
            "record-sizes",
            DAMAGE,
            after=[("valid transaction tid 3", T3)],
        ),
        bad(
            "damaged-tid-order",
            "tid 1 is followed by tid 1 again and then by tid 3",
            [T1],
            ("tid 1 again", txn(1, (1, b"world", []))),
            "tid-order",
            [*DAMAGE, "FMT-012"],
            after=[("valid transaction tid 3", T3)],
        ),
        bad(
            "damaged-candidate-tid-not-above",
            "tid 2 is damaged; the candidate after it has tid 1, not above the last: it counts",
            [T1],
            ("tid 2, data bit flipped", T2_BAD_CRC),
            "txn-crc",
            [*DAMAGE, "RCV-050"],
            after=[("valid transaction, tid 1 again", txn(1, (2, b"new", [])))],
        ),
        bad(
            "damaged-candidate-tid-zero",
            "tid 2 is damaged; the candidate after it has tid 0 (resealed): it counts",
            [T1],
            ("tid 2, data bit flipped", T2_BAD_CRC),
            "txn-crc",
            [*DAMAGE, "RCV-050"],
            after=[("valid transaction, tid 0, resealed", reseal(with_header(T3, tid=0)))],
        ),
        # --- file headers a reader refuses -------------------------------------------
        refused(
            "header-magic",
            "the magic of another format",
            bad_magic + T1,
            "FormatError",
            0,
            "magic",
            ["FMT-002"],
        ),
        refused(
            "header-major-version",
            "major version + 1 and a checksum of 0: the version is reported, not the checksum",
            next_major + T1,
            "FormatError",
            8,
            "major-version",
            ["FMT-022"],
        ),
        refused(
            "header-crc",
            "one bit of the file id flipped",
            flip(HEADER, 16) + T1,
            "CorruptionError",
            0,
            "file-header-crc",
            ["FMT-005"],
        ),
        # --- unfinished creations (RCV-006) ------------------------------------------
        unfinished("unfinished-empty", "an empty file", b""),
        unfinished("unfinished-prefix", "the first 20 bytes of a file header", HEADER[:20]),
        unfinished(
            "unfinished-zero-crc",
            "a whole header whose checksum bytes read as zeros",
            HEADER[:60] + bytes(4),
        ),
    ]


# --- writing and checking ------------------------------------------------------------


def render(vector: Vector) -> str:
    """The text of ``NAME.hex``: comments, the expect line, then the bytes 16 to a line."""
    expect = {**vector.expect, "requirements": vector.requirements}
    lines = [
        f"# {vector.name}: {vector.description}",
        "# made by generate.py from dhruva's writer; see conformance/vectors/README.md",
        f"# expect: {json.dumps(expect, sort_keys=True)}",
    ]
    offset = 0
    for label, part in vector.parts:
        for start in range(0, len(part), 16):
            chunk = part[start : start + 16]
            text = f"{offset:04x}  {' '.join(f'{b:02x}' for b in chunk)}"
            note = label if start == 0 else "  ..."
            lines.append(f"{text:<55} # {note}")
            offset += len(chunk)
    return "\n".join(lines) + "\n"


def expected_files() -> dict[str, str]:
    return {f"{v.name}.hex": render(v) for v in vectors()}


def stale_files() -> list[str]:
    """Names of files that differ from what the generator makes, or that it does not make."""
    wanted = expected_files()
    problems = [
        name
        for name, text in wanted.items()
        if not (HERE / name).exists() or (HERE / name).read_text() != text
    ]
    problems += [p.name for p in HERE.glob("*.hex") if p.name not in wanted]
    return sorted(problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale files, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: {name} (run {Path(__file__).name} without --check)", file=sys.stderr)
        return 1 if stale else 0
    for old in HERE.glob("*.hex"):
        old.unlink()
    for name, text in expected_files().items():
        (HERE / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
