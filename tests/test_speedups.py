"""The optional C extension agrees with the pure-Python reference (docs/guide/speedups.md).

Theory of operation.  ``dhruva._speedups`` holds C versions of a few hot
functions; :mod:`dhruva.speedups` hands each caller the C function or None.
The Python code stays the reference, and every C function answers only the
ordinary case: for anything else it returns None (NotImplemented for
``set_dict_state``) and the caller runs the Python original.  So each C
function is tested two ways, differentially:

* on ordinary input its answer equals the pure path's (the caller's module
  global ``_c_...`` set to None runs the Python body), and
* on unusual input it returns None (or NotImplemented), and the caller,
  with the C path on, still gives the reference answer or raises the
  reference's typed error.

The differential tests skip, with a reason, when the extension is not in use
(not built, or ``DHRUVA_PURE_PYTHON`` set).  Two tests check the install
itself: ``nox -s tests`` sets ``DHRUVA_EXPECT_SPEEDUPS=1`` and ``nox -s
tests_bare`` (dhruva installed with the compile made to fail) sets it to
``0``; without the variable, in a plain checkout, they skip.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import os
import pickle
import random
import struct
import sys
import tempfile
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
from _journal_storages import CLASSES, commit, oid
from hypothesis import given, settings
from hypothesis import strategies as st

import dhruva
from dhruva import (
    connection,
    file_index,
    file_storage,
    journal,
    journal_storage,
    persistent,
    serialize,
    speedups,
)
from dhruva.class_registry import ClassMap, ClassRegistry
from dhruva.connection import Connection
from dhruva.error import CorruptionError, ForbiddenClassError, MissingClassError, ReadOnlyError
from dhruva.file_index import ADDED_FLAG, ENTRIES_OFFSET, DiskIndex
from dhruva.file_storage import FileStorage, FileStorage2
from dhruva.persistent import Persistent
from dhruva.record import Record
from dhruva.serialize import PICKLE_CODE, ObjectReader, PickleDecoder, PickleSerializer
from dhruva.storage import MemoryStorage

#: Set by the nox sessions: "1" (``tests``) or "0" (``tests_bare``).
EXPECT_VARIABLE = "DHRUVA_EXPECT_SPEEDUPS"
#: The checkout's own package directory; an installed dhruva lies elsewhere (nox's
#: virtualenvs are inside the checkout, under .nox/, but not here).
CHECKOUT_PACKAGE = Path(__file__).resolve().parent.parent / "dhruva"

_c: Any = importlib.import_module("dhruva._speedups") if speedups.ENABLED else None

needs_c = pytest.mark.skipif(
    _c is None,
    reason="the C extension dhruva._speedups is not in use (not built, or "
    f"{speedups.PURE_PYTHON_VARIABLE} is set): only the pure-Python path is here to test",
)

U64_MAX = 2**64 - 1

#: Where each caller keeps its C function: (module, global name, name in dhruva.speedups).
CALL_SITES: list[tuple[ModuleType, str, str]] = [
    (journal, "_c_encode_transaction", "encode_transaction"),
    (journal_storage, "_c_encode_transaction", "encode_transaction"),
    (journal_storage, "_c_read_record", "read_record"),
    (file_index, "_c_index_offset", "index_offset"),
    (file_storage, "_c_file_load", "file_load"),
    (journal_storage, "_c_journal_new_oid", "journal_new_oid"),
    (journal_storage, "_c_stage_records", "stage_records"),
    (journal_storage, "_c_index_records", "index_records"),
    (connection, "_c_record_sizes", "record_sizes"),
    (file_storage, "_c_tail_entries", "tail_entries"),
    (file_index, "_c_entry_bounds", "entry_bounds"),
    (serialize, "_c_encode_records", "encode_records"),
    (serialize, "_c_read_pickle_state", "read_pickle_state"),
    (serialize, "_c_state_reader", "state_reader"),
    (persistent, "_c_set_dict_state", "set_dict_state"),
    (serialize, "_c_persistent_id", "persistent_id"),
    (serialize, "_c_attach", "attach"),
    (connection, "_c_install_state", "install_state"),
    (connection, "_c_mark_all_saved", "mark_all_saved"),
    (connection, "_c_clock_batch", "clock_batch"),
    (connection, "_c_add_object_refs", "add_object_refs"),
    (connection, "_c_sweep_refs", "sweep_refs"),
    (serialize, "_c_reference", "reference"),
    (serialize, "_c_encode_plain", "encode_plain"),
]


class _IdPickler(pickle.Pickler):
    """pickle.Pickler, whose instances take a persistent_id (Python 3.13 refuses it on the base)."""


@contextlib.contextmanager
def pure(module: ModuleType, name: str) -> Iterator[None]:
    """Run the block with ``module.name`` (a ``_c_...`` global) None: the Python path."""
    with mock.patch.object(module, name, None):
        yield


# --- the install --------------------------------------------------------------------------


def _expected() -> bool:
    value = os.environ.get(EXPECT_VARIABLE, "")
    if not value:
        pytest.skip(f"{EXPECT_VARIABLE} is unset: no nox session said what it installed")
    assert value in ("0", "1"), f"{EXPECT_VARIABLE} must be 0 or 1, not {value!r}"
    return value == "1"


def test_the_extension_is_in_use_exactly_when_the_session_installed_it() -> None:
    expected = _expected()
    where = f"dhruva imported from {Path(dhruva.__file__).parent}"
    assert speedups.ENABLED is expected, (
        f"{EXPECT_VARIABLE}={int(expected)} but dhruva.speedups.ENABLED is "
        f"{speedups.ENABLED} ({where}; {speedups.PURE_PYTHON_VARIABLE}="
        f"{os.environ.get(speedups.PURE_PYTHON_VARIABLE, '')!r})"
    )
    # Without it, absent from the install, not merely turned off.
    found = importlib.util.find_spec("dhruva._speedups")
    assert (found is not None) is expected, f"dhruva._speedups: {found} ({where})"


def test_the_session_tests_the_installed_copy_not_the_checkout() -> None:
    # The assertion above says what the install built only if dhruva came from
    # the install: the checkout's dhruva/ may hold a module built in place.
    _expected()
    package = Path(dhruva.__file__).resolve().parent
    assert package != CHECKOUT_PACKAGE, (
        f"dhruva was imported from the checkout ({package}), not from the session's install"
    )


def test_every_caller_holds_the_c_function_exactly_when_it_is_in_use() -> None:
    for module, name, exported in CALL_SITES:
        function = getattr(module, name)
        if _c is None:
            assert function is None, f"{module.__name__}.{name}"
        else:
            assert function is getattr(_c, exported), f"{module.__name__}.{name}"
            assert getattr(speedups, exported) is function
    # The cache's weak references: the C maker, or weakref.ref itself.
    assert connection._new_ref is (weakref.ref if _c is None else _c.object_ref)


# --- crc32 --------------------------------------------------------------------------------


@needs_c
@settings(max_examples=300)
@given(
    data=st.one_of(st.binary(max_size=100), st.binary(min_size=1000, max_size=5000)),
    start=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_crc32_equals_zlib(data: bytes, start: int) -> None:
    assert _c.crc32(data) == zlib.crc32(data)
    assert _c.crc32(data, start) == zlib.crc32(data, start)
    # Chained, as the record checksum is computed (FMT-020), at every split.
    split = len(data) // 3
    assert _c.crc32(data[split:], _c.crc32(data[:split])) == zlib.crc32(data)


@needs_c
def test_crc32_of_every_length_around_the_eight_byte_steps() -> None:
    # slicing-by-8 has a main loop and a tail; every tail length and alignment.
    data = random.Random(1).randbytes(64)
    for start in range(8):
        for end in range(start, len(data) + 1):
            chunk = data[start:end]
            assert _c.crc32(chunk) == zlib.crc32(chunk), (start, end)


# --- encode_transaction -------------------------------------------------------------------


def pure_encode(tid: int, time_us: int, records: Any, version: int) -> bytes:
    with pure(journal, "_c_encode_transaction"):
        return journal.encode_transaction(tid, time_us, records, version)


records_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=U64_MAX),
        st.binary(max_size=300),
        st.lists(st.integers(min_value=0, max_value=U64_MAX), max_size=5),
    ),
    max_size=8,
    unique_by=lambda record: record[0],
).map(
    lambda records: [
        (n.to_bytes(8, "big"), data, b"".join(r.to_bytes(8, "big") for r in refs))
        for n, data, refs in records
    ]
)


@needs_c
@settings(max_examples=300)
@given(
    tid=st.integers(min_value=1, max_value=U64_MAX),
    time_us=st.integers(min_value=0, max_value=U64_MAX),
    records=records_strategy,
    version=st.sampled_from(journal.SUPPORTED_VERSIONS),
)
def test_encode_transaction_equals_the_python_encoder(
    tid: int, time_us: int, records: list[tuple[bytes, bytes, bytes]], version: int
) -> None:
    expected = pure_encode(tid, time_us, records, version)
    assert _c.encode_transaction(tid, time_us, records, version) == expected
    assert journal.encode_transaction(tid, time_us, records, version) == expected
    # And the bytes are a transaction the reader takes back, record for record.
    decoded = journal.decode_transaction(expected, 0, "<test>", version=version)
    assert [(r.oid, r.data, r.refs) for r in decoded.records] == records


def _duplicate() -> list[tuple[bytes, bytes, bytes]]:
    return [(oid(1), b"a", b""), (oid(2), b"b", b""), (oid(1), b"c", b"")]


#: (tid, time_us, records) the Python encoder refuses with ValueError.
REFUSED = {
    "duplicate oid": (5, 0, _duplicate()),
    "tid 0": (0, 0, [(oid(1), b"a", b"")]),
    "negative tid": (-1, 0, [(oid(1), b"a", b"")]),
    "tid past u64": (2**64, 0, [(oid(1), b"a", b"")]),
    "negative time": (5, -1, [(oid(1), b"a", b"")]),
    "time past u64": (5, 2**64, [(oid(1), b"a", b"")]),
}


@needs_c
@pytest.mark.req("FMT-013")
@pytest.mark.parametrize("version", journal.SUPPORTED_VERSIONS)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_encode_transaction_leaves_what_the_encoder_refuses_to_it(case: str, version: int) -> None:
    tid, time_us, records = REFUSED[case]
    assert _c.encode_transaction(tid, time_us, records, version) is None
    with pytest.raises(ValueError) as reference:
        pure_encode(tid, time_us, records, version)
    # With the C path on, the same error, from the Python body.
    assert journal._c_encode_transaction is _c.encode_transaction
    with pytest.raises(ValueError) as error:
        journal.encode_transaction(tid, time_us, records, version)
    assert str(error.value) == str(reference.value)


#: Records the C version does not encode itself; the Python encoder does.
UNUSUAL_RECORDS = {
    "bytearray data": [(oid(1), bytearray(b"data"), oid(2))],
    "memoryview data": [(oid(1), memoryview(b"xxdataxx")[2:6], oid(2))],
    "bytes subclass data": [(oid(1), type("B", (bytes,), {})(b"data"), b"")],
    "a record that is a list": [[oid(1), b"data", b""]],
    "refs not a multiple of 8": [(oid(1), b"data", b"abc")],
}


@needs_c
@pytest.mark.parametrize("version", journal.SUPPORTED_VERSIONS)
@pytest.mark.parametrize("case", sorted(UNUSUAL_RECORDS))
def test_encode_transaction_leaves_unusual_fields_to_the_python_encoder(
    case: str, version: int
) -> None:
    records = UNUSUAL_RECORDS[case]
    assert _c.encode_transaction(7, 8, records, version) is None
    expected = pure_encode(7, 8, records, version)
    assert journal.encode_transaction(7, 8, records, version) == expected
    if case.endswith("data"):
        plain = [(o, bytes(d), r) for o, d, r in records]
        assert expected == pure_encode(7, 8, plain, version)


@needs_c
def test_encode_transaction_leaves_a_sequence_that_is_not_a_list_to_the_python_encoder() -> None:
    records = ((oid(1), b"a", b""), (oid(2), b"b", oid(1)))
    assert _c.encode_transaction(7, 8, records, journal.FORMAT_V2) is None
    expected = pure_encode(7, 8, list(records), journal.FORMAT_V2)
    assert journal.encode_transaction(7, 8, records) == expected
    with pytest.raises(ValueError, match="twice"):
        journal.encode_transaction(7, 8, (*records, (oid(1), b"c", b"")))


# --- read_record --------------------------------------------------------------------------


#: The C version reads this many bytes first, and the rest of a longer record after.
FIRST_READ = journal_storage.LOAD_READ_BYTES


@needs_c
def test_the_c_first_read_is_the_python_one() -> None:
    assert _c.FIRST_READ == FIRST_READ


def write_file(path: str, version: int) -> dict[bytes, int]:
    """Write a data file in format ``version`` with FileStorage; return oid -> record offset.

    Small and large records, with and without references.  A version 1 file
    starts with a transaction made by the codec (FileStorage creates version 2
    files only); FileStorage then appends to it in the version 1 layout.
    """
    rng = random.Random(version)
    if version == journal.FORMAT_V1:
        first = [(oid(0), b"root", oid(1)), (oid(1), b"hello", b"")]
        Path(path).write_bytes(
            journal.encode_file_header(os.urandom(16), version)
            + journal.encode_transaction(1, 1_700_000_000_000_000, first, version)
        )
    with FileStorage(path) as storage:
        assert storage.format_version == version
        commit(storage, (0, b"root", [1, 2]), (1, b"", []), (2, rng.randbytes(50), [0, 1]))
        # Records of FIRST_READ - 1, FIRST_READ and FIRST_READ + 1 bytes, and far longer ones.
        header = journal.record_header_size(version)
        edges = [(10 + i, rng.randbytes(FIRST_READ - header - 1 + i), []) for i in range(3)]
        commit(storage, *edges, (13, rng.randbytes(5000), [0]), (14, rng.randbytes(70_000), [0, 1]))
        # Many references: a record made large by its reference list alone.
        commit(storage, (20, b"refs", list(range(700))), (21, rng.randbytes(9), [20]))
    buf = Path(path).read_bytes()
    offsets: dict[bytes, int] = {}
    journal.scan(buf, journal.FILE_HEADER_SIZE, path, index=offsets, version=version)
    return offsets


def pure_read_record(path: str, offset: int, version: int, key: bytes) -> Record | None:
    """The reference: the record at ``offset`` if it decodes and is of ``key``, else None."""
    buf = Path(path).read_bytes()
    try:
        record = journal.decode_record_at(buf, offset, path, version=version)
    except CorruptionError:
        return None
    return record if record.oid == key else None


DataFile = tuple[str, int, dict[bytes, int]]


@pytest.fixture(params=journal.SUPPORTED_VERSIONS, ids=lambda v: f"v{v}")
def data_file(request: pytest.FixtureRequest, tmp_path: Path) -> DataFile:
    """(path, version, oid -> offset) of a new file of each format version."""
    version: int = request.param
    path = str(tmp_path / "db.dhruva")
    return path, version, write_file(path, version)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[int, DataFile]:
    """version -> (path, version, oid -> offset), written once for the module; not to change."""
    files = {}
    for version in journal.SUPPORTED_VERSIONS:
        path = str(tmp_path_factory.mktemp(f"v{version}") / "db.dhruva")
        files[version] = (path, version, write_file(path, version))
    return files


@contextlib.contextmanager
def opened(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


@needs_c
@pytest.mark.parametrize("version", journal.SUPPORTED_VERSIONS, ids=lambda v: f"v{v}")
def test_read_record_equals_the_python_decoder(
    data_files: dict[int, DataFile], version: int
) -> None:
    path, version, offsets = data_files[version]
    buf = Path(path).read_bytes()
    sizes = sorted(journal.record_size(buf[o : o + 16], version) for o in offsets.values())
    assert {FIRST_READ - 1, FIRST_READ, FIRST_READ + 1} <= set(sizes) and sizes[-1] > 70_000
    with opened(path) as fd:
        for key, offset in offsets.items():
            copy = bytes(key)  # an equal oid that is not the file's object
            record = _c.read_record(fd, offset, version, copy)
            assert type(record) is Record
            assert record == pure_read_record(path, offset, version, key)
            assert record.oid is copy
    with FileStorage(path, readonly=True) as storage:
        for key in offsets:
            with pure(journal_storage, "_c_read_record"):
                expected = storage.load(key)
            assert storage.load(key) == expected


@needs_c
@pytest.mark.parametrize("version", journal.SUPPORTED_VERSIONS, ids=lambda v: f"v{v}")
def test_the_first_read_shrinks_for_small_records_and_grows_back(
    tmp_path: Path, version: int
) -> None:
    # Every record read equals the Python decoder's whatever the first read
    # has come to: 1024 bytes, then 512 and 256 after runs of small records,
    # 1024 again after one that does not fit, and a record that ends the file.
    path = str(tmp_path / "db.dhruva")
    rng = random.Random(version)
    write_file(path, version)
    header = journal.record_header_size(version)
    sizes = [120, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 3000]
    with FileStorage(path) as storage:
        commit(storage, *((100 + i, rng.randbytes(60), []) for i in range(80)))
        commit(storage, *((200 + i, rng.randbytes(n - header), []) for i, n in enumerate(sizes)))
        commit(storage, (300, rng.randbytes(200 - header), []))  # the last record of the file
    buf = Path(path).read_bytes()
    offsets: dict[bytes, int] = {}
    journal.scan(buf, journal.FILE_HEADER_SIZE, path, index=offsets, version=version)
    small = [oid(100 + i) for i in range(80)]
    seen: list[int] = []
    with opened(path) as fd:

        def check(key: bytes) -> None:
            record = _c.read_record(fd, offsets[key], version, key)
            assert record == pure_read_record(path, offsets[key], version, key)

        check(oid(200 + sizes.index(3000)))  # a record that never fits: back to the most
        assert _c.first_read() == FIRST_READ
        for key in small:
            check(key)
            seen.append(_c.first_read())
        assert seen[0] == FIRST_READ and seen[-1] == 256, seen
        assert {512, 256} <= set(seen)
        for i in range(len(sizes)):
            for key in small:
                check(key)  # back down to 256 (32 records a halving) before each edge
            assert _c.first_read() == 256
            check(oid(200 + i))
            assert _c.first_read() == (256 if sizes[i] <= 256 else FIRST_READ)
        for key in small[:40]:
            check(key)
        check(oid(300))
        # A record past the end is still refused once the first read is short.
        assert _c.read_record(fd, len(buf) - 8, version, oid(300)) is None


@needs_c
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_read_record_near_record_starts_equals_the_python_decoder(
    data_files: dict[int, DataFile], data: st.DataObject
) -> None:
    # Near, not anywhere: bytes taken for a header at a random offset (the
    # trailer's tag and checksum, say) can claim a record of gigabytes, which
    # both paths would then try to read in full.
    path, version, offsets = data_files[data.draw(st.sampled_from(journal.SUPPORTED_VERSIONS))]
    offset = data.draw(st.sampled_from(sorted(offsets.values()))) + data.draw(st.integers(-3, 3))
    key = data.draw(st.sampled_from([*sorted(offsets), oid(999)]))
    expected = pure_read_record(path, offset, version, key)
    with opened(path) as fd:
        assert _c.read_record(fd, offset, version, key) == expected


@needs_c
@pytest.mark.parametrize("version", journal.SUPPORTED_VERSIONS, ids=lambda v: f"v{v}")
def test_read_record_leaves_anything_unusual_to_the_python_reader(
    data_files: dict[int, DataFile], version: int
) -> None:
    path, version, offsets = data_files[version]
    size = os.path.getsize(path)
    key, offset = oid(2), offsets[oid(2)]
    with opened(path) as fd:
        assert _c.read_record(fd, offset, version, key) is not None
        assert _c.read_record(fd, offset, version, oid(1)) is None  # another oid's record
        assert _c.read_record(fd, offset + 1, version, key) is None
        assert _c.read_record(fd, size, version, key) is None  # at the end
        assert _c.read_record(fd, size + 10_000, version, key) is None  # past it
        assert _c.read_record(fd, -1, version, key) is None
        assert _c.read_record(fd, offset, version, key[:7]) is None
        assert _c.read_record(fd, offset, version, bytearray(key)) is None
    assert _c.read_record(-1, offset, version, key) is None  # OSFile.fd once closed
    closed = os.open(path, os.O_RDONLY)
    os.close(closed)
    assert _c.read_record(closed, offset, version, key) is None  # EBADF: no error, None


@needs_c
@pytest.mark.req("FMT-023")
@pytest.mark.parametrize("number", [2, 11, 12, 14, 20], ids=lambda n: f"oid{n}")
def test_read_record_refuses_a_flipped_byte_and_a_truncated_file(
    data_file: DataFile, tmp_path: Path, number: int
) -> None:
    path, version, offsets = data_file
    key, offset = oid(number), offsets[oid(number)]
    buf = Path(path).read_bytes()
    end = offset + journal.record_size(buf[offset : offset + 16], version)
    # The file ends with the record: still whole.
    whole = tmp_path / "whole"
    whole.write_bytes(buf[:end])
    with opened(str(whole)) as fd:
        record = _c.read_record(fd, offset, version, key)
    assert record is not None and record == pure_read_record(str(whole), offset, version, key)
    # Cut anywhere inside it: None, the Python reader decides.
    cuts = [offset + 7, offset + 15, offset + journal.record_header_size(version), end - 1]
    cuts += [offset + FIRST_READ - 1, offset + FIRST_READ, offset + FIRST_READ + 1]
    for cut in sorted(c for c in set(cuts) if c < end):
        truncated = tmp_path / f"cut{cut}"
        truncated.write_bytes(buf[:cut])
        assert pure_read_record(str(truncated), offset, version, key) is None
        with opened(str(truncated)) as fd:
            assert _c.read_record(fd, offset, version, key) is None, cut - offset
    # Its last byte changed: past the first FIRST_READ bytes for the large ones.
    damaged = bytearray(buf)
    damaged[end - 1] ^= 0x01
    Path(path).write_bytes(damaged)
    expected = pure_read_record(path, offset, version, key)
    with opened(path) as fd:
        assert _c.read_record(fd, offset, version, key) == expected
    if version == journal.FORMAT_V1:  # no checksum: the changed bytes, as Python reads them
        assert expected is not None and expected != record
    else:
        assert expected is None


@needs_c
@pytest.mark.req("FMT-023")
@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_a_damaged_record_still_fails_its_load_with_the_c_path_on(
    tmp_path: Path, cls: type[FileStorage2]
) -> None:
    path = str(tmp_path / "db.dhruva")
    offsets = write_file(path, journal.FORMAT_V2)
    original = Path(path).read_bytes()
    spans = journal.scan(original, journal.FILE_HEADER_SIZE, path).spans
    for number in (2, 14):
        key = oid(number)
        buf = bytearray(original)
        end = offsets[key] + journal.record_size(buf[offsets[key] : offsets[key] + 16])
        buf[end - 1] ^= 0x40
        # The transaction's own checksum recomputed: only the record's fails (FMT-023).
        (span,) = [s for s in spans if s.offset < offsets[key] < s.end]
        trailer = span.end - journal.TXN_TRAILER_SIZE
        buf[trailer + 4 : trailer + 8] = zlib.crc32(buf[span.offset : trailer]).to_bytes(4, "big")
        Path(path).write_bytes(buf)
        with cls(path, readonly=True) as storage:
            assert journal_storage._c_read_record is _c.read_record
            with pytest.raises(CorruptionError) as info:
                storage.load(key)
            assert storage.load(oid(0)).data == b"root"
        assert (info.value.path, info.value.offset, info.value.code) == (
            path,
            offsets[key],
            "record-crc",
        )


# --- index_offset -------------------------------------------------------------------------

FILE_ID = bytes(range(16))
COVERED = 10_000


def make_index(path: str, raw_entries: dict[int, int]) -> DiskIndex:
    """An index covering ``COVERED`` whose entries are ``raw_entries`` (flag bits included)."""
    DiskIndex.create(path, FILE_ID, {}, COVERED, 1, 0, max(raw_entries, default=-1)).close()
    # The raw entries written over the empty ones create wrote: leftovers of
    # an interrupted checkpoint (IDX-022) cannot be made another way.
    with open(path, "r+b") as file:
        for number, raw in raw_entries.items():
            file.seek(ENTRIES_OFFSET + 8 * number)
            file.write(raw.to_bytes(8, "big"))
    index = DiskIndex.open(path, FILE_ID, readonly=True)
    assert index is not None
    return index


def check_index(index: DiskIndex, path: str, last: int) -> None:
    """index_offset on the file's bytes equals DiskIndex.lookup, for every oid and beyond."""
    mapping = Path(path).read_bytes()
    capacity = index.capacity
    keys = [number.to_bytes(8, "big") for number in range(capacity + 3)]
    for number, key in enumerate(keys):
        answer = _c.index_offset(mapping, key, last, index.covered_offset)
        if number > last:
            assert answer == 0, number
        elif number >= capacity:
            assert answer is None, number  # the map does not hold the entry
        else:
            assert answer == index.lookup(number), number
    # And DiskIndex.lookup_oid itself, with the C path on and off.
    with pure(file_index, "_c_index_offset"):
        expected = [index.lookup_oid(key, last) for key in keys]
    assert [index.lookup_oid(key, last) for key in keys] == expected


@needs_c
@pytest.mark.req("IDX-020", "IDX-022")
def test_index_offset_equals_disk_index_lookup(tmp_path: Path) -> None:
    path = str(tmp_path / "db.dhruva.index")
    entries = {
        0: 104,
        1: 150,
        2: ADDED_FLAG | 190,  # added by a checkpoint a later meta covers: present
        3: ADDED_FLAG | (COVERED - 1),
        4: ADDED_FLAG | COVERED,  # a leftover at covered_offset: absent
        5: ADDED_FLAG | (COVERED + 5000),  # and past it: absent
        6: COVERED + 5000,  # without the flag: kept (it had an entry before)
        9: 0,
        600: 77,  # past the first page of entries
    }
    with make_index(path, entries) as index:
        assert index.capacity == 1024
        assert index.lookup(4) == 0 and index.lookup(2) == 190  # the reference's own view
        for last in (-1, 0, 4, 600, index.capacity - 1, index.capacity + 1, 2**40):
            check_index(index, path, last)


@needs_c
@settings(max_examples=60, deadline=None)
@given(
    raw=st.dictionaries(
        st.integers(0, 600),
        st.integers(0, 2 * COVERED) | st.integers(0, 2 * COVERED).map(lambda n: n | ADDED_FLAG),
        max_size=20,
    ),
    last=st.integers(-2, 1100),
)
def test_index_offset_equals_disk_index_lookup_on_any_entries(
    raw: dict[int, int], last: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "db.dhruva.index")
        with make_index(path, raw) as index:
            check_index(index, path, last)


@needs_c
def test_index_offset_leaves_anything_unusual_to_the_python_lookup(tmp_path: Path) -> None:
    path = str(tmp_path / "db.dhruva.index")
    with make_index(path, {1: 150}) as index:
        mapping = Path(path).read_bytes()
        assert _c.index_offset(mapping, oid(1), 10, COVERED) == 150
        for key in (oid(1)[1:], oid(1) + b"\0", bytearray(oid(1)), memoryview(oid(1)), 1):
            assert _c.index_offset(mapping, key, 10, COVERED) is None, key
            # DiskIndex.lookup_oid reads such an oid as its number, the Python way.
            if isinstance(key, bytes):
                with pure(file_index, "_c_index_offset"):
                    expected = index.lookup_oid(key, 10)
                assert index.lookup_oid(key, 10) == expected
        assert _c.index_offset(mapping[: ENTRIES_OFFSET + 8], oid(1), 10, COVERED) is None
        assert _c.index_offset(None, oid(1), 10, COVERED) is None  # no buffer at all
        assert _c.index_offset(mapping, oid(1), 10, -1) is None
        assert _c.index_offset(mapping, oid(1), "10", COVERED) is None


# --- read_pickle_state --------------------------------------------------------------------


# --- file_load -----------------------------------------------------------------------------


def _loads(storage: FileStorage, keys: list[bytes]) -> list[Any]:
    """What ``storage.load`` gives for each key: the record, or the error's type and oid."""
    found: list[Any] = []
    for key in keys:
        try:
            found.append(storage.load(key))
        except Exception as error:  # the error itself is what is compared
            found.append((type(error).__name__, getattr(error, "oid", None)))
    return found


@needs_c
@pytest.mark.req("SAPI-020", "SAPI-021")
def test_file_load_answers_as_journal_storage_load(tmp_path: Path) -> None:
    from dhruva.journal_storage import JournalStorage

    path = str(tmp_path / "db.dhruva")
    with FileStorage(path) as storage:
        commit(storage, *((n, f"first {n}".encode(), [0]) for n in range(0, 40)))
        storage.checkpoint()  # these in the .index file
        commit(storage, *((n, f"second {n}".encode(), []) for n in range(30, 50)))  # the tail
    keys = [oid(n) for n in range(0, 60)] + [oid(2**40 + 5), oid(3)[:7] + b"\xff", b"short"]
    with FileStorage(path, readonly=True) as storage:
        assert isinstance(storage, FileStorage)
        assert isinstance(storage.load, functools.partial)
        assert storage._disk is not None and len(storage._index) == 0  # all in the .index
        # The reference: JournalStorage.load itself, on the same open storage.
        expected = [
            JournalStorage.load(storage, key) if n < 50 else None for n, key in enumerate(keys[:50])
        ]
        found = _loads(storage, keys)
        assert found[:50] == expected
        assert [error for error in found[50:]] == (
            [("DhruvaKeyError", key) for key in keys[50:62]] + [("ValueError", None)]
        )
    with FileStorage(path) as storage:
        assert isinstance(storage, FileStorage)
        commit(storage, (5, b"third 5", []))  # a writable open: the tail dict answers oid 5
        assert storage.load(oid(5)).data == b"third 5"
        assert _loads(storage, keys[:50]) == [JournalStorage.load(storage, k) for k in keys[:50]]
    with pure(file_storage, "_c_file_load"), FileStorage(path, readonly=True) as storage:
        assert not isinstance(storage.load, functools.partial)  # the method itself


@needs_c
def test_file_load_hands_every_unusual_storage_to_journal_storage_load(tmp_path: Path) -> None:
    from _fault_layers import FaultLayer

    from dhruva.error import DhruvaError

    path = str(tmp_path / "db.dhruva")
    with FileStorage(path) as storage:
        commit(storage, (0, b"root", []), (1, b"one", []))
    # Another file layer: the C read is not used, the answers are the same.
    with FileStorage(path, readonly=True, file_layer=FaultLayer()) as storage:
        assert storage.load(oid(1)).data == b"one"
    storage = FileStorage(path)
    storage._broken = "a test broke it"
    with pytest.raises(DhruvaError, match="a test broke it"):
        storage.load(oid(1))
    storage._broken = None
    assert storage.load(oid(1)).data == b"one"
    storage.close()
    with pytest.raises(DhruvaError, match="closed"):
        storage.load(oid(1))
    # A subclass with a load of its own keeps it.

    class Own(FileStorage):
        def load(self, key: bytes) -> Record:
            return Record(key, b"own", b"")

    with Own(path, readonly=True) as own:
        assert own.load(oid(1)).data == b"own"


@needs_c
def test_file_load_reads_the_instance_dict_only_where_a_lookup_would(tmp_path: Path) -> None:
    from dhruva.error import DhruvaError

    path = str(tmp_path / "db.dhruva")
    with FileStorage(path) as storage:
        commit(storage, (0, b"root", []), (1, b"one", []))

    def broken_unless_healed(self: Any) -> Any:
        return self.__dict__.get("_broken") or self.__dict__.get("_verdict")

    class Plain(FileStorage):
        pass

    with Plain(path, readonly=True) as storage:
        assert isinstance(storage, Plain)
        assert storage.load(oid(1)).data == b"one"  # the C path has judged Plain safe
        storage.__dict__["_verdict"] = "broken by a property"
        # A data descriptor added to the class later: attribute lookup now finds it
        # first, and so must the C path (the type's version tag changed).
        Plain._broken = property(  # type: ignore[attr-defined]
            broken_unless_healed, lambda self, value: self.__dict__.__setitem__("_broken", value)
        )
        with pytest.raises(DhruvaError, match="broken by a property"):
            storage.load(oid(1))
        del Plain._broken  # type: ignore[attr-defined]
        assert storage.load(oid(1)).data == b"one"


# --- journal_new_oid -----------------------------------------------------------------------


def _oids(storage: FileStorage, count: int) -> list[Any]:
    """``count`` calls of ``storage.new_oid``: each oid, or the error's type and message."""
    found: list[Any] = []
    for _ in range(count):
        try:
            found.append(storage.new_oid())
        except Exception as error:  # the error itself is what is compared
            found.append((type(error).__name__, str(error)))
    return found


@needs_c
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.req("SAPI-010")
def test_journal_new_oid_hands_out_what_journal_storage_new_oid_does(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    from dhruva.journal_storage import JournalStorage

    path = str(tmp_path / "db.dhruva")
    with cls(path) as storage:
        assert isinstance(storage.new_oid, functools.partial)
        commit(storage, (7, b"seven", []))  # stored: new oids start beyond it
        c_oids = _oids(storage, 5)
    with pure(journal_storage, "_c_journal_new_oid"), cls(path) as storage:
        assert not isinstance(storage.new_oid, functools.partial)  # the method itself
        assert _oids(storage, 5) == c_oids == [oid(n) for n in range(8, 13)]
    with cls(path) as storage:
        # Both paths share the counter, in either order.
        first = storage.new_oid()
        second = JournalStorage.new_oid(storage)
        assert [first, second, storage.new_oid()] == [oid(8), oid(9), oid(10)]
        assert storage._next_oid == 11
        # The last oid there is: the C counter would overflow, the method hands it out.
        storage._next_oid = U64_MAX
        assert storage.new_oid() == b"\xff" * 8
        with pytest.raises(Exception) as past_c:
            storage.new_oid()
        storage._next_oid = 2**64
        with pure(journal_storage, "_c_journal_new_oid"), pytest.raises(Exception) as past_py:
            JournalStorage.new_oid(storage)
        assert type(past_c.value) is type(past_py.value)
        storage._next_oid = U64_MAX - 1
        assert storage.new_oid() == b"\xff" * 7 + b"\xfe"
        assert storage._next_oid == U64_MAX
        storage._next_oid = 100


@needs_c
def test_journal_new_oid_hands_every_unusual_storage_to_journal_storage_new_oid(
    tmp_path: Path,
) -> None:
    from dhruva.error import DhruvaError, ReadOnlyError

    path = str(tmp_path / "db.dhruva")
    with FileStorage(path) as storage:
        commit(storage, (0, b"root", []))
    with FileStorage(path, readonly=True) as storage, pytest.raises(ReadOnlyError):
        storage.new_oid()
    storage = FileStorage(path)
    storage._broken = "a test broke it"
    with pytest.raises(DhruvaError, match="a test broke it"):
        storage.new_oid()
    storage._broken = None
    assert storage.new_oid() == oid(1)
    storage.readonly = 1  # type: ignore[assignment]  # truthy, not False: the method decides
    with pytest.raises(ReadOnlyError):
        storage.new_oid()
    storage.readonly = False
    storage.close()
    with pytest.raises(DhruvaError, match="closed"):
        storage.new_oid()

    # A subclass with a new_oid of its own keeps it.
    class Own(FileStorage):
        def new_oid(self) -> bytes:
            return b"\x00" * 7 + b"\x2a"

    with Own(path) as own:
        assert own.new_oid() == oid(42)

    # One that changes attribute access is handed to the method, which sees it.
    class Audited(FileStorage):
        def __setattr__(self, name: str, value: Any) -> None:
            if name == "_next_oid":
                self.__dict__.setdefault("audit", []).append(value)
            super().__setattr__(name, value)

    with Audited(path) as audited:
        assert audited.new_oid() == oid(1)
        assert audited.new_oid() == oid(2)
        assert audited.__dict__["audit"][-2:] == [2, 3]

    # A data descriptor added to the class later is seen at once (the version tag).
    class Plain(FileStorage):
        pass

    with Plain(path) as plain:
        assert plain.new_oid() == oid(1)  # the C path has judged Plain safe
        Plain.readonly = property(lambda self: True)  # type: ignore[assignment,method-assign]
        with pytest.raises(ReadOnlyError):
            plain.new_oid()
        del Plain.readonly
        plain.__dict__["readonly"] = False
        assert plain.new_oid() == oid(2)


# --- stage_records ---------------------------------------------------------------------------


def _staged(storage: FileStorage, records: Any) -> list[Any]:
    """What ``store_many(records)`` stages in a new transaction (then aborted), or the error."""
    storage.begin()
    try:
        storage.store_many(records)
        assert storage._pending is not None
        return [(key, *value) for key, value in storage._pending.items()]
    except Exception as error:  # the error itself is what is compared
        return [(type(error).__name__, str(error))]
    finally:
        storage.abort_transaction()


@needs_c
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.req("SAPI-038")
def test_store_many_stages_what_store_does_on_both_paths(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    a, b, c = oid(1), oid(2), oid(3)
    cases: list[Any] = [
        [(a, b"one", b""), (b, b"two", a + c), (a, b"last wins", b"")],
        [],
        [Record(a, b"a named tuple", b""), (b, b"plain", b"")],
        [(a, bytearray(b"bytes-like"), b"")],
        [(a, b"x", b"1234567")],
        [(a, b"fine", b""), (b"short", b"x", b""), (c, b"never", b"")],
        [(a, "text", b"")],
        [(a, b"two fields")],
        ((key, b"generated", b"") for key in (a, b)),
    ]
    with cls(str(tmp_path / "db.dhruva")) as storage:
        with_c = [_staged(storage, case) for case in cases[:-1]]
        with pure(journal_storage, "_c_stage_records"):
            without = [_staged(storage, case) for case in cases[:-1]]
        assert with_c == without
        assert with_c[0] == [(a, a, b"last wins", b""), (b, b, b"two", a + c)]
        assert with_c[5][0][0] == "ValueError"
        assert _staged(storage, cases[-1]) == [(a, a, b"generated", b""), (b, b, b"generated", b"")]
        # The C step keeps the writer's tuples themselves; store() makes its own.
        records = [(a, b"one", b"")]
        storage.begin()
        storage.store_many(records)
        assert storage._pending is not None and storage._pending[a] is records[0]
        storage.abort_transaction()
        # Outside a transaction, closed: what store() raises.
        assert _staged_outside(storage) == "DhruvaError"


def _staged_outside(storage: FileStorage) -> str:
    try:
        storage.store_many([(oid(1), b"x", b"")])
    except Exception as error:
        return type(error).__name__
    return "nothing raised"


@needs_c
def test_store_many_calls_a_subclass_s_own_store(tmp_path: Path) -> None:
    seen: list[bytes] = []

    class Counting(FileStorage):
        def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
            seen.append(oid)
            super().store(oid, data, refs)

    with Counting(str(tmp_path / "db.dhruva")) as storage:
        commit(storage, (0, b"root", []))
        storage.begin()
        storage.store_many([(oid(1), b"one", b""), (oid(2), b"two", b"")])
        storage.end()
        assert seen == [oid(0), oid(1), oid(2)]
        assert storage.load(oid(2)).data == b"two"
    # So does a store() set on the instance.
    with FileStorage(str(tmp_path / "db.dhruva")) as plain:
        plain.store = lambda key, data, refs=b"": seen.append(key)  # type: ignore[method-assign]
        plain.begin()
        plain.store_many([(oid(3), b"three", b"")])
        plain.abort_transaction()
        assert seen[-1] == oid(3)
    readonly = FileStorage(str(tmp_path / "db.dhruva"), readonly=True)
    with readonly, pytest.raises(ReadOnlyError):
        readonly.store_many([(oid(1), b"x", b"")])


# --- index_records ---------------------------------------------------------------------------


def _indexed(storage: FileStorage, transactions: list[list[tuple[bytes, bytes, bytes]]]) -> Any:
    """The index and every record's load after committing ``transactions`` in turn."""
    for records in transactions:
        storage.begin()
        storage.store_many(records)
        storage.end()
    index = dict(storage._index)
    return index, sorted((key, storage.load(key)) for key in index)


@needs_c
@pytest.mark.parametrize("cls", CLASSES)
def test_index_records_puts_each_record_where_the_python_chain_does(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    rng = random.Random(7)

    def transaction(size: int) -> list[tuple[bytes, bytes, bytes]]:
        keys = rng.sample(range(1, 400), size)
        return [
            (
                oid(key),
                rng.randbytes(rng.randrange(0, 300)),
                b"".join(map(oid, range(rng.randrange(4)))),
            )
            for key in keys
        ]

    transactions = [transaction(size) for size in (1, 2, 17, 250, 3, 399)]
    with cls(str(tmp_path / "c.dhruva")) as storage:
        with_c = _indexed(storage, transactions)
    with pure(journal_storage, "_c_index_records"), cls(str(tmp_path / "py.dhruva")) as storage:
        without = _indexed(storage, transactions)
    assert with_c == without
    assert len(with_c[0]) == len({key for records in transactions for key, _d, _r in records})
    # Reopened (the file's own scan and .index), every record loads as it did.
    with cls(str(tmp_path / "c.dhruva")) as storage:
        assert sorted((key, storage.load(key)) for key in with_c[0]) == with_c[1]


@needs_c
def test_index_records_declines_what_it_does_not_take_leaving_the_index_untouched() -> None:
    a, b = oid(1), oid(2)
    index = {a: 5}
    for index_of, records in (
        (index, [(a, b"x", b""), Record(b, b"a named tuple", b"")]),
        (index, [(a, b"x", b""), (b, bytearray(b"bytes-like"), b"")]),
        (index, [(a, b"x", b""), (b, b"x", bytearray(8))]),
        (index, [(a, b"x", b""), (bytearray(b), b"x", b"")]),
        (index, [(a, b"x", b""), (b, b"two fields")]),
        (index, ((a, b"x", b""),)),
        (index, [(a, b"x", b""), [b, b"a list", b""]]),
        (OrderedDict(index), [(a, b"x", b"")]),
    ):
        assert speedups.index_records is not None
        assert speedups.index_records(index_of, records, 100, 16) is False
        assert index_of == {a: 5}
    assert speedups.index_records(index, [(b, b"xyz", b"12345678"), (a, b"", b"")], 100, 16) == b
    assert index == {a: 100 + 16 + 3 + 8, b: 100}
    assert speedups.index_records(index, [], 100, 16) is None
    with pytest.raises(TypeError):
        speedups.index_records(index, [], 1.5, 16)


@needs_c
@settings(max_examples=200)
@given(st.lists(st.binary(min_size=0, max_size=10), min_size=1, max_size=40, unique=True))
def test_index_records_returns_the_greatest_oid_as_max_does(oids: list[bytes]) -> None:
    """Of any bytes, shorter and longer ones mixed: max's order (memcmp, then length)."""
    assert speedups.index_records is not None
    records = [(key, b"", b"") for key in oids]
    assert speedups.index_records({}, records, 0, 16) == max(oids)


@pytest.mark.req("SAPI-010")
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("c_path", [True, False], ids=["c", "python"])
def test_end_moves_the_next_oid_past_the_greatest_stored_one(
    tmp_path: Path, cls: type[FileStorage], c_path: bool
) -> None:
    """Both paths of end(): an oid the application chose, past the counter, moves it."""
    context = contextlib.nullcontext() if c_path else pure(journal_storage, "_c_index_records")
    with context, cls(str(tmp_path / "next.dhruva")) as storage:
        first = storage.new_oid()
        storage.begin()
        storage.store_many([(oid(40), b"x", b""), (oid(900), b"y", b""), (oid(7), b"z", b"")])
        storage.end()
        assert int.from_bytes(storage.new_oid(), "big") == 901
        assert int.from_bytes(first, "big") < 7


# --- record_sizes -----------------------------------------------------------------------------


@needs_c
@settings(max_examples=100)
@given(records_strategy)
def test_record_sizes_equals_the_python_expression(
    records: list[tuple[bytes, bytes, bytes]],
) -> None:
    assert speedups.record_sizes is not None
    expected = dict(
        zip(map(itemgetter(0), records), map(len, map(itemgetter(1), records)), strict=True)
    )
    assert speedups.record_sizes(records) == expected
    assert list(speedups.record_sizes(records)) == list(expected)


@needs_c
def test_record_sizes_declines_anything_but_a_list_of_byte_triples() -> None:
    assert speedups.record_sizes is not None
    a = oid(1)
    for records in (
        ((a, b"x", b""),),
        [(a, b"x", b""), [a, b"a list", b""]],
        [(a, bytearray(b"x"), b"")],
        [(bytearray(a), b"x", b"")],
        [(a, b"two fields")],
        [Record(a, b"a named tuple", b"")],
        "not a list",
    ):
        assert speedups.record_sizes(records) is None
    assert speedups.record_sizes([]) == {}


@needs_c
@pytest.mark.req("FMT-013")
def test_encode_transaction_told_distinct_skips_only_the_duplicate_check() -> None:
    records = [(oid(1), b"a", b""), (oid(2), b"b", oid(1))]
    expected = pure_encode(7, 8, records, journal.FORMAT_V2)
    assert _c.encode_transaction(7, 8, records, journal.FORMAT_V2, True) == expected
    # Not told (or told False), a repeated oid is still left to the Python encoder to refuse.
    assert _c.encode_transaction(5, 0, _duplicate(), journal.FORMAT_V2) is None
    assert _c.encode_transaction(5, 0, _duplicate(), journal.FORMAT_V2, False) is None


class Item(Persistent):
    def __init__(self, n: int = 0) -> None:
        self.n = n


def get_ghost(key: bytes, cls: type) -> Any:
    return ("ghost", key, cls)


def encode(state: Any) -> bytes:
    """What dhruva writes for an Item whose state references nothing (OBJ-009)."""
    return PickleSerializer().encode(Item, state, lambda obj: pytest.fail("no references"))


def one_pickler_record(state: Any) -> bytes:
    """The record form before OBJ-009: class and state by one pickler (memo shared)."""
    file = io.BytesIO()
    file.write(PICKLE_CODE)
    pickler = pickle.Pickler(file, protocol=5)
    pickler.dump(Item)
    pickler.dump(state)
    return file.getvalue()


def class_pickle_of(data: bytes) -> bytes:
    end = 12 + int.from_bytes(data[4:12], "little")  # pickle's own little-endian integer
    return data[1:end]


def outcome(read: Any, *args: Any) -> tuple[str, Any]:
    """("value", the result) or ("raised", (type, message)) of ``read(*args)``."""
    try:
        return "value", read(*args)
    except Exception as exc:
        return "raised", (type(exc), str(exc))


class Fallback:
    """read_state, counting the calls the C version hands to it."""

    def __init__(self, decoder: PickleDecoder) -> None:
        self.calls = 0
        self._read_state = decoder.read_state

    def __call__(self, data: bytes, refs: bytes | None) -> Any:
        self.calls += 1
        return self._read_state(data, refs)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner),
    max_leaves=10,
)
states = st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=6)


@needs_c
@settings(max_examples=200)
@given(state=states)
def test_read_pickle_state_equals_read_state_for_a_record_without_references(
    state: dict[str, Any],
) -> None:
    data = encode(state)
    decoder = PickleDecoder(get_ghost, None)
    expected = decoder.read_state(data, b"")
    assert expected == state
    fallback = Fallback(decoder)
    # The class pickle known memo-free: the C version reads the state alone.
    answer = _c.read_pickle_state({class_pickle_of(data): True}, fallback, data, b"")
    assert answer == expected and type(answer) is dict
    assert fallback.calls == 0
    # Through a new decoder's own reader: the first call teaches it the class
    # pickle (read_state), the second is the C version's alone.
    learner = PickleDecoder(get_ghost, None)
    learner.read_state = Fallback(learner)  # type: ignore[method-assign]
    reader = learner.state_reader()
    assert type(reader) is type(_c.state_reader({}, fallback))
    assert reader(data, b"") == expected and learner.read_state.calls == 1
    assert reader(data, b"") == expected and learner.read_state.calls == 1
    with pure(serialize, "_c_read_pickle_state"):
        pure_reader = ObjectReader(get_ghost)
    assert ObjectReader(get_ghost).get_state(data, b"") == pure_reader.get_state(data, b"")


@needs_c
def test_read_pickle_state_takes_known_attribute_names_from_its_cache() -> None:
    names = ["abcxd", "alpha", "x" * 32, "y" * 33, "caf\u00e9"]
    # set_dict_state interns the keys it copies in, and keeps the short ASCII ones.
    warm = Item()
    assert _c.set_dict_state(warm.__dict__, {fresh(name): 0 for name in names}) is None
    colliding = "abcyd"  # the length, first, middle and last character of "abcxd": its slot
    state = {fresh(name): fresh(name) for name in names} | {colliding: "abcxd", "abcxd2": 1}
    data = encode(state)
    decoder = PickleDecoder(get_ghost, None)
    fallback = Fallback(decoder)
    answer = _c.read_pickle_state({class_pickle_of(data): True}, fallback, data, b"")
    assert fallback.calls == 0
    assert answer == decoder.read_state(data, b"") == state
    assert list(answer) == list(state)
    found = {key: key for key in answer}
    # Known names come back as the interned strings themselves, values equal to one too.
    for name in ("abcxd", "alpha", "x" * 32):
        assert found[name] is sys.intern(name)
        assert answer[name] is found[name]
    # Longer or non-ASCII names and the colliding one are decoded afresh.
    assert found["y" * 33] is not sys.intern("y" * 33)
    assert found[colliding] == colliding and answer[colliding] == "abcxd"


@needs_c
def test_read_pickle_state_hands_everything_else_to_read_state() -> None:
    state = {"n": 1, "s": "x" * 3, "kind": Item}
    data = encode(state)
    known = {class_pickle_of(data): True}
    decoder = PickleDecoder(get_ghost, None)
    old = one_pickler_record(state)
    cases: dict[str, tuple[Any, Any, Any]] = {
        "refs listed": (known, data, oid(3)),
        "refs unknown": (known, data, None),
        "class pickle not yet judged": ({}, data, b""),
        "class pickle judged not memo-free": ({class_pickle_of(data): False}, data, b""),
        "old record form": ({**known, class_pickle_of(old): False}, old, b""),
        "class pickles not a dict": (OrderedDict(known), data, b""),
        "data not bytes": (known, bytearray(data), b""),
        "data too short": (known, data[:11], b""),
        "frame longer than the data": (known, data[:4] + b"\xff" * 8 + data[12:], b""),
    }
    for name, (class_pickles, record, refs) in cases.items():
        fallback = Fallback(decoder)
        expected = outcome(PickleDecoder(get_ghost, None).read_state, record, refs)
        got = outcome(_c.read_pickle_state, class_pickles, fallback, record, refs)
        assert got == expected, name
        assert fallback.calls == 1, name


@needs_c
@pytest.mark.req("OBJ-009")
def test_records_with_references_and_old_records_read_alike_on_both_paths() -> None:
    storage = MemoryStorage()
    writer = Connection(storage)
    root = writer.get_root()
    root["plain"] = Item(1)
    root["linked"] = Item(2)
    root["linked"].other = root["plain"]
    writer.commit()
    records = [storage.load(o) for o in storage.iter_oids()]
    assert any(r.refs for r in records) and any(not r.refs for r in records)
    old = one_pickler_record({"n": 3, "kind": Item})
    for read_refs in (True, False):
        with pure(serialize, "_c_read_pickle_state"):
            pure_reader = ObjectReader(get_ghost)
        reader = ObjectReader(get_ghost)
        for record in [*records, Record(oid(99), old, b"")]:
            refs = record.refs if read_refs else None
            assert reader.get_state(record.data, refs) == pure_reader.get_state(record.data, refs)


class Renamed:
    """A class that the test renames: its records name it, the class map finds Item."""


@needs_c
@pytest.mark.req("OBJ-020", "OBJ-050")
def test_a_restricted_or_class_mapping_reader_never_takes_the_c_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pickle.loads resolves globals its own way; these readers must resolve
    # every one through the allow-list or the class map.
    data = encode({"n": 1})
    restricted = PickleDecoder(get_ghost, ClassRegistry([Item]).resolve)
    assert restricted.state_reader() == restricted.read_state
    refusing = ObjectReader(get_ghost, registry=ClassRegistry([]))
    for _ in range(2):  # the second time the class pickle is known
        with pytest.raises(ForbiddenClassError, match="Item"):
            refusing.get_state(data, b"")
    allowing = ObjectReader(get_ghost, registry=ClassRegistry([Item]))
    assert allowing.get_state(data, b"") == {"n": 1}
    renamed = state_pickle_record({"kind": Renamed})
    monkeypatch.delattr(sys.modules[__name__], "Renamed")
    class_map = ClassMap({f"{__name__}.Renamed": Item})
    mapping = PickleDecoder(get_ghost, None, class_map)
    assert mapping.state_reader() == mapping.read_state
    reader = ObjectReader(get_ghost, class_map=class_map)
    for _ in range(2):
        assert reader.get_state(renamed, b"") == {"kind": Item}
    with pytest.raises(MissingClassError):
        ObjectReader(get_ghost).get_state(renamed, b"")


@needs_c
def test_a_corrupt_state_pickle_raises_what_the_python_reader_raises() -> None:
    data = encode({"n": 1, "name": "x" * 30, "items": [1, 2, 3]})
    start = len(class_pickle_of(data)) + 1
    damaged: list[bytes] = [data[:cut] for cut in range(start, len(data))]
    damaged += [
        data[:position] + b"\xff" + data[position + 1 :] for position in range(start, len(data))
    ]
    raised = 0
    for record in damaged:
        with pure(serialize, "_c_read_pickle_state"):
            pure_reader = ObjectReader(get_ghost)
        reader = ObjectReader(get_ghost)
        for _ in range(2):  # the second time through the C version's own pickle.loads
            expected = outcome(pure_reader.get_state, record, b"")
            assert outcome(reader.get_state, record, b"") == expected, record
        raised += expected[0] == "raised"
    assert raised > len(damaged) // 2


class Vanished:
    """A class whose records outlive it (the test removes it from the module)."""


def state_pickle_record(state: Any, persistent_id: Any = None) -> bytes:
    """A record of dhruva's form (OBJ-009) whose state pickle is written here."""
    file = io.BytesIO()
    file.write(encode({})[: 1 + len(class_pickle_of(encode({})))])
    pickler = _IdPickler(file, protocol=5)
    if persistent_id is not None:
        pickler.persistent_id = persistent_id  # type: ignore[method-assign]
    pickler.dump(state)
    return file.getvalue()


@needs_c
@pytest.mark.req("OBJ-005", "OBJ-051")
def test_where_pickle_loads_fails_the_python_reader_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pickle.loads alone cannot read these; read_state's full unpickler can,
    # or raises dhruva's typed error.  The C version must hand them over.
    hidden = state_pickle_record(
        {"n": 1, "ref": Item()}, lambda obj: (oid(5), Item) if isinstance(obj, Item) else None
    )
    vanished = state_pickle_record({"n": 1, "kind": Vanished})
    monkeypatch.delattr(sys.modules[__name__], "Vanished")
    # The same record naming a module that does not exist (a name of the same
    # length, in the state pickle only, so that every length stays right).
    prefix = 1 + len(class_pickle_of(vanished))
    missing = b"x" * len(__name__)
    unknown_module = vanished[:prefix] + vanished[prefix:].replace(__name__.encode(), missing)
    assert unknown_module != vanished
    for record in (hidden, vanished, unknown_module):
        with pure(serialize, "_c_read_pickle_state"):
            pure_reader = ObjectReader(get_ghost)
        reader = ObjectReader(get_ghost)
        for _ in range(2):  # the second time through the C version's own pickle.loads
            expected = outcome(pure_reader.get_state, record, b"")
            assert outcome(reader.get_state, record, b"") == expected
    assert outcome(reader.get_state, hidden, b"") == (
        "value",
        {"n": 1, "ref": ("ghost", oid(5), Item)},
    )
    for record in (vanished, unknown_module):
        with pytest.raises(MissingClassError):
            reader.get_state(record, b"")


# --- set_dict_state -----------------------------------------------------------------------


class Key(str):
    """A str subclass: sys.intern refuses it, so it stays the object it is."""


def fresh(text: str) -> str:
    """A str equal to ``text`` that is a new object (not the interned one)."""
    made = "".join(list(text))
    assert made is not text or len(text) <= 1
    return made


def pure_setstate(obj: Persistent, state: Any) -> None:
    with pure(persistent, "_c_set_dict_state"):
        obj.__setstate__(state)


@needs_c
@settings(max_examples=200)
@given(
    state=st.dictionaries(
        st.text(min_size=2, max_size=12) | st.integers() | st.builds(Key, st.text(max_size=5)),
        values,
        max_size=8,
    )
)
def test_set_dict_state_equals_setstate_and_interns_the_str_keys(state: dict[Any, Any]) -> None:
    state = {fresh(k) if type(k) is str else k: v for k, v in state.items()}
    interned = {sys.intern(fresh(k)) for k in state if type(k) is str}
    reference, obj = Item(), Item()
    reference.__dict__["stale"] = 1
    obj.__dict__["stale"] = 1
    pure_setstate(reference, state)
    d = obj.__dict__
    assert _c.set_dict_state(d, state) is None
    assert d == reference.__dict__ == state
    assert list(d) == list(reference.__dict__)  # the same order too
    for key in d:
        if type(key) is str:
            assert key in interned and any(key is canonical for canonical in interned)
        else:  # non-str and str-subclass keys: kept as they are, the very object
            assert any(key is original for original in state), key
    # And Persistent.__setstate__ with the C path on.
    other = Item()
    other.__setstate__(state)
    assert other.__dict__ == state
    assert all(sys.intern(k) is k for k in other.__dict__ if type(k) is str)


@needs_c
def test_set_dict_state_interns_a_key_that_is_not_yet_interned() -> None:
    canonical = sys.intern(fresh("attribute_name_for_the_test"))
    copy = fresh(canonical)
    assert copy is not canonical
    d: dict[str, Any] = {}
    assert _c.set_dict_state(d, {copy: 1}) is None
    (stored,) = d
    assert stored is canonical


@needs_c
def test_set_dict_state_leaves_anything_but_a_dict_to_setstate() -> None:
    class Sub(dict):  # type: ignore[type-arg]
        pass

    unusual: dict[str, Any] = {
        "list of pairs": [("a", 1)],
        "None": None,
        "dict subclass": Sub(a=1),
        "OrderedDict": OrderedDict(a=1),
        "mapping proxy": type("P", (), {"a": 1}).__dict__,
    }
    for name, state in unusual.items():
        d = {"stale": 1}
        assert _c.set_dict_state(d, state) is NotImplemented, name
        assert d == {"stale": 1}, name
        # Persistent.__setstate__ then answers as the Python path does.
        obj, reference = Item(), Item()
        expected = outcome(pure_setstate, reference, state)
        assert outcome(obj.__setstate__, state) == expected, name
        assert obj.__dict__ == reference.__dict__, name
    d = {"a": 1}
    assert _c.set_dict_state(d, d) is NotImplemented and d == {"a": 1}  # state is d
    assert _c.set_dict_state(Sub(), {"a": 1}) is NotImplemented  # d not an exact dict


# --- tail_entries and entry_bounds (the index checkpoint) -----------------------------------


@needs_c
@settings(max_examples=200)
@given(
    st.dictionaries(
        st.integers(min_value=0, max_value=U64_MAX).map(lambda n: n.to_bytes(8, "big")),
        st.integers(min_value=-(2**70), max_value=2**70),
        min_size=1,
        max_size=50,
    )
)
def test_tail_entries_equals_the_python_conversion(tail: dict[bytes, int]) -> None:
    assert speedups.tail_entries is not None
    numbers = struct.unpack(f">{len(tail)}Q", b"".join(tail))
    entries, greatest = speedups.tail_entries(tail)
    assert entries == dict(zip(numbers, tail.values(), strict=True))
    assert list(entries) == list(numbers)
    assert greatest == int.from_bytes(max(tail), "big")


@needs_c
def test_tail_entries_declines_an_empty_or_unusual_tail() -> None:
    assert speedups.tail_entries is not None
    for tail in (
        {},
        {oid(1): 5, b"short": 6},
        {oid(1): 5, memoryview(oid(2)): 6},
        {oid(1): 5, oid(2): 6.0},
        {oid(1): 5, oid(2): True},
        OrderedDict({oid(1): 5}),
        [(oid(1), 5)],
    ):
        assert speedups.tail_entries(tail) is None


@needs_c
@settings(max_examples=200)
@given(
    st.dictionaries(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        min_size=1,
        max_size=50,
    )
)
def test_entry_bounds_equals_the_four_builtins(entries: dict[int, int]) -> None:
    assert speedups.entry_bounds is not None
    assert speedups.entry_bounds(entries) == (
        min(entries),
        max(entries),
        min(entries.values()),
        max(entries.values()),
    )


@needs_c
def test_entry_bounds_declines_an_empty_or_unusual_dict() -> None:
    assert speedups.entry_bounds is not None
    for entries in (
        {},
        {1: 2, 3: 2**63},
        {1: 2, -(2**63) - 1: 2},
        {1: 2, 3: 4.0},
        {1: 2, 3: True},
        OrderedDict({1: 2}),
        [(1, 2)],
    ):
        assert speedups.entry_bounds(entries) is None


@pytest.mark.req("IDX-031")
@pytest.mark.parametrize("c_path", [True, False], ids=["c", "python"])
def test_checkpoint_refuses_entries_outside_the_tail_on_both_paths(
    tmp_path: Path, c_path: bool
) -> None:
    context = contextlib.nullcontext() if c_path else pure(file_index, "_c_entry_bounds")
    covered = 1000
    with (
        context,
        DiskIndex.create(str(tmp_path / "x.index"), bytes(16), {3: 100}, covered, 1, 0, 3) as index,
    ):
        index.checkpoint({3: covered, 9: covered + 10}, covered + 20, 2, 0, 9)
        for entries, max_oid, match in (
            ({4: covered + 20, 5: covered}, 9, "is outside"),
            ({4: covered + 25, 5: covered + 60}, 9, "is outside"),
            ({4: covered + 25, 12: covered + 30}, 9, "outside 0..max_oid"),
        ):
            with pytest.raises(ValueError, match=match):
                index.checkpoint(entries, covered + 50, 3, 0, max_oid)
        assert index.lookup(3) == covered and index.lookup(9) == covered + 10
        assert index.covered_offset == covered + 20


@pytest.mark.parametrize("c_path", [True, False], ids=["c", "python"])
def test_a_checkpointed_index_reopens_to_the_same_records_on_both_paths(
    tmp_path: Path, c_path: bool
) -> None:
    """FileStorage.checkpoint with tail_entries and entry_bounds, or the Python steps."""
    cls = FileStorage  # the storage with a .index sidecar
    path = str(tmp_path / f"ck-{c_path}.dhruva")
    with contextlib.ExitStack() as patches:
        if not c_path:
            patches.enter_context(pure(file_storage, "_c_tail_entries"))
            patches.enter_context(pure(file_index, "_c_entry_bounds"))
        with cls(path) as storage:
            keys = [*range(1, 300), 5000, 70, 4]
            for first in range(0, len(keys), 50):
                storage.begin()
                storage.store_many([(oid(k), b"v%d" % k, b"") for k in keys[first : first + 50]])
                storage.end()
            storage.checkpoint()
            assert not storage._index
            assert storage._disk_max_oid == 5000
            expected = {k: storage.load(oid(k)) for k in keys}
    with cls(path) as storage:
        assert storage._disk is not None and storage._disk.max_oid == 5000
        assert {k: storage.load(oid(k)) for k in keys} == expected
        assert int.from_bytes(storage.new_oid(), "big") == 5001
