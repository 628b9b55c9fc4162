"""Write ``msgspec-values.hex``: one msgspec record holding a value of every type.

Spec: ``spec/object-encoding.md`` ("The msgspec encoding"); the JSON forms of
the ``expect`` line are defined in ``conformance/vectors/README.md``.  The
record is encoded by dhruva's own writer (``MsgspecSerializer``); each line of
the file is one entry of the state's map, so that a decoder can be checked
value by value.  ``msgspec-record.hex`` beside it is the spec's worked example
and is not generated.

    python conformance/vectors/object-encoding/generate.py          # rewrite
    python conformance/vectors/object-encoding/generate.py --check  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import enum
import json
import math
import sys
import uuid
import zoneinfo
from http import HTTPStatus
from pathlib import Path
from typing import Any

from dhruva.persistent_dict import PersistentDict
from dhruva.persistent_list import PersistentList
from dhruva.serialize_msgspec import MsgspecSerializer, class_name

HERE = Path(__file__).parent
NAME = "msgspec-values"
REF_OID = 7
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
ODD = dt.timezone(-dt.timedelta(hours=3, seconds=15, microseconds=500))
# 2024-10-27 02:30 happened twice in Paris; fold 1 is the second time.
TWICE = dt.datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=1)

# (key, value, what the line's comment says); the state is {"data": {key: value, ...}}.
ENTRIES: list[tuple[str, Any, str]] = [
    ("nil", None, "nil"),
    ("true", True, "true"),
    ("false", False, "false"),
    ("int", 42, "positive fixint"),
    ("neg", -33, "int 8"),
    ("u64", 2**64 - 1, "uint 64, the largest plain int"),
    ("i64", -(2**63), "int 64, the smallest plain int"),
    ("big", 2**64, "ext 12: 2**64, two's complement, shortest form"),
    ("-big", -(2**63) - 1, "ext 12: -2**63 - 1"),
    ("huge", 10**30, "ext 12: 10**30"),
    ("float", 1.5, "float 64"),
    ("-zero", -0.0, "float 64, negative zero"),
    ("nan", math.nan, "float 64, NaN"),
    ("inf", math.inf, "float 64, +infinity"),
    ("-inf", -math.inf, "float 64, -infinity"),
    ("str", "h\u00e9llo \u2603", "str, UTF-8"),
    ("bytes", b"\x00\xff", "bin 8"),
    ("bytearray", bytearray(b"ab"), "ext 14"),
    ("list", [1, "two", [3]], "array"),
    ("tuple", (1, (2,)), "ext 2, an array inside"),
    ("set", {3}, "ext 3"),
    ("frozenset", frozenset({"f"}), "ext 4"),
    ("naive", dt.datetime(2024, 5, 17, 12, 30, 5, 250), "ext 5, no zone"),
    ("utc", dt.datetime(2024, 5, 17, 7, 0, tzinfo=dt.UTC), "ext 5, offset 0"),
    ("offset", dt.datetime(2024, 5, 17, 12, 30, tzinfo=IST), "ext 5, offset +05:30 in us"),
    ("odd", dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=ODD), "ext 5, offset with seconds"),
    ("zone", dt.datetime(2024, 5, 17, 9, 0, tzinfo=PARIS), "ext 5, IANA zone key"),
    ("fold", TWICE, "ext 5, fold 1"),
    ("date", dt.date(2024, 2, 29), "ext 6"),
    ("time", dt.time(23, 59, 59, 999999), "ext 7, no zone"),
    ("time+", dt.time(8, 0, tzinfo=IST), "ext 7, offset"),
    ("delta", dt.timedelta(days=-1, seconds=5), "ext 8, normalized"),
    ("decimal", decimal.Decimal("-1.50"), "ext 9"),
    ("dnan", decimal.Decimal("NaN"), "ext 9"),
    ("dexp", decimal.Decimal("1E+3"), "ext 9"),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678"), "ext 10"),
    ("enum", HTTPStatus.NOT_FOUND, "ext 11: [class name, value]"),
    ("complex", complex(1.5, -2), "ext 13"),
    ("intkeys", {1: "a", None: "b", b"k": "c"}, "map with non-str keys"),
    ("tuplekeys", {(1, 2): "pair"}, "ext 15: [k1, v1, ...]"),
    ("ref", PersistentList(), "ext 1: oid 7 and the class name"),
]


# The member names that make a one-member JSON object a tagged value (README).
TAGS = frozenset(
    [
        "int",
        "float",
        "bytes",
        "bytearray",
        "tuple",
        "set",
        "frozenset",
        "datetime",
        "date",
        "time",
        "timedelta",
        "decimal",
        "uuid",
        "enum",
        "complex",
        "ref",
        "map",
        "dict",
    ]
)


def _clock(hour: int, minute: int, second: int, microsecond: int) -> str:
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    return text + (f".{microsecond:06d}" if microsecond else "")


def _zone(value: dt.datetime | dt.time) -> str:
    tz = value.tzinfo
    if tz is None:
        return ""
    if isinstance(tz, zoneinfo.ZoneInfo):
        return f"[{tz.key}]"
    offset = tz.utcoffset(None)
    assert offset is not None
    sign = "-" if offset < dt.timedelta(0) else "+"
    total_us = abs(offset) // dt.timedelta(microseconds=1)
    seconds, microsecond = divmod(total_us, 1_000_000)
    hours, rest = divmod(seconds, 3600)
    minutes, second = divmod(rest, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}"
    if second or microsecond:
        text += f":{second:02d}" + (f".{microsecond:06d}" if microsecond else "")
    return text


def _fold(value: dt.datetime | dt.time) -> str:
    return ";fold=1" if value.fold else ""


def to_json(value: Any) -> Any:
    """The README's JSON form of one value (the inverse of the test's reading)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return {"enum": [class_name(type(value)), to_json(value.value)]}
    if isinstance(value, int):
        return value if abs(value) < 2**53 else {"int": str(value)}
    if isinstance(value, float):
        if math.isnan(value):
            return {"float": "nan"}
        if math.isinf(value):
            return {"float": "inf" if value > 0 else "-inf"}
        return {"float": repr(value)}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, bytearray):
        return {"bytearray": bytes(value).hex()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [to_json(v) for v in value]}
    if isinstance(value, frozenset):
        return {"frozenset": [to_json(v) for v in value]}
    if isinstance(value, set):
        return {"set": [to_json(v) for v in value]}
    if isinstance(value, dt.datetime):
        date = f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        clock = _clock(value.hour, value.minute, value.second, value.microsecond)
        return {"datetime": f"{date}T{clock}{_zone(value)}{_fold(value)}"}
    if isinstance(value, dt.date):
        return {"date": f"{value.year:04d}-{value.month:02d}-{value.day:02d}"}
    if isinstance(value, dt.time):
        clock = _clock(value.hour, value.minute, value.second, value.microsecond)
        return {"time": f"{clock}{_zone(value)}{_fold(value)}"}
    if isinstance(value, dt.timedelta):
        return {"timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    if isinstance(value, complex):
        return {"complex": [to_json(value.real), to_json(value.imag)]}
    if isinstance(value, PersistentList):
        return {"ref": [REF_OID, class_name(type(value))]}
    if isinstance(value, dict):
        pairs = [[to_json(k), to_json(v)] for k, v in value.items()]
        keys = list(value)
        if all(type(k) is str for k in keys) and not (len(keys) == 1 and keys[0] in TAGS):
            return {k: p[1] for k, p in zip(keys, pairs, strict=True)}
        plain = all(
            k is None
            or type(k) in (str, bool, float, bytes)
            or (type(k) is int and -(2**63) <= k < 2**64)
            for k in keys
        )
        return {"map" if plain else "dict": pairs}
    raise TypeError(f"no JSON form for {type(value).__qualname__}")


def _reference(obj: Any) -> tuple[bytes, type]:
    return REF_OID.to_bytes(8, "big"), type(obj)


def encode(data: dict[str, Any]) -> bytes:
    return MsgspecSerializer().encode(PersistentDict, {"data": data}, _reference)


def render() -> str:
    record = encode({key: value for key, value, _note in ENTRIES})
    prefix_one = encode({})[:-1]  # up to the inner map's header (0x80 for an empty map)
    lines: list[tuple[bytes, str]] = [(record[: len(prefix_one)], "")]
    position = len(prefix_one)
    assert record[position] == 0xDE, "more than 15 entries: a map 16 header"
    lines.append((record[position : position + 3], f"map 16, {len(ENTRIES)} entries"))
    position += 3
    for key, value, note in ENTRIES:
        entry = encode({key: value})[len(prefix_one) + 1 :]
        assert record[position : position + len(entry)] == entry
        lines.append((entry, f"{key!r}: {note}"))
        position += len(entry)
    assert position == len(record)
    lines[0] = (lines[0][0], "code M, class name, state: map of 1, key 'data'")
    expect = {
        "class": class_name(PersistentDict),
        "refs": [REF_OID],
        "state": {"data": {key: to_json(value) for key, value, _note in ENTRIES}},
    }
    out = [
        f"# {NAME}: a msgspec record holding a value of every type the encoding has",
        "# made by generate.py from dhruva's writer; JSON forms: conformance/vectors/README.md",
        f"# expect: {json.dumps(expect, ensure_ascii=False)}",
    ]
    offset = 0
    for data, note in lines:
        for start in range(0, len(data), 16):
            chunk = data[start : start + 16]
            text = f"{offset:04x}  {' '.join(f'{b:02x}' for b in chunk)}"
            out.append(f"{text:<55} # {note if start == 0 else '  ...'}")
            offset += len(chunk)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report a stale file, write nothing")
    args = parser.parse_args(argv)
    path = HERE / f"{NAME}.hex"
    text = render()
    if args.check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"stale: {path.name} (run {Path(__file__).name})", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
