"""Database tools: ``dhruva verify``, ``dump``, ``stats``, ``convert``, ``import-durus``.

Spec: ``spec/tools.md`` (requirement prefix TOOL); reading is in :mod:`dhruva.tools.dbinspect`.

Theory of operation.  The read-only tools (verify, dump, stats) read a
database through :mod:`dhruva.tools.dbinspect`, which never opens it through a
storage that could change it and never runs code a record names.  verify
collects findings (:class:`Issue`) and decides the exit status from their
severity; dump and stats stream the records once.

``convert`` and ``import-durus`` write a new database that must not exist
yet, in batches of transactions, and delete what they wrote when they fail.

The commands plug into the ``dhruva`` command with :func:`register` (an
argparse subparsers object) or :func:`register_commands` (dhruva.tools.cli's
``register_subcommand``); ``python -m dhruva.tools.dbtools`` runs them alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from dhruva.blob_store import CHUNK_BYTES, blob_directory
from dhruva.error import DhruvaError, DhruvaKeyError
from dhruva.record_class import record_class_name
from dhruva.storage import CAP_BLOBS, Storage
from dhruva.tools.dbinspect import (
    KIND_FILE,
    Issue,
    RecordInfo,
    Source,
    ToolError,
    describe_data,
    detect_kind,
    open_source,
)
from dhruva.tools.durus_import import DurusImportError, import_durus
from dhruva.tools.oid_table import Bitmap, OidSlots
from dhruva.utils import ROOT_OID, int8_to_str, iter_oids, str_to_int8

BACKENDS = ("file", "file2", "sqlite", "postgres")
#: Records per transaction written by convert.
BATCH_RECORDS = 5000
#: Problems of one kind listed in a report before the rest are only counted.
SHOWN_PER_KIND = 20

EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_ERROR = 2


# --- progress --------------------------------------------------------------------------


class Progress:
    """Progress lines on stderr, every tenth of the work (none with ``quiet``)."""

    def __init__(self, label: str, quiet: bool, stream: IO[str] | None = None) -> None:
        self.label = label
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        if self.quiet or total <= 0:
            return
        tenth = done * 10 // total
        if tenth != self._shown:
            self._shown = tenth
            print(f"{self.label}: {done}/{total} ({tenth * 10}%)", file=self.stream, flush=True)


# --- verify -------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`; ``damaged`` decides the exit status (TOOL-006)."""

    path: str
    kind: str
    size: int = 0
    transactions: int = 0
    records: int = 0
    objects: int = 0
    unreachable: int = 0
    issues: list[Issue] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return any(issue.severity == "damage" for issue in self.issues)

    def format(self) -> str:
        """Return the human-readable report."""
        lines = [f"{self.path}: {self.kind}, {self.size} bytes"]
        if self.kind == KIND_FILE:
            lines.append(f"  transactions: {self.transactions}")
        lines.append(f"  records: {self.records}, objects: {self.objects}")
        lines.append(
            f"  unreachable objects: {self.unreachable} (informational; pack removes them)"
        )
        shown: dict[str, int] = {}
        for issue in self.issues:
            key = f"{issue.severity}/{issue.kind}"
            shown[key] = shown.get(key, 0) + 1
            if shown[key] <= SHOWN_PER_KIND:
                lines.append(f"  {issue.severity.upper()}: {issue.message}")
        for key, count in shown.items():
            if count > SHOWN_PER_KIND:
                lines.append(f"  ... and {count - SHOWN_PER_KIND} more {key} findings")
        damage = sum(1 for issue in self.issues if issue.severity == "damage")
        lines.append(f"result: DAMAGED ({damage} problems)" if damage else "result: OK")
        return "\n".join(lines)


NO_RECORD = -1
"""The offset column's value for a slot without a current record."""
UNREADABLE_REFS = -2
"""The offset column's value for a current record whose bytes failed their checks."""


class _CurrentTable:
    """The current record of every oid, kept in a few numbers per object (TOOL-008).

    ``verify`` and ``stats`` need, per object, its current record's size,
    class and references.  The table keeps three columns of an
    :class:`OidSlots` table: where the current record is (its offset in a
    data file, 0 for a SQLite database whose records are found by oid; or
    ``NO_RECORD``, or ``UNREADABLE_REFS`` for a record whose bytes failed
    their checks), its size, and an index into the list of class names --
    20 bytes an object.  References are not kept: :meth:`refs` reads them
    again from the source when the dangling check and the reachability walk
    need them, so memory does not follow the number of references or the
    size of the file.
    """

    def __init__(self, source: Source | None = None) -> None:
        self._source = source
        self._slots = OidSlots(present=self._present)
        self._offsets = self._slots.column("q", NO_RECORD)
        self.sizes = self._slots.column("q", -1)
        self._class_of = self._slots.column("i", 0)
        self._count = 0
        self.class_names: list[str] = []
        self._class_index: dict[str, int] = {}
        self._refs_of: dict[int, bytes] = {}  # only without a source (tests)

    def _present(self, slot: int) -> bool:
        return self._offsets[slot] != NO_RECORD

    def _find(self, number: int) -> int | None:
        slot = self._slots.find(number)
        return slot if slot is not None and self._offsets[slot] != NO_RECORD else None

    def add(self, info: RecordInfo) -> None:
        name = info.class_name or "<undecodable>"
        index = self._class_index.get(name)
        if index is None:
            index = self._class_index[name] = len(self.class_names)
            self.class_names.append(name)
        slot = self._slots.make(str_to_int8(info.oid))
        if self._offsets[slot] == NO_RECORD:
            self._count += 1
        if info.refs_readable:
            self._offsets[slot] = info.offset if info.offset is not None else 0
        else:
            self._offsets[slot] = UNREADABLE_REFS
        self.sizes[slot] = info.size
        self._class_of[slot] = index
        if self._source is None:
            self._refs_of[slot] = info.refs

    def __len__(self) -> int:
        return self._count

    def __contains__(self, oid: bytes) -> bool:
        return self._find(str_to_int8(oid)) is not None

    def slots(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(slot, oid)`` of every present object."""
        number = self._slots.number
        for slot in self._slots.iter_slots():
            yield slot, int8_to_str(number(slot))

    def class_name(self, slot: int) -> str:
        return self.class_names[self._class_of[slot]]

    def refs(self, slot: int) -> Iterator[bytes]:
        """The references of the slot's current record, read again from the source."""
        offset = self._offsets[slot]
        if offset == UNREADABLE_REFS:
            return iter(())
        if self._source is None:
            return iter_oids(self._refs_of.get(slot, b""))
        oid = int8_to_str(self._slots.number(slot))
        return iter_oids(self._source.current_refs(oid, offset))

    def reachable(self) -> Bitmap:
        """Return the slots reachable from the root through current records.

        The walk keeps one bit per slot and a stack of slot numbers; each
        slot is pushed at most once (it is marked when pushed).
        """
        seen = Bitmap(len(self._slots))
        root = self._find(0)
        if root is None:
            return seen
        seen.add(root)
        todo = array("q", [root])
        while todo:
            slot = todo.pop()
            for ref in self.refs(slot):
                target = self._find(str_to_int8(ref))
                if target is not None and target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen


def _current_records(
    source: Source, on_record: Callable[[RecordInfo], None] | None = None
) -> _CurrentTable:
    current = _CurrentTable(source)
    for info in source.records():
        if on_record is not None:
            on_record(info)
        current.add(info)
    return current


def verify(path: str, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check a database read-only and return the findings (TOOL-001 .. TOOL-006)."""
    if is_postgres_dsn(path):
        return _verify_postgres(path)
    source = open_source(path)
    try:
        report = VerifyReport(path, detect_kind(path), size=source.size)
        report.issues.extend(source.issues)
        report.transactions = len(source.spans)
        total = source.record_count()

        def check(info: RecordInfo) -> None:
            report.records += 1
            if info.error is not None:
                where = "" if info.offset is None else f" at offset {info.offset}"
                tid = "" if info.tid is None else f" (tid {info.tid})"
                report.issues.append(
                    Issue(
                        "damage",
                        "record",
                        f"the record of oid {str_to_int8(info.oid)}{where}{tid}: {info.error}",
                    )
                )
            if progress is not None:
                progress(report.records, total)

        current = _current_records(source, check)
        report.objects = len(current)
        for slot, oid in current.slots():
            for ref in current.refs(slot):
                if ref not in current:
                    # [TOOL-005] A reference to an oid without a record.
                    report.issues.append(
                        Issue(
                            "damage",
                            "dangling",
                            f"oid {str_to_int8(oid)} ({current.class_name(slot)}) references "
                            f"oid {str_to_int8(ref)}, which has no record",
                        )
                    )
        if current and ROOT_OID not in current:
            report.issues.append(
                Issue("damage", "root", "the database has objects but no root (oid 0)")
            )
        report.unreachable = len(current) - current.reachable().count()
        report.issues.extend(source.check_index())
        return report
    finally:
        source.close()


# --- dump and stats ------------------------------------------------------------------------


def dump(path: str, out: IO[str], as_json: bool = False) -> list[Issue]:
    """Write every transaction and record of ``path`` to ``out`` (TOOL-020, TOOL-021)."""
    source = open_source(path)
    try:
        last_tid: int | None = -1
        for info in source.records():
            if as_json:
                out.write(json.dumps(info.as_json(), sort_keys=True) + "\n")
                continue
            if info.tid != last_tid:
                last_tid = info.tid
                if info.tid is not None:
                    row = info.as_json()
                    out.write(
                        f"transaction tid={info.tid} time={row['time']} offset={info.txn_offset}\n"
                    )
            refs = ", ".join(str(str_to_int8(ref)) for ref in iter_oids(info.refs))
            where = "" if info.offset is None else f" @{info.offset}"
            what = info.class_name or f"<{info.error}>"
            out.write(
                f"  oid {str_to_int8(info.oid)}{where} {what} ({info.serializer}), "
                f"{info.data_size} bytes, refs [{refs}]\n"
            )
        return source.issues
    finally:
        source.close()


@dataclass
class Stats:
    """The figures of ``dhruva stats`` (TOOL-022)."""

    path: str
    kind: str
    file_bytes: int = 0
    transactions: int = 0
    records: int = 0
    objects: int = 0
    reachable: int = 0
    live_bytes: int = 0
    superseded_bytes: int = 0
    unreachable_bytes: int = 0
    census: dict[str, list[int]] = field(default_factory=dict)

    @property
    def garbage_bytes(self) -> int:
        return self.superseded_bytes + self.unreachable_bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "file_bytes": self.file_bytes,
            "transactions": self.transactions,
            "records": self.records,
            "objects": self.objects,
            "reachable": self.reachable,
            "live_bytes": self.live_bytes,
            "superseded_bytes": self.superseded_bytes,
            "unreachable_bytes": self.unreachable_bytes,
            "garbage_bytes": self.garbage_bytes,
            "census": {name: {"count": c, "bytes": b} for name, (c, b) in self.census.items()},
        }

    def format(self) -> str:
        share = 100 * self.garbage_bytes / self.file_bytes if self.file_bytes else 0.0
        lines = [
            f"{self.path}: {self.kind}, {self.file_bytes} bytes",
            f"  transactions: {self.transactions}" if self.kind == KIND_FILE else "",
            f"  records: {self.records}, objects: {self.objects} "
            f"(reachable {self.reachable}, unreachable {self.objects - self.reachable})",
            f"  live bytes: {self.live_bytes}",
            f"  garbage estimate: {self.garbage_bytes} bytes ({share:.1f}% of the file): "
            f"superseded {self.superseded_bytes}, unreachable {self.unreachable_bytes}",
            f"  {'class':<50} {'count':>8} {'bytes':>12}",
        ]
        for name, (count, size) in sorted(self.census.items(), key=lambda item: -item[1][1]):
            lines.append(f"  {name:<50} {count:>8} {size:>12}")
        return "\n".join(line for line in lines if line)


def stats(path: str) -> Stats:
    """Count objects by class and estimate garbage (TOOL-022)."""
    if is_postgres_dsn(path):
        return _stats_postgres(path)
    source = open_source(path)
    try:
        result = Stats(path, detect_kind(path), file_bytes=source.size)
        result.transactions = len(source.spans)
        total_record_bytes = 0

        def count(info: RecordInfo) -> None:
            nonlocal total_record_bytes
            result.records += 1
            total_record_bytes += info.size

        current = _current_records(source, count)
        reachable = current.reachable()
        result.objects = len(current)
        result.reachable = reachable.count()
        current_bytes = 0
        for slot, _oid in current.slots():
            size = current.sizes[slot]
            current_bytes += size
            if slot in reachable:
                result.live_bytes += size
            else:
                result.unreachable_bytes += size
            entry = result.census.setdefault(current.class_name(slot), [0, 0])
            entry[0] += 1
            entry[1] += size
        result.superseded_bytes = total_record_bytes - current_bytes
        return result
    finally:
        source.close()


# --- convert and import ---------------------------------------------------------------------


def _new_storage(path: str, backend: str) -> Storage:
    """Create a new, empty database of ``backend`` at ``path`` (TOOL-040)."""
    if backend == "postgres":
        return _new_postgres(path)
    if os.path.exists(path):
        raise ToolError(f"{path} already exists; convert writes a new database only")
    if backend == "file":
        from dhruva.file_storage import FileStorage

        return FileStorage(path)
    if backend == "file2":
        from dhruva.file_storage2 import FileStorage2

        return FileStorage2(path)
    if backend == "sqlite":
        from dhruva.sqlite_storage import SqliteStorage

        return SqliteStorage(path)
    raise ToolError(f"unknown back-end {backend!r}; choose one of {', '.join(BACKENDS)}")


def _discard(path: str) -> None:
    for suffix in ("", ".index", ".index.tmp", ".lock", "-wal", "-shm", "-journal"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
    shutil.rmtree(blob_directory(path), ignore_errors=True)


def _discard_target(target: Storage, target_path: str) -> None:
    """Delete what a failed convert wrote of its new database (TOOL-040)."""
    from dhruva.postgres_storage import PostgresStorage

    if isinstance(target, PostgresStorage):
        try:
            target.drop_tables()
        except DhruvaError:
            target.close()
        return
    target.close()
    _discard(target_path)


def is_postgres_dsn(path: str) -> bool:
    """True when ``path`` is a PostgreSQL URI (``postgresql://...``) rather than a file."""
    return path.startswith(("postgresql://", "postgres://"))


def _verify_postgres(dsn: str) -> VerifyReport:
    """``dhruva verify postgresql://...``: the checks run inside PostgreSQL (PG-072)."""
    from dhruva.postgres_storage import PostgresStorage

    try:
        storage = PostgresStorage(dsn, readonly=True)
    except DhruvaError as exc:
        raise ToolError(f"cannot open the PostgreSQL database: {exc}") from None
    try:
        found = storage.check()
    finally:
        storage.close()
    report = VerifyReport(repr(storage), "postgres", size=found.table_bytes)
    report.records = report.objects = found.objects
    report.unreachable = found.objects - found.reachable
    if found.bad_refs:
        report.issues.append(
            Issue("damage", "record", f"{found.bad_refs} records have a malformed reference list")
        )
    for oid, ref in found.dangling:
        report.issues.append(
            Issue(
                "damage",
                "dangling",
                f"oid {str_to_int8(oid)} references oid {str_to_int8(ref)}, which has no record",
            )
        )
    if found.objects and not found.has_root:
        report.issues.append(
            Issue("damage", "root", "the database has objects but no root (oid 0)")
        )
    return report


def _stats_postgres(dsn: str) -> Stats:
    """``dhruva stats postgresql://...``: sizes in SQL, the class census streamed (PG-073)."""
    from dhruva.postgres_storage import PostgresStorage

    try:
        storage = PostgresStorage(dsn, readonly=True)
    except DhruvaError as exc:
        raise ToolError(f"cannot open the PostgreSQL database: {exc}") from None
    try:
        found = storage.check(limit=0)
        result = Stats(repr(storage), "postgres", file_bytes=found.table_bytes)
        result.records = result.objects = found.objects
        result.reachable = found.reachable
        result.live_bytes = found.reachable_bytes
        result.unreachable_bytes = found.record_bytes - found.reachable_bytes
        for record in storage.iter_records():
            try:
                name = describe_data(record.data)[1]
            except ValueError:
                name = "<undecodable>"
            entry = result.census.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += len(record.data) + len(record.refs)
        return result
    finally:
        storage.close()


def _new_postgres(dsn: str) -> Storage:
    """Open the PostgreSQL database ``dsn`` as a convert target; refuse one with objects."""
    from dhruva.postgres_storage import PostgresStorage

    try:
        storage = PostgresStorage(dsn)
    except DhruvaError as exc:
        raise ToolError(f"cannot open the PostgreSQL target: {exc}") from None
    if storage.get_size():
        storage.close()
        raise ToolError(
            "the PostgreSQL target already holds objects; convert writes a new database only"
        )
    return storage


def _open_for_reading(path: str) -> Storage:
    if is_postgres_dsn(path):
        from dhruva.postgres_storage import PostgresStorage

        try:
            return PostgresStorage(path, readonly=True)
        except DhruvaError as exc:
            raise ToolError(f"cannot open the PostgreSQL source: {exc}") from None
    kind = detect_kind(path)
    try:
        if kind == KIND_FILE:
            from dhruva.file_storage import FileStorage

            return FileStorage(path, readonly=True)
        from dhruva.sqlite_storage import SqliteStorage

        return SqliteStorage(path, readonly=True)
    except DhruvaError as exc:
        raise ToolError(f"cannot open {path}: {exc}") from None


def _write_batches(
    target: Storage,
    records: Iterator[tuple[bytes, bytes, bytes]],
    total: int,
    progress: Callable[[int, int], None] | None,
    blob_source: Storage | None = None,
) -> int:
    done = 0
    batch: list[tuple[bytes, bytes, bytes]] = []
    for record in records:
        batch.append(record)
        done += 1
        if len(batch) >= BATCH_RECORDS:
            _commit(target, batch, blob_source)
            batch = []
        if progress is not None:
            progress(done, total)
    _commit(target, batch, blob_source)
    return done


BLOB_CLASS = "dhruva.blob.Blob"


def _is_blob(data: bytes) -> bool:
    """Whether a record is a Blob's (its class read from the bytes, nothing unpickled)."""
    try:
        return record_class_name(data) == BLOB_CLASS
    except ValueError:
        return False


def _commit(
    target: Storage, batch: list[tuple[bytes, bytes, bytes]], blob_source: Storage | None
) -> None:
    if batch:
        target.begin()
        try:
            for oid, data, refs in batch:
                target.store(oid, data, refs)
                if blob_source is not None and _is_blob(data):
                    _copy_blob(blob_source, target, oid)
            target.end()
        except BaseException:
            target.abort_transaction()
            raise


def _copy_blob(source: Storage, target: Storage, oid: bytes) -> None:
    """Stream ``oid``'s blob from ``source`` into the open transaction of ``target`` (TOOL-047)."""
    try:
        blob = source.open_blob(oid)
    except DhruvaKeyError:
        return  # a Blob committed without content has no blob to copy
    if CAP_BLOBS not in target.capabilities:
        blob.close()
        raise DhruvaError(
            f"the source holds blobs (oid {str_to_int8(oid)} is one) and the new "
            f"{type(target).__name__} does not store blobs; convert to a file back-end"
        )
    with blob:
        target.store_blob(oid, blob)


def _same_blob(source: Storage, target: Storage, oid: bytes) -> bool:
    """Whether both storages hold the same blob for ``oid`` (compared in chunks)."""
    try:
        left = source.open_blob(oid)
    except DhruvaKeyError:
        try:
            target.open_blob(oid).close()
        except DhruvaKeyError:
            return True
        return False
    with left, target.open_blob(oid) as right:
        while True:
            chunk = left.read(CHUNK_BYTES)
            if chunk != right.read(CHUNK_BYTES):
                return False
            if not chunk:
                return True


def convert(
    source_path: str,
    target_path: str,
    backend: str = "file",
    serializer: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Copy every current record of ``source_path`` into a new database; return the count.

    Without ``serializer`` the records are copied byte for byte and nothing
    is unpickled (TOOL-041); with it every object is loaded through a
    Connection and written again by that serializer (TOOL-042).  Oids are
    kept.  On failure the new database is deleted.
    """
    from dhruva.connection import Connection
    from dhruva.serialize import ObjectWriter, get_serializer

    source = _open_for_reading(source_path)
    try:
        target = _new_storage(target_path, backend)
    except BaseException:
        source.close()
        raise
    try:
        oids = sorted(source.iter_oids())
        if serializer is None:
            records: Iterator[tuple[bytes, bytes, bytes]] = (
                (oid, *source.load(oid)[1:]) for oid in oids
            )
        else:
            chosen = get_serializer(serializer)
            connection = Connection(source, cache_size=1000)

            def reencode() -> Iterator[tuple[bytes, bytes, bytes]]:
                for count, oid in enumerate(oids, 1):
                    writer = ObjectWriter(connection, chosen)
                    data, refs = writer.get_state(connection[oid])
                    yield oid, data, refs
                    if count % 1000 == 0:
                        connection.shrink_cache()

            records = reencode()
        blob_source = source if CAP_BLOBS in source.capabilities else None
        count = _write_batches(target, records, len(oids), progress, blob_source)
        _check_copy(source, target, oids, same_bytes=serializer is None)
        return count
    except BaseException:
        _discard_target(target, target_path)
        raise
    finally:
        source.close()
        try:
            target.close()
        except DhruvaError:
            pass


def _check_copy(source: Storage, target: Storage, oids: list[bytes], same_bytes: bool) -> None:
    """Compare every record of ``target`` with ``source`` after a convert (TOOL-046).

    A byte-for-byte copy must hold the same data and references for every
    oid; a re-encoded one the same oids with the same references (the data
    differs by design).  Raises DhruvaError naming the first oid that differs;
    the caller then discards the new database.
    """
    if target.get_size() != len(oids):
        raise DhruvaError(
            f"the new database holds {target.get_size()} objects, not the {len(oids)} copied"
        )
    blobs = CAP_BLOBS in source.capabilities
    for oid in oids:
        expected = source.load(oid)
        copied = target.load(oid)
        if (
            copied.refs != expected.refs
            or (same_bytes and copied.data != expected.data)
            or (blobs and _is_blob(expected.data) and not _same_blob(source, target, oid))
        ):
            raise DhruvaError(
                f"the copy of oid {str_to_int8(oid)} differs from the source; nothing was kept"
            )


def import_durus_file(
    old_path: str,
    new_path: str,
    backend: str = "file",
    class_map: Mapping[str, str | type] | None = None,
    serializer: str = "pickle",
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Import a Durus database into a new dhruva database (TOOL-030); see durus_import."""
    target = _new_storage(new_path, backend)
    try:
        result = import_durus(
            old_path, target, class_map=class_map, serializer=serializer, progress=progress
        )
    except BaseException:
        target.close()
        _discard(new_path)
        raise
    target.close()
    return result


# --- the command line ---------------------------------------------------------------------------


def _quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="print no progress on stderr")


def _path_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the database file (data file or SQLite)")


def _configure_verify(parser: argparse.ArgumentParser) -> None:
    _path_argument(parser)
    _quiet_option(parser)


def _configure_dump(parser: argparse.ArgumentParser) -> None:
    _path_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per record")


def _configure_stats(parser: argparse.ArgumentParser) -> None:
    _path_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def _configure_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="the database to read (left unchanged)")
    parser.add_argument("target", metavar="DEST", help="the new database to write (must not exist)")
    parser.add_argument(
        "--to", choices=BACKENDS, default="file", help="back-end of DEST (default file)"
    )
    parser.add_argument(
        "--serializer",
        metavar="NAME",
        default=None,
        help="re-encode every object with this serializer (pickle, msgspec, dill); "
        "default: copy records unchanged",
    )
    _quiet_option(parser)


def _configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD", help="the Durus 4.x file (SHELF-1 or DFS20)")
    parser.add_argument("new", metavar="NEW", help="the new dhruva database (must not exist)")
    parser.add_argument(
        "--map",
        metavar="OLD=NEW",
        action="append",
        default=[],
        help="use class NEW (module.Class) for the Durus records of class OLD; "
        "a bare module maps all its classes; repeat as needed",
    )
    parser.add_argument(
        "--to", choices=BACKENDS, default="file", help="back-end of NEW (default file)"
    )
    parser.add_argument("--serializer", metavar="NAME", default="pickle", help="default pickle")
    _quiet_option(parser)


def _run_verify(args: argparse.Namespace) -> int:
    report = verify(args.path, Progress("verify", args.quiet))
    print(report.format())
    return EXIT_DAMAGED if report.damaged else EXIT_OK


def _run_dump(args: argparse.Namespace) -> int:
    for issue in dump(args.path, sys.stdout, as_json=args.json):
        print(f"dhruva: {issue.severity}: {issue.message}", file=sys.stderr)
    return EXIT_OK


def _run_stats(args: argparse.Namespace) -> int:
    result = stats(args.path)
    print(json.dumps(result.as_json(), sort_keys=True) if args.json else result.format())
    return EXIT_OK


def _run_convert(args: argparse.Namespace) -> int:
    count = convert(
        args.source, args.target, args.to, args.serializer, Progress("convert", args.quiet)
    )
    if not args.quiet:
        print(f"convert: wrote {count} objects to {args.target}", file=sys.stderr)
    return EXIT_OK


def _run_import(args: argparse.Namespace) -> int:
    class_map: dict[str, str] = {}
    for item in args.map:
        old, equals, new = item.partition("=")
        if not equals or not old or not new:
            raise ToolError(f"--map {item!r}: write it as old.module.Class=new.module.Class")
        class_map[old.strip()] = new.strip()
    result = import_durus_file(
        args.old, args.new, args.to, class_map, args.serializer, Progress("import", args.quiet)
    )
    for warning in result.warnings:
        print(f"dhruva: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(
            f"import-durus: {result.objects} objects from {result.transactions_read} "
            f"{result.format} transactions written to {args.new}",
            file=sys.stderr,
        )
    return EXIT_OK


def _guarded(
    run: Callable[[argparse.Namespace], int], error_status: int
) -> Callable[[argparse.Namespace], int]:
    """Turn the errors a user can cause into one line on stderr and ``error_status`` (TOOL-007)."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except DurusImportError as exc:
            print(f"dhruva: import-durus failed: {exc}", file=sys.stderr)
        except (DhruvaError, ValueError) as exc:
            print(f"dhruva: {exc}", file=sys.stderr)
        except BrokenPipeError:
            # The reader of the output went away (``dhruva dump | head``).
            raise
        except OSError as exc:
            name = f"{exc.filename}: " if exc.filename else ""
            print(f"dhruva: {name}{exc.strerror or exc}", file=sys.stderr)
        return error_status

    return guarded


#: ``(name, help, configure, run)`` of every tool command.
Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
COMMANDS: list[tuple[str, str, Configure, Run]] = [
    ("verify", "check a database's records, checksums, index and references (read-only)",
     _configure_verify, _guarded(_run_verify, EXIT_ERROR)),
    ("dump", "print a database's transactions and records (read-only)",
     _configure_dump, _guarded(_run_dump, 1)),
    ("stats", "object census by class, sizes and garbage estimate (read-only)",
     _configure_stats, _guarded(_run_stats, 1)),
    ("convert", "copy a database into a new one of any back-end and serializer",
     _configure_convert, _guarded(_run_convert, 1)),
    ("import-durus", "convert a Durus 4.x database (SHELF-1 or DFS20) into a new dhruva database",
     _configure_import, _guarded(_run_import, 1)),
]  # fmt: skip


def register(subparsers: Any) -> None:
    """Add the tool commands to an argparse ``add_subparsers()`` object."""
    for name, help_text, configure, run in COMMANDS:
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        configure(parser)
        parser.set_defaults(run=run)


def register_commands(
    register_subcommand: Callable[
        [str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]],
        None,
    ],
) -> None:
    """Register the tool commands through ``dhruva.tools.cli.register_subcommand``."""
    for name, help_text, configure, run in COMMANDS:
        register_subcommand(name, help_text, configure, run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one tool command (``python -m dhruva.tools.dbtools verify PATH``); return the status."""
    parser = argparse.ArgumentParser(prog="dhruva", description="dhruva database tools")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
