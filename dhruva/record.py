"""A record: one object's oid, opaque state bytes and packed references.

This is the unit that every codec (the journal, the wire protocol) and every
storage passes around (spec: ``spec/data-model.md`` and SAPI-001..003).  It
sits below both, so a codec never imports the storage layer.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from dhruva.utils import OID_SIZE, iter_oids

__all__ = ["Record", "check_oid", "check_record", "new_record"]


class Record(NamedTuple):
    """One stored object: its oid, opaque state bytes and packed references.

    ``refs`` is the concatenation of the 8-byte oids the state references
    (spec SAPI-003).
    """

    oid: bytes
    data: bytes
    refs: bytes

    def ref_oids(self) -> list[bytes]:
        """Return the referenced oids as a list."""
        return list(iter_oids(self.refs))


#: ``new_record((oid, data, refs))`` is ``Record(oid, data, refs)`` without the
#: NamedTuple's Python-level ``__new__`` (the load paths make one per record;
#: the caller has checked the fields).
new_record = functools.partial(tuple.__new__, Record)


def check_oid(oid: object) -> None:
    """Raise ValueError unless ``oid`` is a bytes object of 8 bytes [SAPI-001]."""
    if not isinstance(oid, bytes) or len(oid) != OID_SIZE:
        raise ValueError(f"an oid is 8 bytes, not {oid!r}")


def check_record(oid: bytes, data: bytes, refs: bytes) -> None:
    """Raise TypeError/ValueError unless the three parts form a valid record."""
    check_oid(oid)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"record data must be bytes, not {type(data).__name__}")
    if not isinstance(refs, bytes) or len(refs) % OID_SIZE:
        raise ValueError("record refs must be bytes whose length is a multiple of 8")
