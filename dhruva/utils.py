"""Small helpers shared by every layer: oid conversions (spec: data model)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

OID_SIZE = 8
_U64 = struct.Struct(">Q")
assert _U64.size == OID_SIZE

ROOT_OID = b"\x00" * OID_SIZE
"""The oid of the root object (spec DM-002)."""


#: int8_to_str itself, the C method: for the loops that make an oid per object.
pack_int8 = _U64.pack


def int8_to_str(n: int) -> bytes:
    """Return the 8-byte big-endian oid for the integer ``n`` (Durus's name)."""
    return _U64.pack(n)


def str_to_int8(oid: bytes) -> int:
    """Return the integer value of the 8-byte big-endian ``oid`` (Durus's name)."""
    return int(_U64.unpack(oid)[0])


p64 = int8_to_str
u64 = str_to_int8


def join_oids(oids: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Pack oids into the reference-list encoding: 8 bytes each, in order."""
    return b"".join(oids)


def split_oids(refs: bytes) -> list[bytes]:
    """Split a reference list (a multiple of 8 bytes) into oids.

    Raises ValueError when the length is not a multiple of 8.
    """
    if len(refs) % OID_SIZE:
        raise ValueError(f"reference list of {len(refs)} bytes is not a multiple of 8")
    return [refs[i : i + OID_SIZE] for i in range(0, len(refs), OID_SIZE)]


def iter_oids(refs: bytes) -> Iterator[bytes]:
    """Iterate over the oids of a reference list."""
    for i in range(0, len(refs), OID_SIZE):
        yield refs[i : i + OID_SIZE]
