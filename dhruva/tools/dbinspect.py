"""Reading dhruva databases for the tools, without changing them or running record code.

Spec: ``spec/tools.md`` (TOOL-001 .. TOOL-005).

Theory of operation.  A :class:`JournalSource` maps a dhruva data file
read-only and walks it with the sans-IO journal codec
(:func:`dhruva.journal.scan`), which applies the recovery rule but writes
nothing: a torn tail is reported, never set aside (TOOL-001).  The sidecar
index is opened read-only and compared entry by entry with what the scan
found (TOOL-004).  A :class:`SqliteSource` reads a SQLite database through
``SqliteStorage(readonly=True)`` (SQLite's ``mode=ro``) after
``PRAGMA integrity_check``.  Both yield :class:`RecordInfo`; the class name
comes from the record's bytes (pickle opcodes, the msgspec class string),
never from unpickling, so no code a record names runs (TOOL-003).
"""

from __future__ import annotations

import datetime as dt
import mmap
import os
import pickletools
import sqlite3
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dhruva import journal
from dhruva.error import CorruptionError, DhruvaError
from dhruva.record_class import msgspec_class_name as _msgspec_class_name
from dhruva.record_class import pickle_class_name as _pickle_class_name
from dhruva.tools.durus_import import detect_durus_format
from dhruva.tools.oid_table import Bitmap, OidSlots
from dhruva.utils import iter_oids, str_to_int8

KIND_FILE = "dhruva data file"
KIND_SQLITE = "dhruva SQLite database"
SQLITE_MAGIC = b"SQLite format 3\x00"


RELEASE_EVERY_BYTES = 8 << 20
"""A sequential walk of a mapped data file releases the pages behind it every this many bytes."""
SCAN_WINDOW_BYTES = 8 << 20
"""The first scan of a data file reads it in windows of this many bytes (at least)."""
RELEASE_EVERY_READS = 1024
"""Random reads of a mapped data file release its pages every this many reads."""


class ToolError(DhruvaError):
    """A failure the user can act on: printed as one line."""


# --- reading records without running code -------------------------------------------


def describe_data(data: bytes) -> tuple[str, str]:
    """Return ``(serializer name, dotted class name)`` of a record's data (TOOL-003).

    Reads the serializer code (OBJ-001) and then only the bytes: pickle and
    dill records through :func:`pickletools.genops` (both pickles must be
    complete), msgspec records by their class-name string.  Raises
    ValueError naming what is wrong.
    """
    code = data[:1]
    if code in (b"P", b"D"):
        payload = data[1:]
        try:
            name, end = _pickle_class_name(payload)
        except ValueError as exc:
            raise ValueError(f"the class pickle is not complete ({exc})") from None
        try:
            _check_complete_pickle(payload[end:])
        except ValueError as exc:
            raise ValueError(f"the state pickle is not complete ({exc})") from None
        return ("pickle" if code == b"P" else "dill"), name
    if code == b"M":
        return "msgspec", _msgspec_class_name(data)
    shown = code.hex() or "nothing (empty data)"
    raise ValueError(f"unknown serializer code 0x{shown}")


def _check_complete_pickle(state: bytes) -> None:
    """Raise ValueError unless ``state`` is one complete pickle (opcodes only, no code runs)."""
    last = None
    for opcode, _arg, _position in pickletools.genops(state):
        last = opcode.name
    if last != "STOP":
        raise ValueError("no STOP opcode")


@dataclass
class RecordInfo:
    """One record as the tools see it; tid, time and offsets are None for SQLite."""

    oid: bytes
    data_size: int
    refs: bytes
    size: int
    serializer: str | None = None
    class_name: str | None = None
    error: str | None = None
    tid: int | None = None
    time_us: int | None = None
    offset: int | None = None
    txn_offset: int | None = None
    #: False when the record's bytes failed their checks, so ``refs`` is empty
    #: because the references could not be trusted, not because there are none.
    refs_readable: bool = True

    def as_json(self) -> dict[str, Any]:
        """The JSON-lines form of ``dhruva dump --json`` (TOOL-020)."""
        time = None
        if self.time_us is not None:
            moment = dt.datetime.fromtimestamp(self.time_us / 1e6, dt.UTC)
            time = moment.isoformat().replace("+00:00", "Z")
        return {
            "tid": self.tid,
            "time": time,
            "txn_offset": self.txn_offset,
            "offset": self.offset,
            "oid": str_to_int8(self.oid),
            "class": self.class_name,
            "serializer": self.serializer,
            "size": self.data_size,
            "refs": [str_to_int8(ref) for ref in iter_oids(self.refs)],
        }


def _info(oid: bytes, data: bytes, refs: bytes, size: int, **where: Any) -> RecordInfo:
    info = RecordInfo(oid, len(data), bytes(refs), size, **where)
    try:
        info.serializer, info.class_name = describe_data(bytes(data))
    except ValueError as exc:
        info.error = f"record data does not decode: {exc}"
    return info


# --- sources: a journal file or a SQLite database ------------------------------------------


@dataclass
class Issue:
    """One finding: ``severity`` is "damage", "warning" or "info"."""

    severity: str
    kind: str
    message: str


def detect_kind(path: str) -> str:
    """Return KIND_FILE or KIND_SQLITE for ``path``; raise ToolError otherwise."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except FileNotFoundError:
        raise ToolError(f"{path}: no such file") from None
    except OSError as exc:
        raise ToolError(f"{path}: {exc.strerror or exc}") from None
    if head.startswith(journal.MAGIC):
        return KIND_FILE
    if head == SQLITE_MAGIC:
        return KIND_SQLITE
    if detect_durus_format(head):
        raise ToolError(f"{path} is a Durus database; convert it with: dhruva import-durus")
    raise ToolError(f"{path} is not a dhruva database (it starts with {head[:8]!r})")


class JournalSource:
    """A dhruva data file mapped read-only and scanned once (TOOL-001)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.issues: list[Issue] = []
        self.size = os.path.getsize(path)
        self.spans: list[journal.TxnSpan] = []
        self.file_id = b""
        #: The format version from the file header (FMT-022).
        self.version = journal.MAJOR_VERSION
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._map: mmap.mmap | None = None
        self._reads = 0
        if self.size:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._scan()
        self._release_pages(0, self.size)

    @property
    def buf(self) -> bytes | mmap.mmap:
        return self._map if self._map is not None else b""

    def _scan(self) -> None:
        buf = self.buf
        try:
            header = journal.decode_file_header(buf[: journal.FILE_HEADER_SIZE], self.path)
        except CorruptionError as exc:
            self.issues.append(Issue("damage", "header", str(exc)))
            return
        self.file_id = header.file_id
        self.version = header.major
        # [RCV-008] Bytes the index covers were committed: damage there is
        # never an interrupted commit, for verify as for an open.
        committed_end = self._index_covered_offset()
        view = memoryview(buf)
        try:
            try:
                result = self._scan_in_windows(view, committed_end)
            except CorruptionError as exc:
                # [TOOL-002] Damage before the last valid commit: say where and why.
                self.issues.append(Issue("damage", "journal", str(exc)))
                result = journal.scan(
                    view,
                    journal.FILE_HEADER_SIZE,
                    self.path,
                    repair=True,
                    version=self.version,
                    committed_end=committed_end,
                )
            else:
                if result.tail is not None:
                    start, end = result.tail
                    self.issues.append(
                        Issue(
                            "warning",
                            "torn tail",
                            f"{end - start} bytes at offset {start} are not a complete transaction "
                            f"({result.tail_reason}): an interrupted commit, set aside at the next "
                            "writable open",
                        )
                    )
        finally:
            view.release()
        self.spans = result.spans

    def _scan_in_windows(self, view: memoryview, committed_end: int) -> journal.ScanResult:
        """Scan the file as :func:`journal.scan` would, with its pages released as it goes.

        [TOOL-008] One scan of the whole mapping would leave every page of
        the file resident.  This scans it in windows of about
        ``SCAN_WINDOW_BYTES`` that end at a transaction boundary (found by
        hopping from header to header by their lengths; at least one
        transaction a window), and releases each window's pages before the
        next.  A window that scans clean is a prefix of what the whole-file
        scan finds.  Everything from the first window that does not scan
        clean, or from the first header the hop cannot follow (a bad tag, a
        length past the end of the file), is scanned in one piece to the end
        of the file, with the index's committed offset: so the last scan
        alone decides, exactly as the whole-file scan does, whether bytes
        after the last valid transaction are a torn tail or damage (a window
        is scanned with ``repair=True``, so that it never decides).
        """
        position = journal.FILE_HEADER_SIZE
        spans: list[journal.TxnSpan] = []
        last_tid = 0
        while True:
            end = self._window_end(view, position)
            if end == position:
                break
            # repair=True: a window never raises; its tail only ends the windows.
            part = journal.scan(
                view[position:end],
                position,
                self.path,
                last_tid=last_tid,
                repair=True,
                base=position,
                version=self.version,
            )
            spans.extend(part.spans)
            if part.spans:
                last_tid = part.spans[-1].tid
            self._release_pages(position, part.end)
            position = part.end
            if part.tail is not None:
                break
        last = journal.scan(
            view[position:],
            position,
            self.path,
            last_tid=last_tid,
            base=position,
            version=self.version,
            committed_end=committed_end,
        )
        return last._replace(spans=spans + last.spans)

    def _window_end(self, view: memoryview, position: int) -> int:
        """The end of the last whole transaction that ends within a window from ``position``.

        At least one transaction, if its header can be followed; ``position``
        itself when it cannot (the last scan then starts there), and never the
        end of the file (the last scan must reach it).
        """
        end = position
        while end + journal.TXN_HEADER_SIZE <= self.size:
            header = journal.TxnHeader.unpack_from(view, end)
            following = end + header.length
            if header.tag != journal.TXN_TAG or following >= self.size:
                break
            if end > position and following - position > SCAN_WINDOW_BYTES:
                break
            end = following
        return end

    def _index_covered_offset(self) -> int:
        """Return the offset ``PATH.index`` covers (0 without a usable index of this file)."""
        from dhruva.file_index import DiskIndex

        index_path = self.path + ".index"
        if not os.path.exists(index_path):
            return 0
        disk = DiskIndex.open(index_path, self.file_id, readonly=True)
        if disk is None:
            return 0
        try:
            return int(disk.covered_offset)
        finally:
            disk.close()

    def record_count(self) -> int:
        """Return the number of records :meth:`records` yields (from the headers)."""
        buf = self.buf
        return sum(
            journal.TxnHeader.unpack_from(buf, span.offset).record_count for span in self.spans
        )

    def records(self) -> Iterator[RecordInfo]:
        """Yield every record of every valid transaction, in file order.

        The transactions passed the scan's checks; each record is decoded on
        its own, so that a version 2 record failing its checksum (FMT-023) is
        yielded with ``error`` set instead of ending the walk.
        """
        buf = self.buf
        version = self.version
        released = 0
        for span in self.spans:
            if span.offset - released >= RELEASE_EVERY_BYTES:
                # [TOOL-008] The pages walked past are not needed again.
                self._release_pages(released, span.offset)
                released = span.offset
            position = span.offset + journal.TXN_HEADER_SIZE
            body_end = span.end - journal.TXN_TRAILER_SIZE
            while position < body_end:
                header = journal.RecordHeader.unpack_from(buf, position, version)
                where: dict[str, Any] = {
                    "tid": span.tid,
                    "time_us": span.time_us,
                    "offset": position,
                    "txn_offset": span.offset,
                }
                try:
                    record = journal.decode_record_at(
                        buf[position : position + header.size],
                        position,
                        self.path,
                        position,
                        version,
                    )
                except CorruptionError as exc:
                    info = RecordInfo(header.oid, header.data_length, b"", header.size, **where)
                    info.error = exc.reason
                    info.refs_readable = False
                else:
                    info = _info(record.oid, record.data, record.refs, header.size, **where)
                yield info
                position += header.size
                if position - released >= RELEASE_EVERY_BYTES:
                    self._release_pages(released, position)
                    released = position
        self._release_pages(0, self.size)

    def current_refs(self, oid: bytes, offset: int) -> bytes:
        """Return the references of the record at ``offset`` (one :meth:`records` yielded).

        Used by verify and stats, which keep offsets rather than references
        (TOOL-008); the record's checks passed when :meth:`records` read it.
        Every ``RELEASE_EVERY_READS`` reads the mapped pages are released, so
        that a walk over the whole file does not keep all of it resident.
        """
        buf = self.buf
        header = journal.RecordHeader.unpack_from(buf, offset, self.version)
        start = offset + header.header_size + header.data_length
        refs = bytes(buf[start : start + 8 * header.ref_count])
        self._reads += 1
        if self._reads % RELEASE_EVERY_READS == 0:
            self._release_pages(0, self.size)
        return refs

    def _release_pages(self, start: int, end: int) -> None:
        """Drop the mapped pages of ``[start, end)`` from this process's memory (TOOL-008).

        The mapping is read-only and shared, so a page dropped here is read
        again from the file (or the page cache) if it is needed again: this
        changes what is resident, never what is read.  Without
        ``madvise(MADV_DONTNEED)`` (not Linux or BSD) it does nothing.
        """
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if self._map is None or advice is None:
            return
        first = start - start % mmap.PAGESIZE
        length = min(end, self.size) - first
        if length > 0:
            self._map.madvise(advice, first, length)

    def _record_headers(
        self, spans: Sequence[journal.TxnSpan]
    ) -> Iterator[tuple[int, journal.RecordHeader]]:
        """Yield ``(offset, header)`` of every record within ``spans``, releasing pages behind."""
        buf = self.buf
        released = spans[0].offset if spans else 0
        for span in spans:
            position = span.offset + journal.TXN_HEADER_SIZE
            body_end = span.end - journal.TXN_TRAILER_SIZE
            while position < body_end:
                header = journal.RecordHeader.unpack_from(buf, position, self.version)
                yield position, header
                position += header.size
            if span.end - released >= RELEASE_EVERY_BYTES:
                self._release_pages(released, span.end)
                released = span.end
        self._release_pages(0, self.size)

    def check_index(self) -> list[Issue]:
        """Compare ``PATH.index`` with the scan (TOOL-004)."""
        from dhruva.file_index import DiskIndex

        index_path = self.path + ".index"
        if not os.path.exists(index_path):
            return [
                Issue("info", "index", f"no {index_path}; it is rebuilt at the next writable open")
            ]
        if not self.file_id:
            return []
        disk = DiskIndex.open(index_path, self.file_id, readonly=True)
        if disk is None:
            return [
                Issue(
                    "warning",
                    "index",
                    f"{index_path} is unusable (another file's, another version, or a damaged "
                    "header); FileStorage ignores it and rebuilds it at the next writable open",
                )
            ]
        try:
            return self._compare_index(disk, index_path)
        finally:
            disk.close()

    def _compare_index(self, disk: Any, index_path: str) -> list[Issue]:
        covered = disk.covered_offset
        covered_spans = [span for span in self.spans if span.end <= covered]
        last = covered_spans[-1] if covered_spans else None
        if covered != journal.FILE_HEADER_SIZE and (
            last is None
            or last.end != covered
            or last.tid != disk.last_tid
            or journal.trailer_crc_before(memoryview(self.buf), covered) != disk.last_trailer_crc
        ):
            return [
                Issue(
                    "warning",
                    "index",
                    f"{index_path} covers up to offset {covered}, which does not end the valid "
                    f"transaction tid {disk.last_tid} it recorded; FileStorage ignores it and "
                    "rebuilds it (RCV-031)",
                )
            ]
        # [TOOL-008] Streamed, in a few numbers and bits per oid: the offset
        # of each oid's last record the index covers, whether it has a record
        # past the covered offset, and whether the index has an entry for it.
        expected: list[array[int]] = []
        in_tail = Bitmap()
        slots = OidSlots(present=lambda slot: expected[0][slot] >= 0 or slot in in_tail)
        expected.append(slots.column("q", -1))
        last_offsets = expected[0]
        for position, header in self._record_headers(covered_spans):
            last_offsets[slots.make(str_to_int8(header.oid))] = position
        tail_spans = [span for span in self.spans if span.end > covered]
        for _position, header in self._record_headers(tail_spans):
            in_tail.add(slots.make(str_to_int8(header.oid)))
        issues: list[Issue] = []
        seen = Bitmap(len(slots))
        for number, offset in disk.iter_entries():
            slot = slots.find(number)
            if slot is not None:
                seen.add(slot)
            if offset >= covered:
                if slot is None or slot not in in_tail:
                    issues.append(self._stale(index_path, number, offset, None))
                continue
            current = last_offsets[slot] if slot is not None else -1
            if current != offset:
                shown = current if current >= 0 else None
                issues.append(self._stale(index_path, number, offset, shown))
        for slot in slots.iter_slots():
            offset = last_offsets[slot]
            if offset >= 0 and slot not in seen:
                issues.append(
                    Issue(
                        "damage",
                        "index",
                        f"{index_path} has no entry for oid {slots.number(slot)} "
                        f"(its current record is at offset {offset}); delete the index to "
                        "rebuild it",
                    )
                )
        return issues

    @staticmethod
    def _stale(index_path: str, number: int, offset: int, current: int | None) -> Issue:
        where = "no record" if current is None else f"its current record is at offset {current}"
        return Issue(
            "damage",
            "index",
            f"{index_path}: the entry of oid {number} points at offset {offset} but {where}; "
            "delete the index to rebuild it",
        )

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self._file.close()


class SqliteSource:
    """A dhruva SQLite database read through a read-only snapshot (TOOL-005)."""

    def __init__(self, path: str) -> None:
        from dhruva.sqlite_storage import SqliteStorage

        self.path = path
        self.issues: list[Issue] = []
        self.spans: list[journal.TxnSpan] = []
        self.size = sum(
            os.path.getsize(path + suffix)
            for suffix in ("", "-wal")
            if os.path.exists(path + suffix)
        )
        self._check_integrity()
        self.storage = SqliteStorage(path, readonly=True)

    def _check_integrity(self) -> None:
        uri = "file:" + os.path.abspath(self.path) + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True)
            try:
                rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            self.issues.append(
                Issue("damage", "sqlite", f"{self.path}: integrity_check failed: {exc}")
            )
            return
        if rows != ["ok"]:
            for row in rows:
                self.issues.append(Issue("damage", "sqlite", f"{self.path}: {row}"))

    def record_count(self) -> int:
        return self.storage.get_size()

    def records(self) -> Iterator[RecordInfo]:
        for oid in sorted(self.storage.iter_oids()):
            record = self.storage.load(oid)
            yield _info(oid, record.data, record.refs, len(record.data) + len(record.refs))

    def current_refs(self, oid: bytes, offset: int) -> bytes:
        """Return the references of the current record of ``oid`` (``offset`` is unused)."""
        return bytes(self.storage.load(oid).refs)

    def check_index(self) -> list[Issue]:
        return []

    def close(self) -> None:
        self.storage.close()


Source = JournalSource | SqliteSource


def open_source(path: str) -> Source:
    """Open ``path`` read-only for verify, dump and stats; raise ToolError on failure."""
    kind = detect_kind(path)
    try:
        return JournalSource(path) if kind == KIND_FILE else SqliteSource(path)
    except DhruvaError as exc:
        raise ToolError(f"cannot read {path}: {exc}") from None
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror or exc}") from None
