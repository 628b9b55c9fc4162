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
    "encode_transaction",
    "index_offset",
    "read_pickle_state",
    "read_record",
    "set_dict_state",
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
#: ``encode_transaction(tid, time_us, records, version)``: journal.encode_transaction's
#: bytes, or None where it would raise or a field is not exact bytes.
encode_transaction: Callable[[int, int, list[tuple[bytes, bytes, bytes]], int], bytes | None] | None
encode_transaction = None
#: ``set_dict_state(d, state)``: Persistent.__setstate__ for exact dicts, or
#: NotImplemented (``d`` untouched) for anything else.
set_dict_state: Callable[[dict[str, Any], Any], Any] | None = None

#: ``read_pickle_state(class_pickles, fallback, data, refs)``: PickleDecoder.read_state's
#: fast case (unrestricted, no references, a known memo-free class pickle), else
#: ``fallback(data, refs)``.
read_pickle_state: Callable[[dict[bytes, bool], Callable[..., Any], bytes, bytes | None], Any]
read_pickle_state = None  # type: ignore[assignment]

if _c is not None:
    # What read_state itself hands to its fallback when pickle.loads fails.
    _c.configure(Record, pickle.loads, (pickle.UnpicklingError, ImportError, AttributeError))
    read_pickle_state = _c.read_pickle_state
    read_record = _c.read_record
    index_offset = _c.index_offset
    encode_transaction = _c.encode_transaction
    set_dict_state = _c.set_dict_state
