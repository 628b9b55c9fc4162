"""The class name a record's data names, read from its bytes without running anything.

Spec: ``spec/object-encoding.md`` (the serializer code, OBJ-001) and
``spec/tools.md`` (TOOL-003: tools never unpickle).

This is a sans-IO codec: bytes in, a dotted name out.  It reads the
serializer code and then only the payload's layout -- pickle and dill
records through :func:`pickletools.genops` (opcodes, never objects), msgspec
records by the class-name string they start with -- so no code a record
names is imported or run.  The storage layer's Durus helpers
(``dhruva.storage.get_census``) and the tools use it; the storages
themselves still never look inside a record (DM-004).
"""

from __future__ import annotations

import pickletools

PICKLE_CODES = (b"P", b"D")
"""Serializer codes whose payload starts with a class pickle (pickle, dill)."""
MSGSPEC_CODE = b"M"


def pickle_class_name(payload: bytes) -> tuple[str, int]:
    """Return the dotted name of the global a class pickle names, and where it ends.

    Reads the opcodes with :func:`pickletools.genops` and never unpickles, so
    no code runs (TOOL-003).  Raises ValueError when the bytes are not a
    complete pickle or the pickle names no global.
    """
    strings: list[str] = []
    name: str | None = None
    end = -1
    for opcode, arg, position in pickletools.genops(payload):
        kind = opcode.name
        if kind in ("GLOBAL", "INST") and name is None:
            module, _, qualname = str(arg).partition(" ")
            name = f"{module}.{qualname}"
        elif kind in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            strings.append(str(arg))
        elif kind == "STACK_GLOBAL" and name is None:
            if len(strings) < 2:
                raise ValueError("STACK_GLOBAL without a module and a name before it")
            name = f"{strings[-2]}.{strings[-1]}"
        elif kind == "STOP":
            end = (position or 0) + 1
            break
    if name is None:
        raise ValueError("the class pickle names no class")
    return name, end


def msgspec_class_name(data: bytes) -> str:
    """Return the dotted class name of a msgspec record (``data`` includes the code byte).

    The payload starts with a MessagePack str ``"module:qualname"``.  Raises
    ValueError when it does not.
    """
    lead = data[1] if len(data) > 1 else -1
    if 0xA0 <= lead <= 0xBF:
        start, length = 2, lead - 0xA0
    elif lead in (0xD9, 0xDA, 0xDB):
        width = {0xD9: 1, 0xDA: 2, 0xDB: 4}[lead]
        start = 2 + width
        length = int.from_bytes(data[2:start], "big")
    else:
        raise ValueError("a msgspec record must start with its class name as a str")
    if start + length > len(data):
        raise ValueError("the msgspec class name runs past the record")
    name = data[start : start + length].decode("utf-8", "replace")
    module, colon, qualname = name.partition(":")
    if not colon:
        raise ValueError(f"malformed msgspec class name {name!r}")
    return f"{module}.{qualname}"


def record_class_name(data: bytes) -> str:
    """Return the dotted name of the class a record's data names.

    Raises ValueError for an unknown serializer code or a payload that does
    not start with a class name.
    """
    code = bytes(data[:1])
    if code in PICKLE_CODES:
        return pickle_class_name(bytes(data[1:]))[0]
    if code == MSGSPEC_CODE:
        return msgspec_class_name(bytes(data))
    shown = code.hex() or "nothing (empty data)"
    raise ValueError(f"unknown serializer code 0x{shown}")


__all__ = ["msgspec_class_name", "pickle_class_name", "record_class_name"]
