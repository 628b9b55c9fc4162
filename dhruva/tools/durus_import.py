"""Reading Durus 4.x databases and importing them into dhruva.

Spec: ``spec/tools.md``, "Importing a Durus database" (TOOL-030 .. TOOL-039).

Theory of operation.  Durus 4.3 writes one of two file formats, and Durus
itself is never imported here: both are read from their layout.

* ``SHELF-1`` (``durus.file_storage.FileStorage``, the default since Durus
  3.8): the prefix ``b"SHELF-1\\n"``, an *initial transaction*, an *offset
  map* (an array of record offsets by oid, used by Durus only to find
  records quickly), then more transactions.  A transaction is a u64 byte
  count and that many bytes of records; a record is a u64 byte count, the
  8-byte oid, and the *Durus record* (below).
* ``DFS20`` (``durus.file_storage2.FileStorage2``): the prefix
  ``b"DFS20\\0"`` and a u64 offset of the *index record* (a u64 length and
  a zlib-compressed pickle of a dict, written where the writer was when it
  created or packed the file), with transactions before and after it.  A
  transaction is records, each a u32 byte count and the Durus record,
  ended by a u32 zero.

A Durus record is the oid, a u32 data length, the data, and the packed oids
of the objects it references.  The data is a pickle of the object's class
followed by a pickle of its state, written by one pickler with protocol 2,
the state pickle usually zlib-compressed.  Persistent references are
persistent ids ``(oid, class)``.

The current record of an oid is its last record in file order, in both
formats.  Reading stops at the first bytes that do not parse as a complete
transaction; like a dhruva read-only open, the importer reports them and
imports what precedes them (TOOL-033).

Importing unpickles each current record with a ``find_class`` hook that
maps Durus's classes to dhruva's (:data:`DURUS_CLASS_MAP`, plus the user's
``--map``), turns each persistent id into a placeholder of the mapped class
that keeps the oid, and encodes class and state again with a dhruva
serializer.  Every name that cannot be resolved is collected, so that one
run reports all of them (TOOL-036).  Unpickling runs the code a pickle
names: import only databases you trust, as you would open them with Durus.
"""

from __future__ import annotations

import importlib
import io
import pickle
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dhruva.error import DhruvaError, FormatError
from dhruva.persistent import GHOST, Persistent, PersistentBase
from dhruva.record_class import pickle_class_name as pickle_class_name
from dhruva.serialize import Serializer, get_serializer
from dhruva.storage import Storage

SHELF_MAGIC = b"SHELF-1\n"
DFS20_MAGIC = b"DFS20\x00"
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
assert _U64.size == 8 and _U32.size == 4
_RECORD_HEAD = 12  # oid (8) and data length (4) of a Durus record
#: The first byte of a zlib stream at the default level, which Durus tests for.
_ZLIB_START = 0x78

#: Records per dhruva transaction written by the importer.
BATCH_RECORDS = 5000
#: Bytes of record data after which a batch is committed early.
BATCH_BYTES = 16 << 20

#: Durus 4.3 class -> dhruva class, by dotted name (TOOL-034).
DURUS_CLASS_MAP: dict[str, str] = {
    "durus.persistent.Persistent": "dhruva.persistent.Persistent",
    "durus.persistent.PersistentObject": "dhruva.persistent.PersistentObject",
    "durus.persistent_dict.PersistentDict": "dhruva.persistent_dict.PersistentDict",
    "durus.persistent_list.PersistentList": "dhruva.persistent_list.PersistentList",
    "durus.persistent_set.PersistentSet": "dhruva.persistent_set.PersistentSet",
    **{
        f"durus.btree.{name}": f"dhruva.btree.{name}"
        for name in (
            "BTree", "BNode", "BNode2", "BNode4", "BNode8", "BNode16",
            "BNode32", "BNode64", "BNode128", "BNode256", "BNode512",
        )
    },
}  # fmt: skip


class DurusImportError(DhruvaError):
    """The import cannot be completed; ``missing`` lists unresolvable class names."""

    def __init__(self, message: str, missing: Iterable[str] = (), failures: Iterable[str] = ()):
        self.missing = sorted(set(missing))
        self.failures = list(failures)
        super().__init__(message)


# --- reading the two file formats (sans-IO) --------------------------------------------


class DurusRecord(NamedTuple):
    """One Durus record: its oid, class+state data, packed refs, and file offset."""

    oid: bytes
    data: bytes
    refs: bytes
    offset: int


class DurusFile(NamedTuple):
    """What :func:`read_durus` found: the format, transactions, and any unreadable tail.

    ``transactions`` lists ``(offset, records)`` in file order.  ``tail`` is
    the offset of the first bytes that are not a complete transaction (None
    when the whole file parsed) and ``tail_reason`` says why.
    """

    format: str
    transactions: list[tuple[int, list[DurusRecord]]]
    tail: int | None
    tail_reason: str | None

    def current_records(self) -> dict[bytes, DurusRecord]:
        """Return the last record of every oid, in file order (TOOL-032)."""
        current: dict[bytes, DurusRecord] = {}
        for _offset, records in self.transactions:
            for record in records:
                current[record.oid] = record
        return current


class _Short(Exception):
    """Internal: the bytes end or contradict themselves inside a transaction."""


def detect_durus_format(head: bytes) -> str | None:
    """Return ``"SHELF-1"`` or ``"DFS20"`` for a file starting with ``head``, else None."""
    if head.startswith(SHELF_MAGIC):
        return "SHELF-1"
    if head.startswith(DFS20_MAGIC):
        return "DFS20"
    return None


def split_durus_record(value: bytes, offset: int) -> DurusRecord:
    """Split a Durus record (``durus.serialize.pack_record``) into its parts."""
    if len(value) < _RECORD_HEAD:
        raise _Short(f"record at {offset} is {len(value)} bytes, shorter than 12")
    (data_length,) = _U32.unpack_from(value, 8)
    data_end = _RECORD_HEAD + data_length
    if data_end > len(value) or (len(value) - data_end) % 8:
        raise _Short(f"record at {offset}: data length {data_length} does not fit the record")
    return DurusRecord(value[:8], value[_RECORD_HEAD:data_end], value[data_end:], offset)


def _u64(buf: bytes, pos: int) -> int:
    if pos + 8 > len(buf):
        raise _Short(f"the file ends inside the 8-byte count at {pos}")
    return int(_U64.unpack_from(buf, pos)[0])


def _shelf_transaction(buf: bytes, pos: int) -> tuple[int, list[DurusRecord]]:
    """Parse the SHELF-1 transaction at ``pos``; return its end and records."""
    end = pos + 8 + _u64(buf, pos)
    if end > len(buf):
        raise _Short(f"transaction at {pos} runs past the end of the file")
    records = []
    p = pos + 8
    while p < end:
        length = _u64(buf, p)
        if p + 8 + length > end or length < 8:
            raise _Short(f"record at {p} runs past its transaction")
        name = buf[p + 8 : p + 16]
        record = split_durus_record(buf[p + 16 : p + 8 + length], p)
        if record.oid != name:
            raise _Short(f"record at {p} names oid {name.hex()} but holds {record.oid.hex()}")
        records.append(record)
        p += 8 + length
    return end, records


def read_shelf(buf: bytes) -> DurusFile:
    """Parse a whole ``SHELF-1`` file held in ``buf`` (TOOL-030)."""
    transactions: list[tuple[int, list[DurusRecord]]] = []
    pos = len(SHELF_MAGIC)
    try:
        end, records = _shelf_transaction(buf, pos)
        transactions.append((pos, records))
        # The offset map: a u64 byte count (16 + word size * words), the word
        # size, the word count, then the words.  Only Durus's lookups use it.
        size = _u64(buf, end)
        word_bytes, words = _u64(buf, end + 8), _u64(buf, end + 16)
        if size != 16 + word_bytes * words or end + 8 + size > len(buf):
            raise _Short(f"the offset map at {end} is malformed")
        pos = end + 8 + size
    except _Short as exc:
        raise FormatError("<durus>", pos, f"not a readable SHELF-1 file: {exc}") from None
    while pos < len(buf):
        try:
            end, records = _shelf_transaction(buf, pos)
        except _Short as exc:
            return DurusFile("SHELF-1", transactions, pos, str(exc))
        transactions.append((pos, records))
        pos = end
    return DurusFile("SHELF-1", transactions, None, None)


def _dfs20_transaction(buf: bytes, pos: int) -> tuple[int, list[DurusRecord]]:
    records: list[DurusRecord] = []
    while True:
        if pos + 4 > len(buf):
            raise _Short(f"the file ends inside the record count at {pos}")
        (length,) = _U32.unpack_from(buf, pos)
        if length == 0:
            return pos + 4, records
        if pos + 4 + length > len(buf):
            raise _Short(f"record at {pos} runs past the end of the file")
        records.append(split_durus_record(buf[pos + 4 : pos + 4 + length], pos))
        pos += 4 + length


def read_dfs20(buf: bytes) -> DurusFile:
    """Parse a whole ``DFS20`` file held in ``buf`` (TOOL-031)."""
    header = len(DFS20_MAGIC) + 8
    if len(buf) < header:
        raise FormatError("<durus>", 0, "not a readable DFS20 file: the header is truncated")
    index_offset = _u64(buf, len(DFS20_MAGIC))
    transactions: list[tuple[int, list[DurusRecord]]] = []
    pos = header
    while pos < len(buf):
        start = pos
        try:
            if pos == index_offset:
                # The index record: Durus's offsets of the records before it.
                pos += 8 + _u64(buf, pos)
                if pos > len(buf):
                    raise _Short(f"the index record at {index_offset} is truncated")
                continue
            pos, records = _dfs20_transaction(buf, pos)
        except _Short as exc:
            return DurusFile("DFS20", transactions, start, str(exc))
        transactions.append((start, records))
    if index_offset > pos:
        raise FormatError("<durus>", 8, f"DFS20 index offset {index_offset} is past the data")
    return DurusFile("DFS20", transactions, None, None)


def read_durus(path: str) -> DurusFile:
    """Read the Durus file at ``path`` (read-only); FormatError if it is not one."""
    with open(path, "rb") as file:
        buf = file.read()
    kind = detect_durus_format(buf[:8])
    try:
        if kind == "SHELF-1":
            return read_shelf(buf)
        if kind == "DFS20":
            return read_dfs20(buf)
    except FormatError as exc:
        raise FormatError(path, exc.offset, exc.reason) from None
    raise FormatError(path, 0, f"not a Durus file (starts with {buf[:8]!r}, not SHELF-1 or DFS20)")


def durus_class_name(data: bytes) -> str:
    """Return the dotted class name a Durus record's data starts with (no code runs)."""
    return pickle_class_name(data)[0]


# --- class mapping and decoding ----------------------------------------------------------


class _Unresolved(Persistent):
    """Stands in for a class that could not be found, so that decoding goes on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def _import_dotted(name: str) -> Any:
    """Import ``module.Qual.Name`` or ``module:Qual.Name``; raise LookupError."""
    if ":" in name:
        module_name, _, qualname = name.partition(":")
        candidates = [(module_name, qualname)]
    else:
        parts = name.split(".")
        candidates = [
            (".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)
        ]
    for module_name, qualname in candidates:
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise LookupError(name)


class ClassMapper:
    """Resolves the globals a Durus pickle names, applying the class map (TOOL-034).

    ``class_map`` maps old dotted names (``module.Class``, or a bare module
    name to move every class of a module) to new dotted names or to class
    objects; it is consulted before :data:`DURUS_CLASS_MAP`.  Names that
    cannot be resolved are collected in ``missing`` and decode to a
    placeholder, so that every missing name is found in one pass.
    """

    def __init__(self, class_map: Mapping[str, str | type] | None = None) -> None:
        self.class_map: dict[str, str | type] = dict(DURUS_CLASS_MAP)
        self.class_map.update(class_map or {})
        self.missing: set[str] = set()
        self.not_persistent: set[str] = set()
        self._cache: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        """The unpickler's ``find_class``: the mapped global, or a placeholder."""
        key = (module, name)
        try:
            return self._cache[key]
        except KeyError:
            pass
        dotted = f"{module}.{name}"
        target = self.class_map.get(dotted)
        if target is None and module in self.class_map:
            moved = self.class_map[module]
            target = f"{moved}.{name}" if isinstance(moved, str) else None
        try:
            if isinstance(target, type):
                found: Any = target
            elif target is not None:
                found = _import_dotted(target)
            elif module == "durus" or module.startswith("durus."):
                # [TOOL-035] Durus's own classes are never imported from Durus.
                raise LookupError(dotted)
            else:
                found = pickle.Unpickler(io.BytesIO()).find_class(module, name)
        except (LookupError, ImportError, AttributeError):
            self.missing.add(dotted)
            found = _Unresolved
        self._cache[key] = found
        return found

    def persistent_class(self, cls: Any, what: str) -> type[PersistentBase]:
        """Return ``cls`` if it is a dhruva persistent class; else note it and use a placeholder."""
        if isinstance(cls, type) and issubclass(cls, PersistentBase):
            return cls
        name = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)!s}"
        self.not_persistent.add(f"{name} ({what})")
        return _Unresolved


class _DurusUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, mapper: ClassMapper, ghost: Callable[[bytes, Any], Any]):
        # latin1 turns Python 2 str oids and byte strings into str losslessly.
        super().__init__(file, encoding="latin1")
        self._mapper = mapper
        self._ghost = ghost

    def find_class(self, module: str, name: str) -> Any:
        return self._mapper.find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 2):
            raise pickle.UnpicklingError(f"malformed Durus persistent id {pid!r:.60}")
        oid, cls = pid
        if isinstance(oid, str):
            oid = oid.encode("latin1")
        if not (isinstance(oid, bytes) and len(oid) == 8):
            raise pickle.UnpicklingError(f"malformed Durus persistent id {pid!r:.60}")
        return self._ghost(oid, cls)


def decode_durus_data(
    data: bytes, mapper: ClassMapper, ghost: Callable[[bytes, Any], Any]
) -> tuple[Any, Any]:
    """Return ``(class, state)`` of a Durus record's data (TOOL-033).

    The class pickle and the (possibly zlib-compressed) state pickle are read
    by one unpickler, as Durus reads them, because the state pickle may refer
    to what the class pickle memoized.
    """
    file = io.BytesIO(data)
    unpickler = _DurusUnpickler(file, mapper, ghost)
    cls = unpickler.load()
    position = file.tell()
    if position < len(data) and data[position] == _ZLIB_START:
        try:
            expanded = zlib.decompress(data[position:])
        except zlib.error:
            pass  # Durus also lets the unpickler try the bytes as they are.
        else:
            file.seek(position)
            file.write(expanded)
            file.truncate()
            file.seek(position)
    state = unpickler.load()
    return cls, state


# --- the import ------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What :func:`import_durus` did."""

    format: str
    objects: int = 0
    transactions_read: int = 0
    census: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class _Encoder:
    """Re-encodes Durus records with a dhruva serializer, keeping oids."""

    def __init__(self, mapper: ClassMapper, serializer: Serializer) -> None:
        self.mapper = mapper
        self.serializer = serializer
        self._ghosts: dict[bytes, PersistentBase] = {}
        self._refs: list[bytes] = []
        self._seen: set[bytes] = set()

    def ghost(self, oid: bytes, cls: Any) -> PersistentBase:
        """A placeholder for the referenced object: the mapped class, the same oid."""
        obj = self._ghosts.get(oid)
        if obj is None:
            real = self.mapper.persistent_class(cls, f"referenced as oid {int.from_bytes(oid)}")
            obj = real.__new__(real)
            object.__setattr__(obj, "_p_oid", oid)
            object.__setattr__(obj, "_p_connection", None)
            object.__setattr__(obj, "_p_status", GHOST)
            self._ghosts[oid] = obj
        return obj

    def reference(self, obj: PersistentBase) -> tuple[bytes, type]:
        oid = obj._p_oid
        if oid is None:
            raise DurusImportError("a Durus state holds a persistent object without an oid")
        if oid not in self._seen:
            # [OBJ-005] Each referenced oid once, in the order first written.
            self._seen.add(oid)
            self._refs.append(oid)
        return oid, type(obj)._p_class

    def encode(self, record: DurusRecord) -> tuple[str, bytes, bytes]:
        """Return ``(durus class name, data, refs)`` for one Durus record."""
        self._ghosts.clear()
        cls, state = decode_durus_data(record.data, self.mapper, self.ghost)
        name = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)!s}"
        real = self.mapper.persistent_class(cls, f"class of oid {int.from_bytes(record.oid)}")
        self._refs, self._seen = [], set()
        data = self.serializer.encode(real, state, self.reference)
        return name, data, b"".join(self._refs)


def import_durus(
    old_path: str,
    new_storage: Storage,
    *,
    class_map: Mapping[str, str | type] | None = None,
    serializer: str | Serializer = "pickle",
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Import the Durus database at ``old_path`` into the empty ``new_storage``.

    Every current record is decoded with the class map and encoded again
    with ``serializer`` under its own oid (TOOL-032, TOOL-037); the records
    are committed in batches.  Raises DurusImportError listing every class
    name that could not be resolved or is not a dhruva persistent class, and
    every record that could not be decoded (TOOL-036); the caller then
    discards ``new_storage``, in which some batches may have been committed.
    """
    durus_file = read_durus(old_path)
    result = ImportResult(durus_file.format, transactions_read=len(durus_file.transactions))
    if durus_file.tail is not None:
        result.warnings.append(
            f"{old_path}: ignored the bytes from offset {durus_file.tail} on "
            f"({durus_file.tail_reason}); they are not a complete transaction"
        )
    current = durus_file.current_records()
    mapper = ClassMapper(class_map)
    _check_record_classes(current.values(), mapper)
    encoder = _Encoder(mapper, get_serializer(serializer))
    failures: list[str] = []
    batch: list[tuple[bytes, bytes, bytes]] = []
    batch_bytes = 0
    total = len(current)
    btree_oids: list[bytes] = []

    def flush() -> None:
        nonlocal batch, batch_bytes
        if batch and not (failures or mapper.missing or mapper.not_persistent):
            new_storage.begin()
            for oid, data, refs in batch:
                new_storage.store(oid, data, refs)
            new_storage.end()
        batch, batch_bytes = [], 0

    for done, oid in enumerate(sorted(current), 1):
        record = current[oid]
        missing_before = len(mapper.missing)
        try:
            name, data, refs = encoder.encode(record)
        except Exception as exc:
            if len(mapper.missing) == missing_before:
                failures.append(
                    f"oid {int.from_bytes(oid)} at offset {record.offset}: "
                    f"{type(exc).__name__}: {exc}"
                )
            continue
        try:
            name = durus_class_name(record.data)
        except ValueError:
            pass  # decoding worked, so the name from the unpickled class stands
        result.census[name] = result.census.get(name, 0) + 1
        if _is_btree(mapper, name):
            btree_oids.append(oid)
        batch.append((oid, data, refs))
        batch_bytes += len(data)
        if len(batch) >= BATCH_RECORDS or batch_bytes >= BATCH_BYTES:
            flush()
        if progress is not None:
            progress(done, total)
    flush()
    problems = [*sorted(mapper.not_persistent), *failures]
    if mapper.missing or problems:
        parts = []
        if mapper.missing:
            parts.append("classes not found: " + ", ".join(sorted(mapper.missing)))
        if mapper.not_persistent:
            parts.append(
                "not dhruva persistent classes: " + ", ".join(sorted(mapper.not_persistent))
            )
        if failures:
            parts.append(f"{len(failures)} records could not be decoded (first: {failures[0]})")
        raise DurusImportError(
            "; ".join(parts) + " (map classes with --map old.module.Class=new.module.Class)",
            mapper.missing,
            problems,
        )
    _store_btree_counts(new_storage, btree_oids, serializer)
    result.objects = total
    return result


def _is_btree(mapper: ClassMapper, dotted: str) -> bool:
    from dhruva.btree import BTree

    module, _, name = dotted.rpartition(".")
    cls = mapper.find_class(module, name)
    return isinstance(cls, type) and issubclass(cls, BTree)


def _store_btree_counts(
    storage: Storage, oids: list[bytes], serializer: str | Serializer, batch: int = 1000
) -> None:
    """Count every imported BTree once and store the count (TOOL-045, BT-001).

    A Durus tree has no stored count, so without this the first ``len()`` in
    the application walks every node.  The import has the nodes at hand:
    each tree is loaded, counted and written again with its ``_count``, in
    transactions of ``batch`` trees, so the cache is emptied between them.
    """
    if not oids:
        return
    from dhruva.connection import Connection

    connection = Connection(storage, cache_size=batch * 4, serializer=serializer)
    for start in range(0, len(oids), batch):
        for oid in oids[start : start + batch]:
            tree = connection.get(oid)
            if tree is not None:
                len(tree)  # [BT-001] counts a tree that has no _count yet
                tree._p_note_change()
        connection.commit()


def map_lines(names: Iterable[str]) -> str:
    """The ``--map`` options that would resolve ``names``, one per line (TOOL-044)."""
    return "\n".join(
        f"  --map {name}=NEW.MODULE.{name.rpartition('.')[2]}" for name in sorted(names)
    )


def _check_record_classes(records: Iterable[DurusRecord], mapper: ClassMapper) -> None:
    """Resolve the class of every record before any state is decoded (TOOL-044).

    Reading a record's class costs a scan of its short class pickle, not an
    unpickling of its state, so a database whose classes moved fails in
    seconds, naming every such class with the ``--map`` line it needs,
    instead of after decoding every object.  Classes used only inside
    states are still found as the import goes (TOOL-036).
    """
    for record in records:
        try:
            dotted = durus_class_name(record.data)
        except ValueError:
            continue  # the decode pass reports the record itself
        module, _, name = dotted.rpartition(".")
        mapper.find_class(module, name)
    if mapper.missing:
        raise DurusImportError(
            "classes not found: "
            + ", ".join(sorted(mapper.missing))
            + " (checked before any object was imported); map each to its new home:\n"
            + map_lines(mapper.missing),
            mapper.missing,
            [],
        )


def iter_durus_records(path: str) -> Iterator[tuple[int, DurusRecord]]:
    """Yield ``(transaction offset, record)`` of every record of a Durus file, in order."""
    for offset, records in read_durus(path).transactions:
        for record in records:
            yield offset, record


def is_durus_file(path: str) -> bool:
    """Return True when the file at ``path`` starts with a Durus prefix."""
    try:
        with open(path, "rb") as file:
            return detect_durus_format(file.read(8)) is not None
    except OSError:
        return False


__all__ = [
    "DFS20_MAGIC",
    "DURUS_CLASS_MAP",
    "SHELF_MAGIC",
    "ClassMapper",
    "DurusFile",
    "DurusImportError",
    "DurusRecord",
    "ImportResult",
    "decode_durus_data",
    "detect_durus_format",
    "import_durus",
    "is_durus_file",
    "iter_durus_records",
    "read_dfs20",
    "read_durus",
    "read_shelf",
    "split_durus_record",
]
