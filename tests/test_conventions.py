"""Tests for the byte-order conventions (spec: conventions.md, CONV-004, CONV-005).

The layouts of the other chapters are checked byte for byte by their own tests
and test vectors; these tests check the rule they share: big-endian integers and
8-byte big-endian oids that sort bytewise.  The byte-order test reads dhruva's
source, so a struct format or ``int.to_bytes`` call that uses another byte order
fails here even before a vector catches it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhruva.utils import OID_SIZE, ROOT_OID, int8_to_str, str_to_int8

ROOT = Path(__file__).resolve().parent.parent
STRUCT_FUNCTIONS = {
    "Struct",
    "pack",
    "unpack",
    "unpack_from",
    "pack_into",
    "iter_unpack",
    "calcsize",
}
# struct codes that are one byte wide, for which byte order does not matter.
SINGLE_BYTE_CODES = set("xcbB?s0123456789p ")

#: The comment that marks a line reading one of pickle's (little-endian) integers.
PICKLE_EXCEPTION = "pickle's own little-endian integer"

u64s = st.integers(min_value=0, max_value=2**64 - 1)


def byte_order_problems(source: str, path: str) -> list[str]:
    """Return the places in ``source`` that encode an integer other than big-endian.

    Checks constant struct formats (``struct.Struct(">Q")``, ``struct.pack``, ...)
    and constant ``byteorder`` arguments of ``int.to_bytes``/``int.from_bytes``.
    """
    problems = []
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source, filename=path)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = (
            func.value.id
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            else ""
        )
        where = f"{path}:{node.lineno}"
        if name in STRUCT_FUNCTIONS and (owner == "struct" or name == "Struct") and node.args:
            fmt = node.args[0]
            if isinstance(fmt, ast.Constant) and isinstance(fmt.value, str | bytes):
                text = fmt.value.decode() if isinstance(fmt.value, bytes) else fmt.value
                if text[:1] not in (">", "!") and not set(text) <= SINGLE_BYTE_CODES:
                    problems.append(f"{where}: struct format {text!r} is not big-endian")
        elif name in ("to_bytes", "from_bytes"):
            orders = [kw.value for kw in node.keywords if kw.arg == "byteorder"]
            # The byte order is the second positional argument of both.
            if len(node.args) > 1:
                orders.append(node.args[1])
            # object-encoding.md: pickle's own integers (its FRAME length) are
            # little-endian, the one exception to CONV-004; such a line says so.
            if PICKLE_EXCEPTION in lines[node.lineno - 1]:
                continue
            for order in orders:
                if isinstance(order, ast.Constant) and order.value != "big":
                    problems.append(f"{where}: {name} uses byteorder {order.value!r}")
    return problems


@pytest.mark.req("CONV-004")
def test_dhruva_encodes_integers_big_endian() -> None:
    problems = [
        problem
        for path in sorted((ROOT / "dhruva").rglob("*.py"))
        for problem in byte_order_problems(
            path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix()
        )
    ]
    assert not problems, "\n".join(problems)


def test_byte_order_check_can_fail() -> None:
    source = (
        "import struct\n"
        "A = struct.Struct('>QI')\n"
        "B = struct.Struct('<Q')\n"
        "C = struct.pack('QB', 1, 2)\n"
        "D = struct.unpack('B4s', b'')\n"
        "E = (1).to_bytes(8, 'little')\n"
        "F = int.from_bytes(b'', byteorder='big')\n"
        f"G = int.from_bytes(b'', 'little')  # {PICKLE_EXCEPTION}\n"
        "H = int.from_bytes(b'', 'little')  # another comment\n"
    )
    problems = byte_order_problems(source, "m.py")
    assert [p.split(":")[1] for p in problems] == ["3", "4", "6", "9"]


@pytest.mark.req("CONV-004", "CONV-005")
def test_oid_encoding_is_8_byte_big_endian() -> None:
    assert OID_SIZE == 8
    assert int8_to_str(1) == b"\x00\x00\x00\x00\x00\x00\x00\x01"
    assert int8_to_str(0x0102030405060708) == bytes.fromhex("0102030405060708")
    assert ROOT_OID == int8_to_str(0) == bytes(8)


@pytest.mark.req("CONV-005")
@given(u64s, u64s)
def test_encoded_oids_sort_as_their_integers(a: int, b: int) -> None:
    assert (int8_to_str(a) < int8_to_str(b)) == (a < b)
    assert str_to_int8(int8_to_str(a)) == a
