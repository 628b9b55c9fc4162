"""The optional C versions of a few hot functions, or None for each (pure Python).

Theory of operation (docs/guide/speedups.md): ``dhruva._speedups`` is a C
extension built at install time when a C compiler is there, and skipped
when it is not; dhruva works the same without it.  Each name below is the
C function, or None when the extension is missing or the environment
variable ``DHRUVA_PURE_PYTHON`` is set to a non-empty value (read once, at
import).  The caller keeps the pure-Python original as the reference: a C
function answers only the ordinary case and returns None (NotImplemented
for :data:`set_dict_state`) for anything else, and the caller then runs the
original, which gives the answer or the typed error.  The test suite runs
once with the extension and once without (``nox -s tests``, ``nox -s tests_bare``).
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Callable
from typing import Any

from dhruva.record import Record

__all__ = [
    "ENABLED",
    "PURE_PYTHON_VARIABLE",
    "add_object_refs",
    "attach",
    "clock_batch",
    "configure_connection",
    "encode_plain",
    "encode_records",
    "encode_transaction",
    "file_load",
    "index_offset",
    "index_records",
    "install_persistent",
    "install_state",
    "journal_new_oid",
    "mark_all_saved",
    "object_ref",
    "persistent_id",
    "read_pickle_state",
    "read_record",
    "reference",
    "set_dict_state",
    "stage_records",
    "sweep_refs",
]

#: Set to a non-empty value, this environment variable turns the C versions off.
PURE_PYTHON_VARIABLE = "DHRUVA_PURE_PYTHON"

_c: Any = None
if not os.environ.get(PURE_PYTHON_VARIABLE):
    try:
        _c = importlib.import_module("dhruva._speedups")
    except ImportError:  # not built: no compiler at install time, or a source checkout
        _c = None

#: Whether the C versions are in use.
ENABLED: bool = _c is not None

#: ``read_record(fd, offset, version, oid)``: the record at ``offset`` of the
#: data file open on ``fd``, or None unless it is whole, of ``oid`` and
#: (version 2) passes its checksum.
read_record: Callable[[int, int, int, bytes], Record | None] | None = None
#: ``index_offset(mapping, oid, last, covered_offset)``: DiskIndex.lookup_oid from the
#: index file's map, or None when the map does not hold the entry.
index_offset: Callable[[Any, bytes, int, int], int | None] | None = None
#: ``index_records(index, records, position, header_size)``: ``index[oid] = position`` for
#: each ``(oid, data, refs)`` of a durable transaction, the positions summed from the
#: record sizes (JournalStorage.end); returns the greatest oid (None for no records).
#: False, ``index`` untouched, for anything but an exact dict and exact 3-tuples of exact
#: bytes.
index_records: Callable[[dict[bytes, int], list[Any], int, int], bytes | bool | None] | None
index_records = None
#: ``tail_entries(tail)``: FileStorage.checkpoint's ``{oid number: offset}`` of its tail
#: index and the greatest number, or None for an empty or unusual one.
tail_entries: Callable[[Any], tuple[dict[int, int], int] | None] | None = None
#: ``entry_bounds(entries)``: DiskIndex.checkpoint's ``(min key, max key, min value, max
#: value)`` in one pass, or None for an empty or unusual dict (the builtins decide).
entry_bounds: Callable[[Any], tuple[int, int, int, int] | None] | None = None
#: ``record_sizes(records)``: ``{oid: len(data)}`` of a list of exact (oid, data, refs)
#: tuples of bytes, one presized dict (Connection.commit); None for anything else.
record_sizes: Callable[[Any], dict[bytes, int] | None] | None = None
#: ``file_load(storage, fallback, osfile_type, oid)``: FileStorage.load in one C call (the
#: tail index, the ``.index`` map, read_record); ``fallback(storage, oid)`` for anything else.
file_load: Callable[[Any, Callable[[Any, bytes], Record], type, bytes], Record] | None = None
#: ``journal_new_oid(storage, fallback)``: JournalStorage.new_oid in one C call (the
#: storage's ``__dict__``); ``fallback(storage)`` when it is closed, broken, read-only or unusual.
journal_new_oid: Callable[[Any, Callable[[Any], bytes]], bytes] | None = None
#: ``stage_records(pending, records)``: ``pending[oid] = record`` for each record of the
#: list ``records`` and True, when every one is an exact (oid, data, refs) tuple that
#: store() takes as it is; else False, ``pending`` untouched (JournalStorage.store_many).
stage_records: Callable[[dict[bytes, tuple[bytes, bytes, bytes]], Any], bool] | None = None
#: ``encode_transaction(tid, time_us, records, version[, distinct])``:
#: journal.encode_transaction's bytes, or None where it would raise or a field is not exact
#: bytes.  ``distinct`` True: the caller vouches that no oid repeats (not checked again).
encode_transaction: Callable[..., bytes | None] | None = None
#: ``set_dict_state(d, state)``: Persistent.__setstate__ for exact dicts, or
#: NotImplemented (``d`` untouched) for anything else.
set_dict_state: Callable[[dict[str, Any], Any], Any] | None = None

#: ``read_pickle_state(class_pickles, fallback, data, refs)``: PickleDecoder.read_state's
#: fast case (unrestricted, no references, a known memo-free class pickle), else
#: ``fallback(data, refs)``.
read_pickle_state: Callable[[dict[bytes, bool], Callable[..., Any], bytes, bytes | None], Any]
read_pickle_state = None  # type: ignore[assignment]
#: ``state_reader(class_pickles, fallback)``: ``read_pickle_state`` with those two bound, a
#: callable ``reader(data, refs)`` that the ghost hook's load also decodes through straight
#: into the object's ``__dict__`` (a dict state, Persistent's own ``__setstate__``).
state_reader: Callable[
    [dict[bytes, bool], Callable[..., Any]], Callable[[bytes, bytes | None], Any]
]
state_reader = None  # type: ignore[assignment]

#: ``install_state(obj, state, serial, size)``: the end of Connection's load of a ghost
#: (its real class, its state, SAVED, ``_p_serial``, ``_p_size``); returns the previous
#: ``_p_size``.  Usable once :func:`install_persistent` ran.
install_state: Callable[[Any, Any, int, int], int] | None = None

#: ``mark_all_saved(objects, sizes, serial, loaded)``: the commit's step for each written
#: object, in order (its real class, SAVED, ``_p_serial``, ``_p_size`` ``sizes[oid]``,
#: ``loaded[oid] = obj``); returns the sum of the new sizes less the previous ones.
mark_all_saved: Callable[[list[Any], dict[bytes, int], int, dict[bytes, Any]], int] | None = None
#: ``clock_batch(batch, loaded, changed, cache_size, cache_bytes, loaded_bytes, budget)``:
#: one batch of Connection.shrink_cache's clock hand (``cache_bytes`` -1 for no byte
#: bound); returns ``(loaded_bytes, budget, within)``, or None (nothing changed) for a
#: batch that is not a list of (bytes, persistent object) pairs.  Usable once
#: :func:`install_persistent` ran.
_ClockBatch = Callable[
    [list[tuple[bytes, Any]], dict[bytes, Any], dict[bytes, Any], int, int, int, int],
    tuple[int, int, bool] | None,
]
clock_batch: _ClockBatch | None = None
#: ``attach(obj, oid, connection)``: a new object's ``_p_oid``, ``_p_connection`` and
#: ``_p_status`` UNSAVED, set as ObjectWriter.reference attaches it.
attach: Callable[[Any, bytes, Any], None] | None = None
#: ``configure_connection(Connection, load_state, ReadConflictError, SerializationError)``:
#: from then on the C ghost hook does ``load_state``'s steps itself for an exact
#: Connection whose class still has that ``load_state`` (a refresh pending goes to it).
configure_connection: Callable[[type, Callable[..., Any], type, type], None] | None = None
#: ``encode_plain(prefix, state, dumps)``: ``prefix + dumps(state, 5)`` for a state of
#: plain data (exact None, bools, ints, floats, strs, bytes, and lists, tuples and
#: dicts of them), which holds no persistent object; None for any other state.
encode_plain: Callable[[bytes, Any, Callable[..., bytes]], bytes | None] | None = None
#: ``encode_records(queue, seen, records, prefixes, getstate, fallback, writer,
#: slots_getstate)``: ObjectWriter.records' loop over ``queue`` (popped from its end until
#: empty, an oid in ``seen`` skipped).  An object of a class in ``prefixes`` (class ->
#: record prefix) whose ``__getstate__`` is ``getstate`` (its ``__dict__``) or
#: ``slots_getstate`` (called) and whose state the C pickler writes is appended to
#: ``records`` as ``(oid, data, refs)``: the persistent objects inside through
#: ``reference(writer, obj)``, the refs from ``writer._refs`` (``writer`` None: a state
#: holding one is not written); any other goes to ``fallback(obj)``.  Usable once
#: :func:`install_persistent` ran.
_EncodeRecords = Callable[
    [
        list[Any],
        set[bytes],
        list[tuple[bytes, bytes, bytes]],
        dict[type, bytes],
        Any,
        Any,
        Any,
        Any,
    ],
    None,
]
encode_records: _EncodeRecords | None = None
#: ``object_ref(obj)``: ``weakref.ref(obj)``, not tracked by the garbage collector (a
#: weak reference without a callback refers to nothing the collector follows).
object_ref: Callable[[Any], Any] | None = None
#: ``add_object_refs(data, objects)``: ``data[obj._p_oid] = object_ref(obj)`` for each
#: persistent object, in order.
add_object_refs: Callable[[dict[bytes, Any], list[Any]], None] | None = None
#: ``sweep_refs(data)``: ``del data[oid]`` for each entry whose weak reference is dead.
sweep_refs: Callable[[dict[bytes, Any]], None] | None = None
#: ``reference(writer, obj)``: ObjectWriter.reference (a new object gets
#: ``writer._new_oid()`` and is attached); anything unusual goes to
#: ``writer.reference(obj)``.  Usable once :func:`install_persistent` ran.
reference: Callable[[Any, Any], tuple[bytes, type]] | None = None
#: ``persistent_id(base, reference, obj)``: ``reference(obj)`` if ``obj`` is a ``base``,
#: else None (a record pickler's persistent_id, bound with functools.partial).
persistent_id: Callable[[type, Callable[[Any], Any], Any], Any] | None = None


def install_persistent(
    base: type,
    dict_class: type,
    unsaved: int,
    saved: int,
    ghost_getattribute: Callable[[Any, str], Any],
    tracked_getattribute: Callable[[Any, str], Any],
) -> tuple[Any, Any] | None:
    """Give ``base`` (PersistentBase) the C ``__new__`` and ``__setattr__``; None without C.

    dhruva.persistent calls it once, after defining ``base`` and ``dict_class``
    (Persistent), with its two hidden classes' ``__getattribute__`` hooks;
    it returns the C versions of those hooks, ``(ghost, tracked)``, for the
    hidden classes.  Each C function hands what it does not handle (a name
    that is not an exact str, an object that is not persistent, a ghost
    without a connection) to the Python original it was given, and the C
    ``install_state`` does what ``dict_class.__setstate__`` does only for
    that very function.
    """
    if _c is None:
        return None
    _c.configure_persistent(
        base,
        dict_class,
        dict_class.__dict__["__setstate__"],
        base.__setattr__,
        unsaved,
        saved,
        ghost_getattribute,
        tracked_getattribute,
    )
    base.__new__ = staticmethod(_c.persistent_new)  # type: ignore[method-assign]
    base.__setattr__ = _c.setattr_descriptor(base)  # type: ignore[method-assign]
    hooks: tuple[Any, Any] = _c.getattribute_descriptors()
    return hooks


if _c is not None:
    install_state = _c.install_state
    mark_all_saved = _c.mark_all_saved
    clock_batch = _c.clock_batch
    attach = _c.attach
    reference = _c.reference
    object_ref = _c.object_ref
    encode_plain = _c.encode_plain
    encode_records = _c.encode_records
    configure_connection = _c.configure_connection
    add_object_refs = _c.add_object_refs
    sweep_refs = _c.sweep_refs
    persistent_id = _c.persistent_id
    # What read_state itself hands to its fallback when pickle.loads fails.
    _c.configure(Record, pickle.loads, (pickle.UnpicklingError, ImportError, AttributeError))
    read_pickle_state = _c.read_pickle_state
    state_reader = _c.state_reader
    read_record = _c.read_record
    index_offset = _c.index_offset
    index_records = _c.index_records
    record_sizes = _c.record_sizes
    tail_entries = _c.tail_entries
    entry_bounds = _c.entry_bounds
    file_load = _c.file_load
    journal_new_oid = _c.journal_new_oid
    stage_records = _c.stage_records
    encode_transaction = _c.encode_transaction
    set_dict_state = _c.set_dict_state
