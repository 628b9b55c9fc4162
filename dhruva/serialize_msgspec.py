"""The msgspec serializer: MessagePack records that name classes, never code.

Spec: object-encoding.md, "The msgspec encoding (M)", OBJ-030 .. OBJ-039.

Theory of operation.  A record is

    data := 0x4D class-name state

where ``class-name`` is a MessagePack str ``"module:qualname"`` and ``state``
is one MessagePack value.  MessagePack itself has nil, bool, int, float,
str, bin, array and map; every other supported Python value is a MessagePack
*ext* value with a type code from :data:`EXT_CODES` (persistent references,
tuples, sets, datetimes, ...).  Composite ext payloads are themselves one
MessagePack value, so another language needs a MessagePack library and the
table in the spec, nothing else.

Writing walks the state once in Python, turning every value MessagePack
lacks into an :class:`msgspec.msgpack.Ext` (reference order = walk order =
byte order, OBJ-005), then hands the tree to msgspec's encoder.  A value the
format cannot hold raises an error naming the attribute (OBJ-035).

Reading is msgspec's decoder with an ``ext_hook``.  The only classes a
record can name are persistent classes (the record's own class and its
references) and Enum classes; each is resolved through the connection's
allow-list, or, without one, only from modules already imported -- a record
can make the reader neither import a module nor call anything but an enum
lookup and the class's ``__setstate__`` (OBJ-036).  ``msgspec`` is an
optional extra: ``pip install 'dhruva[msgspec]'``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
import zoneinfo
from collections.abc import Callable
from typing import Any

from dhruva.class_registry import ClassMap, ClassRegistry, resolve_imported
from dhruva.error import ForbiddenClassError, SerializationError
from dhruva.persistent import PersistentBase
from dhruva.serialize import (
    MSGSPEC_CODE,
    GetGhost,
    RecordDecoder,
    Reference,
    Serializer,
    describe,
)

try:
    import msgspec
    from msgspec.msgpack import Decoder, Encoder, Ext
except ImportError as exc:  # pragma: no cover - depends on the environment
    # [OBJ-022] Name the package to install.
    raise SerializationError(
        "this record or connection uses the msgspec serializer, but the 'msgspec' package "
        "is not installed; install it with: pip install 'dhruva[msgspec]' "
        "(or: pip install msgspec)"
    ) from exc

# The ext type codes of the format (OBJ-032).  Never renumber; add new ones only.
EXT_REF = 1
EXT_TUPLE = 2
EXT_SET = 3
EXT_FROZENSET = 4
EXT_DATETIME = 5
EXT_DATE = 6
EXT_TIME = 7
EXT_TIMEDELTA = 8
EXT_DECIMAL = 9
EXT_UUID = 10
EXT_ENUM = 11
EXT_BIGINT = 12
EXT_COMPLEX = 13
EXT_BYTEARRAY = 14
EXT_MAP = 15
EXT_CODES: dict[str, int] = {
    name[4:].lower(): code for name, code in globals().items() if name.startswith("EXT_")
}

OID_SIZE = 8
INT_MIN = -(2**63)
INT_LIMIT = 2**64  # MessagePack ints are -2**63 .. 2**64-1
_PLAIN_TYPES = frozenset({str, float, bool, type(None), bytes})
_PLAIN_KEY_TYPES = frozenset({str, float, bool, type(None), bytes, int})


class UnsupportedValue(Exception):
    """A value the msgspec format cannot hold; ``attribute`` is filled in on the way out."""

    def __init__(self, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.type_name = type(value).__qualname__
        self.reason = reason
        self.attribute: str | None = None


def class_name(cls: type) -> str:
    """Return ``"module:qualname"`` for ``cls``, the name records use (OBJ-031)."""
    qualname = cls.__qualname__
    # Like pickle, check that the name leads back to the class, so that a
    # record is never written that no reader can resolve.
    if "<" in qualname or resolve_imported(cls.__module__, qualname) is not cls:
        raise UnsupportedValue(
            cls,
            f"class {cls.__module__}.{qualname} has no import path "
            "(defined inside a function, or not reachable by its name)",
        )
    return f"{cls.__module__}:{qualname}"


def _tz_code(tz: dt.tzinfo | None, value: Any) -> int | str | None:
    if tz is None:
        return None
    if type(tz) is dt.timezone:
        offset = tz.utcoffset(None)
        plain = dt.timezone(offset)
        if tz.tzname(None) == plain.tzname(None):
            return offset // dt.timedelta(microseconds=1)
        raise UnsupportedValue(value, f"timezone {tz!r} has a custom name")
    if type(tz) is zoneinfo.ZoneInfo and tz.key is not None:
        return tz.key
    raise UnsupportedValue(value, f"tzinfo {type(tz).__qualname__} is not supported")


def _tz_from_code(code: int | str | None) -> dt.tzinfo | None:
    if code is None:
        return None
    if type(code) is int:
        offset = dt.timedelta(microseconds=code)
        return dt.UTC if not offset else dt.timezone(offset)
    if type(code) is str:
        return zoneinfo.ZoneInfo(code)
    raise SerializationError(f"malformed time zone {code!r} in a msgspec record")


class _Walk:
    """Turns one state into msgspec-encodable values, collecting references."""

    __slots__ = ("encode", "reference")

    def __init__(self, encode: Callable[[Any], bytes], reference: Reference) -> None:
        self.encode = encode
        self.reference = reference

    def value(self, v: Any) -> Any:
        t = type(v)
        if t in _PLAIN_TYPES:
            return v
        if t is int:
            if INT_MIN <= v < INT_LIMIT:
                return v
            size = (v.bit_length() + 8) // 8
            return Ext(EXT_BIGINT, v.to_bytes(size, "big", signed=True))
        if t is list:
            convert = self.value
            return [convert(x) for x in v]
        if t is dict:
            return self.mapping(v)
        handler = _HANDLERS.get(t)
        if handler is not None:
            return handler(self, v)
        if isinstance(v, PersistentBase):
            oid, cls = self.reference(v)
            return Ext(EXT_REF, oid + _class_name_bytes(cls))
        if isinstance(v, enum.Enum):
            cls = type(v)
            return Ext(EXT_ENUM, self.encode([class_name(cls), self.value(v._value_)]))
        raise UnsupportedValue(v, "the msgspec serializer has no encoding for this type")

    def mapping(self, v: dict[Any, Any]) -> Any:
        convert = self.value
        for key in v:
            kt = type(key)
            if kt is str:
                continue
            if kt not in _PLAIN_KEY_TYPES or (kt is int and not INT_MIN <= key < INT_LIMIT):
                # [OBJ-033] Keys MessagePack maps cannot carry: a flat key/value array.
                flat: list[Any] = []
                for k, x in v.items():
                    flat.append(convert(k))
                    flat.append(convert(x))
                return Ext(EXT_MAP, self.encode(flat))
        return {k: convert(x) for k, x in v.items()}

    def sequence(self, code: int, v: Any) -> Ext:
        convert = self.value
        return Ext(code, self.encode([convert(x) for x in v]))


def _datetime(walk: _Walk, v: dt.datetime) -> Ext:
    fields: list[Any] = [v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond]
    fields += [v.fold, _tz_code(v.tzinfo, v)]
    return Ext(EXT_DATETIME, walk.encode(fields))


def _time(walk: _Walk, v: dt.time) -> Ext:
    fields = [v.hour, v.minute, v.second, v.microsecond, v.fold, _tz_code(v.tzinfo, v)]
    return Ext(EXT_TIME, walk.encode(fields))


_HANDLERS: dict[type, Callable[[_Walk, Any], Any]] = {
    tuple: lambda w, v: w.sequence(EXT_TUPLE, v),
    set: lambda w, v: w.sequence(EXT_SET, v),
    frozenset: lambda w, v: w.sequence(EXT_FROZENSET, v),
    dt.datetime: _datetime,
    dt.date: lambda w, v: Ext(EXT_DATE, w.encode([v.year, v.month, v.day])),
    dt.time: _time,
    dt.timedelta: lambda w, v: Ext(EXT_TIMEDELTA, w.encode([v.days, v.seconds, v.microseconds])),
    decimal.Decimal: lambda w, v: Ext(EXT_DECIMAL, str(v).encode("ascii")),
    uuid.UUID: lambda w, v: Ext(EXT_UUID, v.bytes),
    complex: lambda w, v: Ext(EXT_COMPLEX, w.encode([v.real, v.imag])),
    bytearray: lambda w, v: Ext(EXT_BYTEARRAY, bytes(v)),
}

_name_cache: dict[type, bytes] = {}
_prefix_cache: dict[type, bytes] = {}


def _class_name_bytes(cls: type) -> bytes:
    name = _name_cache.get(cls)
    if name is None:
        name = _name_cache[cls] = class_name(cls).encode("utf-8")
    return name


def _str_header(data: bytes | memoryview, offset: int) -> tuple[int, int]:
    """Return ``(start, end)`` of the MessagePack str at ``offset`` (fixstr, str8/16/32)."""
    lead = data[offset]
    if 0xA0 <= lead <= 0xBF:
        start, length = offset + 1, lead & 0x1F
    elif lead == 0xD9:
        start, length = offset + 2, data[offset + 1]
    elif lead == 0xDA:
        start, length = offset + 3, int.from_bytes(data[offset + 1 : offset + 3], "big")
    elif lead == 0xDB:
        start, length = offset + 5, int.from_bytes(data[offset + 1 : offset + 5], "big")
    else:
        raise SerializationError(
            f"msgspec record: expected the class name (a MessagePack str), found byte 0x{lead:02x}"
        )
    if start + length > len(data):
        raise SerializationError("msgspec record: the class name runs past the end of the record")
    return start, start + length


class MsgspecDecoder:
    """Reads ``M`` records for one connection (OBJ-030 .. OBJ-036)."""

    def __init__(
        self,
        get_ghost: GetGhost,
        registry: ClassRegistry | None,
        class_map: ClassMap | None = None,
    ) -> None:
        self._get_ghost = get_ghost
        self._registry = registry
        self._class_map = class_map or None
        # Resolved names, one cache per kind; keys are the UTF-8 name bytes.
        self._persistent: dict[bytes, type] = {}
        self._enums: dict[bytes, type] = {}
        self._decoder = Decoder(ext_hook=self._ext_hook)
        self._decode = self._decoder.decode

    def _resolve(self, name: bytes, kind: type) -> type:
        cache = self._enums if kind is enum.Enum else self._persistent
        cls = cache.get(name)
        if cls is not None:
            return cls
        text = name.decode("utf-8")
        module, sep, qualname = text.partition(":")
        if not sep:
            raise SerializationError(f"msgspec record: malformed class name {text!r}")
        if self._class_map is not None:
            # [OBJ-050] Renamed classes are translated before anything is resolved.
            target = self._class_map.translate(module, qualname)
            if isinstance(target, type):
                if self._registry is None:
                    cache[name] = target
                    return target
                # A restricted reader judges a mapped class by its own name.
                module, qualname = target.__module__, target.__qualname__
            else:
                module, qualname = target
        dotted = f"{module}.{qualname}"
        # [OBJ-036] Through the allow-list, or only from modules already imported.
        if self._registry is not None:
            found = self._registry.resolve(module, qualname)
        else:
            found = resolve_imported(module, qualname)
            if found is None:
                raise ForbiddenClassError(
                    dotted,
                    "its module is not imported, and a msgspec reader without an allow-list "
                    "imports nothing a record names; import the module first",
                )
        if not (isinstance(found, type) and issubclass(found, kind)) or (
            found.__module__ != module
        ):
            what = "an Enum" if kind is enum.Enum else "a persistent class"
            raise ForbiddenClassError(dotted, f"a msgspec record may name it only as {what}")
        cache[name] = found
        return found

    def _ext_hook(self, code: int, data: memoryview) -> Any:
        if code == EXT_REF:
            # A read-only memoryview hashes and compares like bytes: no copy.
            cls = self._persistent.get(data[OID_SIZE:])  # type: ignore[call-overload]
            if cls is None:
                cls = self._resolve(bytes(data[OID_SIZE:]), PersistentBase)
            return self._get_ghost(bytes(data[:OID_SIZE]), cls)
        decode = self._decode
        if code == EXT_TUPLE:
            return tuple(decode(data))
        if code == EXT_SET:
            return set(decode(data))
        if code == EXT_FROZENSET:
            return frozenset(decode(data))
        if code == EXT_DATETIME:
            y, mo, d, h, mi, s, us, fold, tz = decode(data)
            return dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_tz_from_code(tz), fold=fold)
        if code == EXT_DATE:
            return dt.date(*decode(data))
        if code == EXT_TIME:
            h, mi, s, us, fold, tz = decode(data)
            return dt.time(h, mi, s, us, tzinfo=_tz_from_code(tz), fold=fold)
        if code == EXT_TIMEDELTA:
            days, seconds, micro = decode(data)
            return dt.timedelta(days=days, seconds=seconds, microseconds=micro)
        if code == EXT_DECIMAL:
            return decimal.Decimal(bytes(data).decode("ascii"))
        if code == EXT_UUID:
            return uuid.UUID(bytes=bytes(data))
        if code == EXT_ENUM:
            name, value = decode(data)
            return self._resolve(name.encode("utf-8"), enum.Enum)(value)
        if code == EXT_BIGINT:
            return int.from_bytes(data, "big", signed=True)
        if code == EXT_COMPLEX:
            real, imag = decode(data)
            return complex(real, imag)
        if code == EXT_BYTEARRAY:
            return bytearray(data)
        if code == EXT_MAP:
            flat = decode(data)
            return dict(zip(flat[::2], flat[1::2], strict=True))
        # [OBJ-034] An unknown ext type is an error, never passed through.
        raise SerializationError(f"msgspec record: unknown ext type {code}")

    def get_class(self, data: bytes) -> type:
        start, end = _str_header(data, 1)
        return self._resolve(bytes(data[start:end]), PersistentBase)

    def get_class_and_state(self, data: bytes) -> tuple[type, Any]:
        start, end = _str_header(data, 1)
        name = data[start:end]
        cls = self._persistent.get(name)
        if cls is None:
            cls = self._resolve(bytes(name), PersistentBase)
        try:
            state = self._decode(memoryview(data)[end:])
        except (msgspec.DecodeError, ValueError, TypeError, OverflowError) as exc:
            # Bad bytes, or ext payloads that do not make a value (month 13, ...).
            raise SerializationError(
                f"malformed msgspec record of {cls.__qualname__}: {exc}"
            ) from exc
        return cls, state


class MsgspecSerializer(Serializer):
    """States as MessagePack via msgspec; loads never run code a record names."""

    name = "msgspec"
    code = MSGSPEC_CODE

    def __init__(self) -> None:
        self._encoder = Encoder()
        self._encode = self._encoder.encode

    def _prefix(self, cls: type) -> bytes:
        prefix = _prefix_cache.get(cls)
        if prefix is None:
            prefix = _prefix_cache[cls] = MSGSPEC_CODE + self._encode(class_name(cls))
        return prefix

    def encode(self, cls: type, state: Any, reference: Reference) -> bytes:
        try:
            prefix = self._prefix(cls)
        except UnsupportedValue as exc:
            exc.attribute = ""
            raise
        walk = _Walk(self._encode, reference)
        if type(state) is dict and all(type(name) is str for name in state):
            convert = walk.value
            converted: Any = {}
            for name, value in state.items():
                try:
                    converted[name] = convert(value)
                except UnsupportedValue as exc:
                    exc.attribute = name
                    raise
        else:
            converted = walk.value(state)
        return prefix + self._encode(converted)

    def decoder(
        self,
        get_ghost: GetGhost,
        registry: ClassRegistry | None,
        class_map: ClassMap | None = None,
    ) -> RecordDecoder:
        return MsgspecDecoder(get_ghost, registry, class_map)

    def explain_failure(self, obj: PersistentBase, state: Any, exc: Exception) -> str:
        what = describe(obj)
        if isinstance(exc, UnsupportedValue):
            if exc.attribute == "":
                return f"cannot store {what} with the msgspec serializer: {exc.reason}"
            where = f"attribute {exc.attribute!r}" if exc.attribute else "its state"
            # [OBJ-035] Name the class and the attribute.
            return (
                f"cannot store {what} with the msgspec serializer: {where} holds a "
                f"{exc.type_name}: {exc.reason} (supported: builtins, bytes, tuples, sets, "
                "datetimes, Decimal, UUID, enums and persistent objects)"
            )
        if isinstance(exc, RecursionError):
            return (
                f"cannot store {what} with the msgspec serializer: its state nests too deeply "
                "or holds a cycle of non-persistent containers (route the cycle through "
                "a persistent object)"
            )
        return f"cannot store {what} with the msgspec serializer: {type(exc).__name__}: {exc}"
