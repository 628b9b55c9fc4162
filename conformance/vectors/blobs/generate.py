"""Write the blob-directory vector of this folder (spec: blobs.md, BLOB-020..022).

One database with blobs as a file storage leaves it, and what a crash left
beside it:

* ``database.hex``: the data file (header and two transactions, made by
  dhruva's own writer, ``dhruva.journal``): tid 1 stores the root (oid 0,
  referencing oids 1 and 2) and the blob objects 1 and 2; tid 2 stores
  oid 1 again with a new blob;
* ``blobs.json``: the files of ``database.dhruva.blobs/`` (path -> content
  as hex), the files a writable open must delete (a blob of tid 3, never
  committed, and a staged file in ``tmp/``), and the blobs a reader must
  see: ``open_blob(oid, tid)`` for each oid, at the read point (``tid``
  null) and at older tids.

* ``chunks.json``: how a back-end in a database cuts blobs into chunk rows
  (BLOB-030): for blobs whose byte ``i`` is ``i % 251``, of several sizes,
  each chunk's number, length and SHA-256.

    python conformance/vectors/blobs/generate.py          # rewrite the files
    python conformance/vectors/blobs/generate.py --check  # exit 1 if stale

``tests/test_blob_vectors.py`` lays the files out in a directory and checks
every expectation through FileStorage and FileStorage2, and checks the
chunks SqliteStorage writes against ``chunks.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from dhruva import journal

HERE = Path(__file__).parent
FILE_ID = bytes(range(16))
TIME_US = 1_700_000_000_000_000
BIG = bytes(range(256)) * 12  # 3072 bytes: more than one line of anything


def oid(number: int) -> bytes:
    return number.to_bytes(8, "big")


def blob_path(number: int, tid: int) -> str:
    return f"{oid(number).hex()}/{tid:016x}.blob"


def data_file() -> list[tuple[str, bytes]]:
    root_refs = oid(1) + oid(2)
    t1 = journal.encode_transaction(
        1,
        TIME_US + 1,
        [(oid(0), b"root", root_refs), (oid(1), b"blob 1", b""), (oid(2), b"blob 2", b"")],
    )
    t2 = journal.encode_transaction(2, TIME_US + 2, [(oid(1), b"blob 1", b"")])
    return [
        ("file header", journal.encode_file_header(FILE_ID)),
        ("transaction tid 1: oids 0, 1, 2", t1),
        ("transaction tid 2: oid 1", t2),
    ]


def blobs() -> dict[str, object]:
    committed = {
        blob_path(1, 1): b"first version of blob 1",
        blob_path(1, 2): BIG,
        blob_path(2, 1): b"",
    }
    leftovers = {
        blob_path(1, 3): b"written by a commit that never reached the journal",
        blob_path(5, 3): b"an oid whose only blob was never committed",
        "tmp/2f7c0a.part": b"staged, never committed",
    }
    reads = [
        {"oid": 1, "tid": None, "content": BIG.hex()},
        {"oid": 1, "tid": 2, "content": BIG.hex()},
        {"oid": 1, "tid": 1, "content": b"first version of blob 1".hex()},
        {"oid": 2, "tid": None, "content": ""},
        {"oid": 2, "tid": 2, "content": ""},
        {"oid": 0, "tid": None, "content": None},
        {"oid": 5, "tid": None, "content": None},
    ]
    return {
        "description": (
            "database.dhruva.blobs as FileStorage leaves it after tids 1 and 2, plus what a "
            "crash left; content is hex, null means DhruvaKeyError"
        ),
        "requirements": ["BLOB-011", "BLOB-012", "BLOB-020", "BLOB-021", "BLOB-022"],
        "last_tid": 2,
        "files": {path: data.hex() for path, data in sorted({**committed, **leftovers}.items())},
        "deleted_by_writable_open": sorted(leftovers),
        "reads": reads,
    }


CHUNK = 1 << 20


def pattern(size: int) -> bytes:
    """The content of a chunk-vector blob: byte ``i`` is ``i % 251``."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def chunks() -> dict[str, object]:
    sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5]
    blobs = []
    for size in sizes:
        content = pattern(size)
        cut = [content[start : start + CHUNK] for start in range(0, size, CHUNK)] or [b""]
        blobs.append(
            {
                "size": size,
                "chunks": [
                    {"n": n, "length": len(part), "sha256": hashlib.sha256(part).hexdigest()}
                    for n, part in enumerate(cut)
                ],
            }
        )
    return {
        "description": (
            "blob chunk rows of a back-end in a database (blobs.md, 'Blobs in a database'): "
            "byte i of each blob is i % 251; CHUNK is 1048576"
        ),
        "requirements": ["BLOB-030"],
        "chunk_bytes": CHUNK,
        "blobs": blobs,
    }


def render_hex(parts: list[tuple[str, bytes]]) -> str:
    lines = [
        "# database: the data file of the blob vector (see blobs.json)",
        "# made by generate.py from dhruva's writer; see conformance/vectors/README.md",
        '# expect: {"outcome": "valid", "last_tid": 2, "requirements": ["BLOB-020"]}',
    ]
    offset = 0
    for label, part in parts:
        for start in range(0, len(part), 16):
            chunk = part[start : start + 16]
            text = f"{offset:04x}  {' '.join(f'{b:02x}' for b in chunk)}"
            note = label if start == 0 else "  ..."
            lines.append(f"{text:<55} # {note}")
            offset += len(chunk)
    return "\n".join(lines) + "\n"


def expected_files() -> dict[str, str]:
    return {
        "database.hex": render_hex(data_file()),
        "blobs.json": json.dumps(blobs(), indent=2, sort_keys=True) + "\n",
        "chunks.json": json.dumps(chunks(), indent=2, sort_keys=True) + "\n",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale files, write nothing")
    args = parser.parse_args(argv)
    wanted = expected_files()
    if args.check:
        stale = [
            name
            for name, text in wanted.items()
            if not (HERE / name).exists() or (HERE / name).read_text() != text
        ]
        for name in stale:
            print(f"stale: {name} (run {Path(__file__).name} without --check)", file=sys.stderr)
        return 1 if stale else 0
    for name, text in wanted.items():
        (HERE / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
