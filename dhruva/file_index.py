"""The on-disk index of FileStorage: a dense, memory-mapped oid -> offset array.

Spec: ``spec/file-index.md`` (requirement prefix IDX).

Theory of operation
-------------------
The index is derived data kept beside the data file as ``PATH + ".index"``.
It may be deleted at any time; the caller then rebuilds it with a full scan of
the data file.  Its job is to make opening a large FileStorage cheap: open
maps the file and reads one header page and two meta slots, nothing else.

Layout: a 64-byte file header in page 0, meta slot A in page 1, meta slot B
in page 2, then from ``ENTRIES_OFFSET`` (12288) a dense array of u64
big-endian entries, entry ``i`` at ``ENTRIES_OFFSET + 8 * i`` for oid ``i``.
An entry holds the data-file offset of the oid's current record (0 = no
record), plus in bit 63 the ADDED flag (see below).

State: the valid meta slot with the higher ``seq`` is current.  It says up
to which data-file offset (``covered_offset``) the entries are complete.
Records after ``covered_offset`` (the *tail*) are not in the entries; the
caller scans the tail on open and keeps those in memory until the next
checkpoint.

Checkpoint order ([IDX-030]): (1) write the changed entries in place, growing
the file if needed; (2) fsync; (3) write the meta slot *not* current with
``seq + 1``; (4) fsync.  Every entry written in step 1 belongs to an oid whose
record lies at or after the current ``covered_offset`` (enforced, [IDX-031]),
so a crash before step 4 leaves the old meta current, the overwritten entries
all belong to oids that the caller's tail rescan finds again, and the
leftover entries are recognisable: their offset is >= the current
``covered_offset``.  One fact would be lost by such a leftover: whether the
oid had an entry at all under the current meta, which ``entry_count``
depends on.  The ADDED flag keeps it: a checkpoint sets bit 63 in an entry
iff the oid had no entry under the meta current at that time.  A leftover
with ADDED set is therefore read as "absent" ([IDX-022]); once a later meta
covers it, the flag is ignored.
"""

from __future__ import annotations

import mmap
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import NamedTuple

from dhruva import speedups
from dhruva.error import ReadOnlyError
from dhruva.fileio import OS_FILES, DataFile, FileLayer

MAGIC = b"\x89DHRIDX\n"
MAJOR_VERSION = 1
MINOR_VERSION = 0
FILE_ID_SIZE = 16
ENTRY_SIZE = 8
PAGE_SIZE = 4096
META_SLOT_OFFSETS = (PAGE_SIZE, 2 * PAGE_SIZE)
ENTRIES_OFFSET = 3 * PAGE_SIZE
"""Where entry 0 lives; the header, slot A and slot B each own a page ([IDX-003])."""

ADDED_FLAG = 1 << 63
OFFSET_MASK = ADDED_FLAG - 1
#: Offsets below this leave the top byte of their entry zero; ADDED_FLAG is then that byte.
_FLAG_BYTE_FREE = 1 << 56
_ADDED_FLAG_BYTE = (ADDED_FLAG >> 56).to_bytes(1, "big")
MAX_OID = (1 << 40) - 1
"""The highest oid number an index holds (a 8 TiB sparse array); higher -> ValueError."""

CAPACITY_QUANTUM = PAGE_SIZE // ENTRY_SIZE
"""The entry array's capacity is a multiple of this many entries (one page)."""
GROWTH_MIN_ENTRIES = 1 << 17
"""Grow by at least this many entries (1 MiB), so growth and remapping are rare."""

# File header, 64 bytes at offset 0 ([IDX-001]).
HEADER = struct.Struct(">8sHHI16sII20sI")
assert HEADER.size == 64
# Meta slot, 64 bytes at offsets 4096 and 8192 ([IDX-010]).
META = struct.Struct(">QQQQQI16sI")
assert META.size == 64
_ENTRY = struct.Struct(">Q")
assert _ENTRY.size == ENTRY_SIZE
_unpack_entry = _ENTRY.unpack_from
_c_index_offset = speedups.index_offset
_c_entry_bounds = speedups.entry_bounds

_ITER_CHUNK_ENTRIES = 1 << 16


class Meta(NamedTuple):
    """The decoded fields of one meta slot."""

    seq: int
    covered_offset: int
    last_tid: int
    max_oid: int
    entry_count: int
    last_trailer_crc: int


def encode_header(file_id: bytes) -> bytes:
    """Return the 64-byte index file header for a data file with ``file_id``."""
    if len(file_id) != FILE_ID_SIZE:
        raise ValueError(f"a file_id is {FILE_ID_SIZE} bytes, not {len(file_id)}")
    body = HEADER.pack(
        MAGIC, MAJOR_VERSION, MINOR_VERSION, 0, file_id, ENTRY_SIZE, ENTRIES_OFFSET, b"", 0
    )[:60]
    return body + struct.pack(">I", zlib.crc32(body))


def encode_meta(meta: Meta) -> bytes:
    """Return the 64-byte meta slot for ``meta`` (max_oid stored +1, [IDX-011])."""
    body = META.pack(
        meta.seq,
        meta.covered_offset,
        meta.last_tid,
        meta.max_oid + 1,
        meta.entry_count,
        meta.last_trailer_crc,
        b"",
        0,
    )[:60]
    return body + struct.pack(">I", zlib.crc32(body))


def decode_meta(slot: bytes) -> Meta | None:
    """Return the Meta in a 64-byte slot, or None if its crc fails or seq is 0 ([IDX-012])."""
    seq, covered, tid, max_oid_plus_one, count, trailer_crc, _reserved, crc = META.unpack(slot)
    if crc != zlib.crc32(slot[:60]) or seq == 0:
        return None
    return Meta(seq, covered, tid, max_oid_plus_one - 1, count, trailer_crc)


def _round_capacity(entries: int) -> int:
    quantum = CAPACITY_QUANTUM
    return max(quantum, -(-entries // quantum) * quantum)


def _check_max_oid(max_oid: int) -> None:
    if not -1 <= max_oid <= MAX_OID:
        raise ValueError(f"max_oid {max_oid} is outside the indexable range -1..{MAX_OID}")


def _build_entry_array(entries: Mapping[int, int], capacity: int) -> bytes:
    """Return the big-endian entry array of ``capacity`` entries for ``entries``."""
    values = array("Q", bytes(capacity * ENTRY_SIZE))
    for oid, offset in entries.items():
        if not 0 <= offset <= OFFSET_MASK:
            raise ValueError(f"offset {offset} of oid {oid} does not fit in 63 bits")
        values[oid] = offset
    if sys.byteorder == "little":
        values.byteswap()
    return values.tobytes()


class DiskIndex:
    """An open ``.index`` file; see the module docstring and spec/file-index.md.

    Attributes (all from the current meta slot, updated by ``checkpoint``):
    ``covered_offset``, ``last_tid``, ``last_trailer_crc``, ``max_oid`` (-1 if
    none) and ``entry_count`` (oids for which ``lookup`` is non-zero).

    Every byte goes through the :class:`dhruva.fileio.FileLayer` given at
    open (IDX-006).  Reads use a read-only map of the file when the layer
    offers one, else ``pread``; writes are always ``pwrite`` into space
    reserved by ``allocate``, so a full disk is an OSError, never a signal.
    """

    def __init__(
        self, data_file: DataFile, layer: FileLayer, meta: Meta, slot: int, readonly: bool
    ) -> None:
        """Wrap an open, validated index; use ``open`` or ``create`` instead."""
        self.path = data_file.path
        self.readonly = readonly
        self._file: DataFile | None = data_file
        self._layer = layer
        self._map: mmap.mmap | None = data_file.read_map()
        self._slot = slot
        self._capacity = (data_file.size() - ENTRIES_OFFSET) // ENTRY_SIZE
        self._set_meta(meta)

    def _set_meta(self, meta: Meta) -> None:
        self._seq = meta.seq
        self.covered_offset = meta.covered_offset
        self.last_tid = meta.last_tid
        self.last_trailer_crc = meta.last_trailer_crc
        self.max_oid = meta.max_oid
        self.entry_count = meta.entry_count

    # -- opening -------------------------------------------------------

    @classmethod
    def open(
        cls, path: str, file_id: bytes, readonly: bool, layer: FileLayer = OS_FILES
    ) -> DiskIndex | None:
        """Open the index at ``path`` and read its header and meta slots only.

        Returns None when the index cannot be used and the caller must rebuild
        it with a full scan: missing, not an index, unknown version, damaged
        header, both meta slots invalid, or written for another data file
        (``file_id`` differs) ([IDX-002], [IDX-005], [IDX-013], [IDX-014]).
        """
        if not layer.exists(path):
            return None
        try:
            data_file = layer.open(path, create=False, readonly=readonly)
        except FileNotFoundError:
            return None
        try:
            index = cls._open_file(data_file, layer, file_id, readonly)
        except BaseException:
            data_file.close()
            raise
        if index is None:
            data_file.close()
        return index

    @classmethod
    def _open_file(
        cls, data_file: DataFile, layer: FileLayer, file_id: bytes, readonly: bool
    ) -> DiskIndex | None:
        size = data_file.size()
        if size < ENTRIES_OFFSET:
            return None
        pages = data_file.pread(ENTRIES_OFFSET, 0)
        meta_and_slot = _validate(pages, file_id, readonly, size)
        if meta_and_slot is None:
            return None
        meta, slot = meta_and_slot
        return cls(data_file, layer, meta, slot, readonly)

    @classmethod
    def create(
        cls,
        path: str,
        file_id: bytes,
        entries: Mapping[int, int],
        covered_offset: int,
        last_tid: int,
        last_trailer_crc: int,
        max_oid: int,
        layer: FileLayer = OS_FILES,
    ) -> DiskIndex:
        """Write a complete new index for ``entries`` and return it open for writing.

        The file is written beside ``path``, synced, renamed over ``path`` and
        the directory synced, so a crash leaves either the old index or the new
        one ([IDX-032]).  Entries with offset 0 are absent.  Raises ValueError
        for an oid above ``max_oid`` or ``MAX_OID``, or an offset not below
        ``covered_offset``; OSError when the file cannot be written (a full
        disk: the partial ``PATH.tmp`` is removed).
        """
        _check_max_oid(max_oid)
        count = 0
        for oid, offset in entries.items():
            if not 0 <= oid <= max_oid:
                raise ValueError(f"oid {oid} is outside 0..max_oid ({max_oid})")
            if offset >= covered_offset:
                raise ValueError(f"offset {offset} of oid {oid} is not below covered_offset")
            count += offset != 0
        meta = Meta(1, covered_offset, last_tid, max_oid, count, last_trailer_crc)
        capacity = _round_capacity(max_oid + 1)
        temp_path = path + ".tmp"
        if layer.exists(temp_path):
            layer.remove(temp_path)  # left by an interrupted create; never read
        temp = layer.open(temp_path, create=True, readonly=False)
        try:
            page = bytearray(ENTRIES_OFFSET)
            page[0:64] = encode_header(file_id)
            page[META_SLOT_OFFSETS[0] : META_SLOT_OFFSETS[0] + 64] = encode_meta(meta)
            # Slot B stays zero: its crc fails, so it is invalid until the first checkpoint.
            temp.append(bytes(page))
            temp.append(_build_entry_array(entries, capacity))
            temp.sync()
        except BaseException:
            temp.close()
            try:
                layer.remove(temp_path)
            except OSError:
                pass
            raise
        temp.close()
        layer.rename(temp_path, path)
        layer.sync_directory(path)
        index = cls.open(path, file_id, readonly=False, layer=layer)
        if index is None:  # pragma: no cover - we just wrote it
            raise OSError(f"{path}: the index just written cannot be read back")
        return index

    @staticmethod
    def discard(path: str, layer: FileLayer = OS_FILES) -> None:
        """Delete the index at ``path`` (if any) durably, so the next open rebuilds.

        A writer that removes committed transactions from the data file calls
        this first ([IDX-033]).
        """
        if not layer.exists(path):
            return
        try:
            layer.remove(path)
        except FileNotFoundError:
            return
        layer.sync_directory(path)

    # -- reading -------------------------------------------------------

    def _decode_entry(self, raw: int) -> int:
        offset = raw & OFFSET_MASK
        # [IDX-022] A leftover of an interrupted checkpoint that added the oid is absent.
        if raw & ADDED_FLAG and offset >= self.covered_offset:
            return 0
        return offset

    def _read_bytes(self, first_oid: int, count: int) -> bytes:
        """Return the raw bytes of the entries of oids ``first_oid .. first_oid + count - 1``."""
        position = ENTRIES_OFFSET + first_oid * ENTRY_SIZE
        length = count * ENTRY_SIZE
        mapping = self._map
        if mapping is not None:
            return mapping[position : position + length]
        assert self._file is not None
        return self._file.pread(length, position)

    def _read_raw(self, first_oid: int, count: int) -> tuple[int, ...]:
        """Return the raw entries of oids ``first_oid .. first_oid + count - 1``."""
        mapping = self._map
        if mapping is not None:
            position = ENTRIES_OFFSET + first_oid * ENTRY_SIZE
            return struct.unpack_from(f">{count}Q", mapping, position)
        return struct.unpack(f">{count}Q", self._read_bytes(first_oid, count))

    def lookup(self, oid_int: int) -> int:
        """Return the data-file offset of oid ``oid_int``'s record, 0 if absent ([IDX-020])."""
        if not 0 <= oid_int < self._capacity:
            return 0
        mapping = self._map
        if mapping is not None:
            raw: int = _unpack_entry(mapping, ENTRIES_OFFSET + oid_int * ENTRY_SIZE)[0]
        else:
            raw = self._read_raw(oid_int, 1)[0]
        if raw & ADDED_FLAG:
            return self._decode_entry(raw)
        return raw  # _decode_entry of an entry without the flag

    def lookup_oid(self, oid: bytes, last: int) -> int:
        """Return :meth:`lookup` of the 8-byte ``oid``, 0 when its number is beyond ``last``."""
        mapping = self._map
        if _c_index_offset is not None and mapping is not None:
            capacity = self._capacity
            offset = _c_index_offset(
                mapping, oid, last if last < capacity else capacity - 1, self.covered_offset
            )
            if offset is not None:
                return offset
        number = int.from_bytes(oid, "big")
        if number > last:
            return 0
        return self.lookup(number)

    def iter_entries(self) -> Iterator[tuple[int, int]]:
        """Yield ``(oid_int, offset)`` for every oid whose ``lookup`` is non-zero, by oid."""
        for start in range(0, self._capacity, _ITER_CHUNK_ENTRIES):
            count = min(_ITER_CHUNK_ENTRIES, self._capacity - start)
            raws = self._read_raw(start, count)
            for i, raw in enumerate(raws):
                if raw:
                    offset = self._decode_entry(raw)
                    if offset:
                        yield start + i, offset

    # -- writing -------------------------------------------------------

    def checkpoint(
        self,
        entries: Mapping[int, int],
        covered_offset: int,
        last_tid: int,
        last_trailer_crc: int,
        max_oid: int,
    ) -> None:
        """Persist changed ``entries`` and a new meta slot, crash-safely ([IDX-030]).

        ``entries`` MUST hold every oid with a record in the data file between
        the current and the new ``covered_offset`` ([IDX-034]).  Raises
        ReadOnlyError on a read-only index and ValueError when an offset lies
        outside [current covered_offset, new covered_offset) ([IDX-031]), when
        covered_offset or max_oid would go backwards, or an oid exceeds max_oid.
        An OSError (a full disk, [IDX-036]) leaves the current meta slot
        current, so the index on disk still describes the old covered offset;
        the caller decides whether to keep using it.
        """
        if self.readonly:
            raise ReadOnlyError(f"{self.path}: the index was opened read-only")
        data_file = self._require_open()
        old_covered = self.covered_offset
        if covered_offset < old_covered:
            raise ValueError(f"covered_offset {covered_offset} is below {old_covered}")
        _check_max_oid(max_oid)
        if max_oid < self.max_oid:
            raise ValueError(f"max_oid {max_oid} is below {self.max_oid}")
        # Four bounds at C speed (one pass, or four builtins); the per-entry
        # loop only finds the culprit.
        bounds = None
        if entries:
            bounds = _c_entry_bounds(entries) if _c_entry_bounds is not None else None
            if bounds is None:
                bounds = (min(entries), max(entries), min(entries.values()), max(entries.values()))
            if (
                bounds[0] < 0
                or bounds[1] > max_oid
                or bounds[2] < old_covered
                or bounds[3] >= covered_offset
            ):
                _refuse_entries(entries, old_covered, covered_offset, max_oid)
        if not entries and covered_offset == old_covered and max_oid == self.max_oid:
            return  # Nothing changed: no writes, no fsync.
        if max_oid >= self._capacity:
            self._grow(max_oid + 1)
        entry_count = self.entry_count
        for first, last in _runs(sorted(entries)):
            # One read and one pwrite per run of consecutive oids (new oids are
            # dense); every oid of a run is in entries.
            count = last - first + 1
            layout = struct.Struct(f">{count}Q")
            raw_bytes = self._read_bytes(first, count)
            offsets = list(map(entries.__getitem__, range(first, last + 1)))
            if raw_bytes == bytes(len(raw_bytes)) and (
                # (No offset at all reaches the top byte, or none of this run.)
                (bounds is not None and bounds[3] < _FLAG_BYTE_FREE)
                or max(offsets) < _FLAG_BYTE_FREE
            ):
                # Oids new to the index (a bulk insert): each entry is an added
                # one.  No offset reaches the top byte, so ADDED_FLAG is that
                # byte of each big-endian word: one slice sets them all.
                packed = bytearray(layout.pack(*offsets))
                packed[0::ENTRY_SIZE] = _ADDED_FLAG_BYTE * count
                data_file.pwrite(bytes(packed), ENTRIES_OFFSET + first * ENTRY_SIZE)
                entry_count += count
                continue
            raws = layout.unpack(raw_bytes)
            if not any(raws):
                words = [offset | ADDED_FLAG for offset in offsets]
                entry_count += count
            else:
                # Whether each oid had an entry under the current meta; see the module docstring.
                absent = [
                    raw == 0 or bool(raw & ADDED_FLAG and raw & OFFSET_MASK >= old_covered)
                    for raw in raws
                ]
                words = [
                    offset | ADDED_FLAG if added else offset
                    for offset, added in zip(offsets, absent, strict=True)
                ]
                entry_count += sum(absent)
            data_file.pwrite(layout.pack(*words), ENTRIES_OFFSET + first * ENTRY_SIZE)
        if entries:
            data_file.sync()  # Step 2: entries durable before any meta names them.
        meta = Meta(self._seq + 1, covered_offset, last_tid, max_oid, entry_count, last_trailer_crc)
        slot = 1 - self._slot
        data_file.pwrite(encode_meta(meta), META_SLOT_OFFSETS[slot])
        data_file.sync()  # Step 4: the new meta is current once this returns.
        self._slot = slot
        self._set_meta(meta)

    def _grow(self, needed_entries: int) -> None:
        """Extend the file with reserved, zeroed space and remap, in large steps ([IDX-004]).

        ``allocate`` reserves the blocks ([IDX-036]): a full disk fails here,
        as an OSError, and not at a later write into a hole.
        """
        data_file = self._require_open()
        capacity = _round_capacity(
            max(needed_entries, self._capacity + max(self._capacity // 2, GROWTH_MIN_ENTRIES))
        )
        data_file.allocate(ENTRIES_OFFSET + capacity * ENTRY_SIZE)
        if self._map is not None:
            self._map.close()
        self._map = data_file.read_map()
        self._capacity = capacity

    def _require_open(self) -> DataFile:
        if self._file is None:
            raise ValueError(f"{self.path}: the index is closed")
        return self._file

    @property
    def capacity(self) -> int:
        """The number of entries the file currently holds (grows in large steps)."""
        return self._capacity

    def close(self) -> None:
        """Unmap and close the file; closing twice is harmless.  Writes nothing."""
        data_file, self._file = self._file, None
        if data_file is None:
            return
        if self._map is not None:
            self._map.close()
            self._map = None
        data_file.close()

    def __enter__(self) -> DiskIndex:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


#: At most this many entries (512 KiB) go into one pwrite.
RUN_MAX_ENTRIES = 1 << 16


def _refuse_entries(
    entries: Mapping[int, int], old_covered: int, covered_offset: int, max_oid: int
) -> None:
    """Raise checkpoint's ValueError for the first entry it cannot take."""
    for oid, offset in entries.items():
        if not 0 <= oid <= max_oid:
            raise ValueError(f"oid {oid} is outside 0..max_oid ({max_oid})")
        # [IDX-031] The crash argument needs every changed entry to be in the tail.
        if not old_covered <= offset < covered_offset:
            raise ValueError(
                f"offset {offset} of oid {oid} is outside [{old_covered}, {covered_offset})"
            )


def _runs(oids: list[int]) -> Iterator[tuple[int, int]]:
    """Yield ``(first, last)`` ranges of consecutive oids covering ``oids`` (sorted, distinct).

    Only consecutive oids are merged: an entry the checkpoint does not change
    is never rewritten, not even with its own bytes, because a torn write can
    leave zeros where it lands ([IDX-031]; the conformance suite's ``zeros``
    crash mode found the gap-merging version of this wrong).
    """
    count = len(oids)
    start = 0
    while start < count:
        end = _run_end(oids, start)
        first, last = oids[start], oids[end - 1]
        while last - first >= RUN_MAX_ENTRIES:
            yield first, first + RUN_MAX_ENTRIES - 1
            first += RUN_MAX_ENTRIES
        yield first, last
        start = end


def _run_end(oids: list[int], start: int) -> int:
    """The index just past the run of consecutive oids that begins at ``oids[start]``.

    In sorted, distinct oids, ``oids[k] - oids[start] == k - start`` holds for
    every k of that run and for none after it (the gaps only add up), so the
    end is found by galloping then halving: O(log length) probes a run, not
    one a oid (a bulk insert's tail is a few runs of thousands of new oids).
    """
    first = oids[start]
    last_index = len(oids) - 1
    inside, step = start, 1  # inside: an index known to be in the run
    while True:
        probe = min(inside + step, last_index)
        if probe == inside:
            return inside + 1  # the run reaches the end of the list
        if oids[probe] - first != probe - start:
            break
        inside, step = probe, 2 * step
    outside = probe  # past the run: the end lies in (inside, outside]
    while outside - inside > 1:
        middle = (inside + outside) // 2
        if oids[middle] - first == middle - start:
            inside = middle
        else:
            outside = middle
    return inside + 1


def _validate(pages: bytes, file_id: bytes, readonly: bool, size: int) -> tuple[Meta, int] | None:
    """Check the header and meta pages (the first ``ENTRIES_OFFSET`` bytes of a
    file of ``size`` bytes) and pick the current meta slot; None means "rebuild"."""
    header = pages[0 : HEADER.size]
    magic, major, minor, _flags, found_id, entry_size, entries_offset, _res, crc = HEADER.unpack(
        header
    )
    if magic != MAGIC or crc != zlib.crc32(header[:60]):  # [IDX-002]
        return None
    # [IDX-005] Unknown major: unreadable.  Higher minor: readable, but a writer
    # would not maintain what the newer minor added, so a writable open rebuilds.
    if major != MAJOR_VERSION or (minor > MINOR_VERSION and not readonly):
        return None
    if entry_size != ENTRY_SIZE or entries_offset != ENTRIES_OFFSET:
        return None
    if found_id != file_id:  # [IDX-014]
        return None
    metas = [decode_meta(pages[start : start + META.size]) for start in META_SLOT_OFFSETS]
    candidates = [(meta.seq, slot, meta) for slot, meta in enumerate(metas) if meta is not None]
    if not candidates:  # [IDX-013]
        return None
    if len(candidates) == 2 and candidates[0][0] == candidates[1][0]:
        return None  # Two slots with one seq cannot come from our writes: damaged.
    _seq, slot, meta = max(candidates)
    if size < ENTRIES_OFFSET + (meta.max_oid + 1) * ENTRY_SIZE:  # [IDX-004] truncated
        return None
    return meta, slot
