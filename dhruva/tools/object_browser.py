"""A JSON view of a dhruva database for tools and agents (spec: ``spec/mcp.md``).

Theory of operation.  :class:`ObjectBrowser` wraps one open
:class:`~dhruva.connection.Connection` and answers questions about it with
JSON-safe values only (``None``, bool, int, float, str, lists and
str-keyed dicts of those): ``dhruva mcp`` turns each public method into an MCP
tool, but nothing here knows about MCP.

Paths (MCP-010..MCP-015) name a value by the steps from a start object::

    path  := start step*
    start := "root" | "@" OID            OID: the object's oid in decimal
    step  := "/" NAME | "[" JSON "]"      NAME: one or more characters but / [ ]

``/NAME`` looks up the string key NAME in a mapping (a dict, PersistentDict,
BTree or any Mapping) and, when the mapping has no such key or the value is
not a mapping, the attribute NAME of the object's state.  ``[JSON]`` is an
item: a JSON scalar key of a mapping, or an integer index of a sequence.

Values (MCP-020): JSON scalars are themselves; a persistent object is
``{"$ref": OID, "class": NAME}`` and is never loaded just to be described;
everything else (long strings, bytes, containers held inline, instances) is
``{"$type": NAME, "$repr": SHORT, "length": N}``.  Reprs are cut to a fixed
size and never call ``repr`` on a persistent container, whose repr would
format its whole content.

Walks (find, census) follow the reference lists of the committed records
from a start oid, breadth first, and stop after ``max_objects`` records; the
answer says how far the walk got and whether it is complete (MCP-030).

The browser is not thread-safe by itself: every public method holds
``self.lock``, because the MCP SDK runs synchronous tools in worker threads
and a Connection serves one thread at a time.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import reprlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, MutableMapping, MutableSequence, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from itertools import islice
from typing import Any, ParamSpec, TypeVar

from dhruva.class_registry import ClassRegistry
from dhruva.connection import Connection
from dhruva.error import DhruvaError, DhruvaKeyError
from dhruva.persistent import GHOST, SAVED, PersistentBase
from dhruva.serialize import ObjectReader
from dhruva.storage import Storage
from dhruva.utils import ROOT_OID, int8_to_str, iter_oids, str_to_int8

__all__ = ["BrowseError", "ObjectBrowser", "Step", "format_path", "parse_path"]

MAX_STRING = 200
"""Strings longer than this are described, not returned (characters)."""
MAX_REPR = 120
"""Reprs are cut to this many characters."""
MAX_LIMIT = 1000
"""The largest page of entries, references or matches one call returns."""
DEFAULT_MAX_OBJECTS = 100_000
"""Records a walk visits at most unless told otherwise."""

NAME_RE = re.compile(r"[^/\[\]]+")
_STEP_RE = re.compile(r"/([^/\[\]]+)|\[")
_OID_START_RE = re.compile(r"@(\d+)")


class BrowseError(DhruvaError):
    """A request the browser cannot answer: bad path, missing key, refused write."""


# --- paths ---------------------------------------------------------------------------------

Step = tuple[str, Any]
"""One path step: ``("name", str)`` for ``/NAME`` or ``("item", scalar)`` for ``[JSON]``."""


def parse_path(path: str) -> tuple[bytes, list[Step]]:
    """Return ``(start oid, steps)`` for ``path``; raise BrowseError naming the bad offset."""
    text = path.strip()
    if text.startswith("root"):
        start, position = ROOT_OID, 4
    elif match := _OID_START_RE.match(text):
        number = int(match.group(1))
        if number >= 1 << 64:
            raise BrowseError(f"path {path!r}: oid {number} does not fit in 8 bytes")
        start, position = int8_to_str(number), match.end()
    elif text in ("", "/"):
        return ROOT_OID, []
    else:
        raise BrowseError(f"path {path!r} must start with 'root' or '@OID' (e.g. root/users[3])")
    steps: list[Step] = []
    decoder = json.JSONDecoder()
    while position < len(text):
        match = _STEP_RE.match(text, position)
        if match is None:
            raise BrowseError(f"path {path!r}: expected '/NAME' or '[JSON]' at offset {position}")
        if match.group(1) is not None:
            steps.append(("name", match.group(1)))
            position = match.end()
            continue
        try:
            key, end = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError:
            raise BrowseError(f"path {path!r}: bad JSON key at offset {match.end()}") from None
        if end >= len(text) or text[end] != "]":
            raise BrowseError(f"path {path!r}: expected ']' at offset {end}")
        if isinstance(key, list | dict):
            raise BrowseError(f"path {path!r}: a key in [...] must be a JSON scalar")
        steps.append(("item", key))
        position = end + 1
    return start, steps


def format_path(start: bytes, steps: Sequence[Step]) -> str:
    """Return the canonical text of a path (the inverse of :func:`parse_path`)."""
    text = "root" if start == ROOT_OID else f"@{str_to_int8(start)}"
    for kind, value in steps:
        text += f"/{value}" if kind == "name" else f"[{json.dumps(value)}]"
    return text


def _child_step(key: Any, in_mapping: bool) -> Step | None:
    """The step that reaches ``key``, or None when no path can name it."""
    if isinstance(key, str):
        return ("name", key) if NAME_RE.fullmatch(key) else ("item", key)
    if key is None or isinstance(key, bool | int):
        return ("item", key)
    if isinstance(key, float) and math.isfinite(key) and in_mapping:
        return ("item", key)
    return None


# --- describing values -------------------------------------------------------------------------


def class_name(cls: type) -> str:
    """``module.QualName`` of the real class (hidden ghost subclasses resolved)."""
    real = getattr(cls, "_p_class", cls)
    return f"{real.__module__}.{real.__qualname__}"


class _ShortRepr(reprlib.Repr):
    """reprlib with persistent objects shown as ``<Class oid>``, never loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = 60
        self.maxother = 60
        self.maxlevel = 3

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, PersistentBase):
            return PersistentBase.__repr__(x)
        return super().repr1(x, level)

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            text = repr(x)
        except Exception as exc:  # a user's __repr__ may fail; say so instead
            return f"<{class_name(type(x))} (repr failed: {type(exc).__name__})>"
        return text if len(text) <= self.maxother else text[: self.maxother - 3] + "..."


_short_repr = _ShortRepr().repr


def short_repr(value: Any) -> str:
    """A repr of ``value`` at most MAX_REPR characters long."""
    text = _short_repr(value)
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


def oid_number(obj: PersistentBase) -> int | None:
    oid = obj._p_oid
    return None if oid is None else str_to_int8(oid)


def describe(value: Any) -> Any:
    """Return the JSON-safe description of ``value`` (MCP-020)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$type": "builtins.float", "$repr": repr(value)}
    if isinstance(value, str) and len(value) <= MAX_STRING:
        return value
    if isinstance(value, PersistentBase):
        # [MCP-021] A reference is described without loading the object.
        return {"$ref": oid_number(value), "class": class_name(type(value))}
    result: dict[str, Any] = {"$type": class_name(type(value)), "$repr": short_repr(value)}
    if isinstance(value, str | bytes | bytearray | list | tuple | dict | AbstractSet):
        result["length"] = len(value)
    return result


def _state_of(obj: Any) -> dict[str, Any] | None:
    """The attribute state of ``obj`` (loading a ghost), or None if it has none."""
    if isinstance(obj, PersistentBase):
        state = obj.__getstate__()
        return state if isinstance(state, dict) else None
    try:
        return dict(vars(obj))
    except TypeError:
        return None


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        return "sequence"
    if isinstance(value, AbstractSet):
        return "set"
    if isinstance(value, PersistentBase) or _state_of(value) is not None:
        return "object"
    return "value"


def _has_key(mapping: Mapping[Any, Any], key: Any) -> bool:
    try:
        return key in mapping
    except TypeError:  # a BTree of ints asked for a str key cannot compare them
        return False


P = ParamSpec("P")
R = TypeVar("R")


def _locked(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        browser = args[0]
        assert isinstance(browser, ObjectBrowser)
        with browser.lock:
            return method(*args, **kwargs)

    return wrapper


def _page(offset: int, limit: int) -> tuple[int, int]:
    if offset < 0:
        raise BrowseError(f"offset must be >= 0, not {offset}")
    if not 1 <= limit <= MAX_LIMIT:
        raise BrowseError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    return offset, limit


class _Walk:
    """Breadth-first walk of committed records: yields ``(oid, first referrer, data)``.

    Stops after ``max_objects`` records; ``remaining`` is then the number of
    oids found but not visited (0 means the walk saw everything reachable).
    A dangling reference is skipped and counted in ``dangling``.
    """

    def __init__(self, storage: Storage, start: bytes, max_objects: int) -> None:
        self.storage = storage
        self.start = start
        self.max_objects = max_objects
        self.visited = 0
        self.remaining = 0
        self.dangling = 0

    def __iter__(self) -> Iterator[tuple[bytes, bytes | None, bytes]]:
        seen = {self.start}
        todo: deque[tuple[bytes, bytes | None]] = deque([(self.start, None)])
        while todo and self.visited < self.max_objects:
            oid, parent = todo.popleft()
            try:
                record = self.storage.load(oid)
            except DhruvaKeyError:
                self.dangling += 1
                continue
            self.visited += 1
            for ref in iter_oids(record.refs):
                if ref not in seen:
                    seen.add(ref)
                    todo.append((ref, oid))
            self.remaining = len(todo)
            yield oid, parent, record.data
        self.remaining = len(todo)


# --- the browser ---------------------------------------------------------------------------------


class ObjectBrowser:
    """JSON answers about the database behind ``connection`` (spec ``mcp.md``).

    ``allow_writes`` enables :meth:`set_value`, :meth:`delete`,
    :meth:`commit` and :meth:`abort`; without it they raise BrowseError
    (MCP-040).  ``registry`` is the allow-list the connection reads with
    (None: unrestricted); it is used again to read class names during walks.
    ``source`` is shown by :meth:`stats`.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        allow_writes: bool = False,
        registry: ClassRegistry | None = None,
        source: str = "",
    ) -> None:
        self.connection = connection
        self.allow_writes = allow_writes
        self.registry = registry
        self.source = source
        self.lock = threading.RLock()
        self._pending: list[str] = []
        self._reader = ObjectReader(connection.get_ghost, registry=registry)

    # -- resolving paths -------------------------------------------------------------------

    def _start(self, start: bytes) -> Any:
        obj = self.connection.get(start)
        if obj is None:
            raise BrowseError(f"no object with oid {str_to_int8(start)}")
        return obj

    def _step(self, value: Any, step: Step, where: str) -> Any:
        kind, key = step
        if kind == "name":
            if isinstance(value, Mapping) and _has_key(value, key):
                return value[key]
            state = _state_of(value)
            if state is not None and key in state:
                return state[key]
            what = "key or attribute" if isinstance(value, Mapping) else "attribute"
            hint = f"; index a sequence with [{key}]" if _kind(value) == "sequence" else ""
            raise BrowseError(f"{where} ({class_name(type(value))}) has no {what} {key!r}{hint}")
        if isinstance(value, Mapping):
            if _has_key(value, key):
                return value[key]
            raise BrowseError(f"{where} ({class_name(type(value))}) has no key {key!r}")
        if _kind(value) == "sequence":
            if isinstance(key, bool) or not isinstance(key, int):
                raise BrowseError(f"{where} is a sequence; index it with an integer, not {key!r}")
            if not -len(value) <= key < len(value):
                raise BrowseError(f"{where} has {len(value)} items; index {key} is out of range")
            return value[key]
        raise BrowseError(f"{where} ({class_name(type(value))}) cannot be indexed")

    def resolve(self, path: str) -> tuple[Any, PersistentBase | None, str]:
        """Return ``(value, nearest persistent owner, canonical path)`` for ``path``."""
        start, steps = parse_path(path)
        value = self._start(start)
        owner: PersistentBase | None = value
        for index, step in enumerate(steps):
            value = self._step(value, step, format_path(start, steps[:index]))
            if isinstance(value, PersistentBase):
                owner = value
        return value, owner, format_path(start, steps)

    def _before_read(self) -> None:
        # A read-only session has nothing to keep: abort() synchronizes, so
        # commits of other clients of a storage server become visible.
        if not self.allow_writes:
            self.connection.abort()

    # -- reading -------------------------------------------------------------------------

    @_locked
    def browse(self, path: str = "root", offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """Describe the value at ``path`` and list a page of its entries (MCP-022)."""
        offset, limit = _page(offset, limit)
        self._before_read()
        value, _owner, canonical = self.resolve(path)
        start, steps = parse_path(canonical)
        kind = _kind(value)
        result: dict[str, Any] = {"path": canonical, "kind": kind, "class": class_name(type(value))}
        if isinstance(value, PersistentBase):
            result["oid"] = oid_number(value)
        if kind == "value":
            result["value"] = describe(value)
            return result
        entries: list[dict[str, Any]] = []

        def child(step: Step | None) -> str | None:
            return None if step is None else format_path(start, [*steps, step])

        if kind == "mapping":
            result["length"] = len(value)
            for key, item in islice(value.items(), offset, offset + limit + 1):
                step = _child_step(key, in_mapping=True)
                entries.append({"key": describe(key), "path": child(step), "value": describe(item)})
        elif kind == "sequence":
            result["length"] = len(value)
            for index, item in islice(enumerate(value), offset, offset + limit + 1):
                entries.append(
                    {"index": index, "path": child(("item", index)), "value": describe(item)}
                )
        elif kind == "set":
            result["length"] = len(value)
            for item in islice(value, offset, offset + limit + 1):
                entries.append({"value": describe(item)})
        else:
            state = _state_of(value) or {}
            result["length"] = len(state)
            for name, item in islice(state.items(), offset, offset + limit + 1):
                entries.append(
                    {"name": name, "path": child(_child_step(name, False)), "value": describe(item)}
                )
        result.update(
            offset=offset, limit=limit, more=len(entries) > limit, entries=entries[:limit]
        )
        return result

    def _record_class(self, data: bytes) -> str:
        try:
            return class_name(self._reader.get_class(data))
        except (DhruvaError, ImportError, AttributeError) as exc:
            # [MCP-032] A record whose class cannot be read is reported, not fatal.
            return f"<unreadable: {exc}>"[:MAX_REPR]

    @_locked
    def inspect(
        self, path: str | None = None, oid: int | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """Class, oid, state, references and record size of one object (MCP-023)."""
        _page(0, limit)
        self._before_read()
        if (path is None) == (oid is None):
            raise BrowseError("give exactly one of path or oid")
        value, _owner, canonical = self.resolve(path if path is not None else f"@{oid}")
        if not isinstance(value, PersistentBase):
            raise BrowseError(
                f"{canonical} is a {class_name(type(value))}, not a persistent object; browse it"
            )
        number = oid_number(value)
        result: dict[str, Any] = {
            "path": canonical,
            "oid": number,
            "class": class_name(type(value)),
        }
        status = value._p_status
        state = _state_of(value)
        result["status"] = "ghost" if status == GHOST else "saved" if status == SAVED else "changed"
        result["attributes"] = {str(k): describe(v) for k, v in (state or {}).items()}
        if value._p_oid is None:
            result.update(record_size=None, references=[], reference_count=0)
            return result
        try:
            record = self.connection.get_storage().load(value._p_oid)
        except DhruvaKeyError:
            result.update(record_size=None, references=[], reference_count=0)
            return result
        refs = list(iter_oids(record.refs))
        references = []
        storage = self.connection.get_storage()
        for ref in refs[:limit]:
            try:
                ref_class = self._record_class(storage.load(ref).data)
            except DhruvaKeyError:
                ref_class = None  # a dangling reference
            references.append({"oid": str_to_int8(ref), "class": ref_class})
        result.update(
            record_size=len(record.data),
            serializer=record.data[:1].decode("latin-1"),
            reference_count=len(refs),
            references=references,
        )
        return result

    def _check_walk(self, max_objects: int) -> None:
        if max_objects < 1:
            raise BrowseError(f"max_objects must be >= 1, not {max_objects}")

    @_locked
    def find_instances(
        self,
        class_name: str,
        limit: int = 20,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        start: str = "root",
    ) -> dict[str, Any]:
        """Objects whose class is ``class_name`` (full or bare name), walking from ``start``."""
        _page(0, limit)
        self._check_walk(max_objects)
        self._before_read()
        first, _owner, canonical = self.resolve(start)
        if not isinstance(first, PersistentBase) or first._p_oid is None:
            raise BrowseError(f"{canonical} is not a stored persistent object")
        wanted = class_name.strip()
        matches: list[dict[str, Any]] = []
        walk = _Walk(self.connection.get_storage(), first._p_oid, max_objects)
        for oid, parent, data in walk:
            name = self._record_class(data)
            if name == wanted or name.rsplit(".", 1)[-1] == wanted:
                referrer = None if parent is None else str_to_int8(parent)
                matches.append({"oid": str_to_int8(oid), "class": name, "referrer": referrer})
                if len(matches) >= limit:
                    break
        # [MCP-030] The answer says how far the walk got and why it stopped.
        return {
            "class": wanted,
            "start": canonical,
            "matches": matches,
            "visited": walk.visited,
            "complete": walk.remaining == 0,
            "limit_reached": len(matches) >= limit,
            "max_objects_reached": walk.visited >= max_objects and walk.remaining > 0,
        }

    @_locked
    def census(self, max_objects: int = DEFAULT_MAX_OBJECTS) -> dict[str, Any]:
        """Objects reachable from the root counted by class, with record bytes (MCP-031)."""
        self._check_walk(max_objects)
        self._before_read()
        counts: dict[str, list[int]] = {}
        total_bytes = 0
        walk = _Walk(self.connection.get_storage(), ROOT_OID, max_objects)
        for _oid, _parent, data in walk:
            total_bytes += len(data)
            entry = counts.setdefault(self._record_class(data), [0, 0])
            entry[0] += 1
            entry[1] += len(data)
        ordered = sorted(counts.items(), key=lambda item: (-item[1][0], item[0]))
        classes = [{"class": name, "count": n, "bytes": size} for name, (n, size) in ordered]
        stored = self.connection.get_storage().get_size()
        complete = walk.remaining == 0
        # [MCP-030] A census cut short by max_objects says so.
        return {
            "classes": classes,
            "reachable": walk.visited,
            "reachable_bytes": total_bytes,
            "dangling_references": walk.dangling,
            "stored": stored,
            "complete": complete,
            "unreachable": stored - walk.visited if complete else None,
        }

    @_locked
    def stats(self) -> dict[str, Any]:
        """The storage, its size, the serializer, and this session's mode."""
        self._before_read()
        storage = self.connection.get_storage()
        path = getattr(storage, "path", None)
        file_size = None
        if isinstance(path, str):
            try:
                file_size = os.path.getsize(path)
            except OSError:
                pass
        return {
            "source": self.source,
            "storage": type(storage).__name__,
            "objects": storage.get_size(),
            "file_size_bytes": file_size,
            "capabilities": sorted(storage.capabilities),
            "serializer": self.connection.get_serializer().name,
            "restricted": self.registry is not None,
            "writes_allowed": self.allow_writes,
            "pending_changes": len(self._pending),
        }

    @_locked
    def list_transactions(self, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """The newest transactions first (file storages only; MCP-033)."""
        offset, limit = _page(offset, limit)
        self._before_read()
        storage = self.connection.get_storage()
        iterate = getattr(storage, "iter_transactions", None)
        if iterate is None:
            raise BrowseError(
                f"{type(storage).__name__} does not list transactions; open the file instead"
            )
        newest: deque[tuple[int, int, int, int]] = deque(maxlen=offset + limit)
        total = 0
        for transaction in iterate():
            newest.append(transaction)
            total += 1
        page = list(reversed(newest))[offset : offset + limit]
        items = [
            {
                "tid": tid,
                "time": datetime.fromtimestamp(time_us / 1e6, UTC).isoformat(),
                "time_us": time_us,
                "offset": where,
                "length": length,
            }
            for tid, time_us, where, length in page
        ]
        return {"transactions": items, "total": total, "offset": offset, "limit": limit}

    # -- writing -------------------------------------------------------------------------

    def _check_writes(self) -> None:
        if not self.allow_writes:
            # [MCP-040] Writes need --allow-writes.
            raise BrowseError("this session is read-only; start 'dhruva mcp' with --allow-writes")

    def _from_json(self, value: Any, persistent: bool) -> Any:
        if isinstance(value, dict):
            if set(value) == {"$ref"}:
                ref = value["$ref"]
                if isinstance(ref, bool) or not isinstance(ref, int) or not 0 <= ref < 1 << 64:
                    raise BrowseError(f"$ref must be an oid (an integer), not {ref!r}")
                return self._start(int8_to_str(ref))
            items = {str(k): self._from_json(v, persistent) for k, v in value.items()}
            if persistent:
                from dhruva.persistent_dict import PersistentDict

                return PersistentDict(items)
            return items
        if isinstance(value, list):
            values = [self._from_json(v, persistent) for v in value]
            if persistent:
                from dhruva.persistent_list import PersistentList

                return PersistentList(values)
            return values
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise BrowseError(f"not a JSON value: {type(value).__name__}")

    def _parent(self, path: str) -> tuple[Any, PersistentBase | None, Step, str]:
        start, steps = parse_path(path)
        if not steps:
            raise BrowseError("a write needs a path with at least one step after the start object")
        parent, owner, _ = self.resolve(format_path(start, steps[:-1]))
        return parent, owner, steps[-1], format_path(start, steps)

    def _mutate(self, path: str, value: Any, delete: bool) -> str:
        parent, owner, (kind, key), canonical = self._parent(path)
        if isinstance(parent, Mapping):
            # Writes through a mapping always mean its keys: ``root/data``
            # must never replace a PersistentDict's own ``data`` attribute.
            if not isinstance(parent, MutableMapping):
                raise BrowseError(f"{canonical}: a {class_name(type(parent))} cannot be changed")
            if delete:
                if not _has_key(parent, key):
                    raise BrowseError(f"{canonical}: no such key")
                del parent[key]
            else:
                parent[key] = value
        elif kind == "item":
            if not isinstance(parent, MutableSequence):
                kind_name = class_name(type(parent))
                raise BrowseError(f"{canonical}: a {kind_name} cannot be changed by item")
            if (
                isinstance(key, bool)
                or not isinstance(key, int)
                or not -len(parent) <= key < len(parent)
            ):
                raise BrowseError(f"{canonical}: index out of range ({len(parent)} items)")
            if delete:
                del parent[key]
            else:
                parent[key] = value
        else:
            state = _state_of(parent)
            if state is None:
                raise BrowseError(f"{canonical}: a {class_name(type(parent))} has no attributes")
            if not key.isidentifier() or key.startswith(("_p_", "__")):
                raise BrowseError(f"{canonical}: {key!r} is not an attribute name that may be set")
            if delete:
                if key not in state:
                    raise BrowseError(f"{canonical}: no such attribute")
                delattr(parent, key)
            else:
                setattr(parent, key, value)
        if not isinstance(parent, PersistentBase):
            # The change is inside a plain container held by ``owner``: only
            # the owner's record can carry it.
            if owner is None:
                raise BrowseError(f"{canonical}: no persistent object holds this value")
            owner._p_note_change()
        return canonical

    @_locked
    def set_value(self, path: str, value: Any, persistent: bool = False) -> dict[str, Any]:
        """Set the item or attribute at ``path`` to a JSON value; commit() writes it (MCP-041)."""
        self._check_writes()
        canonical = self._mutate(path, self._from_json(value, persistent), delete=False)
        self._pending.append(f"set {canonical}")
        return {"path": canonical, "pending_changes": len(self._pending)}

    @_locked
    def delete(self, path: str) -> dict[str, Any]:
        """Delete the item or attribute at ``path``; commit() writes it."""
        self._check_writes()
        canonical = self._mutate(path, None, delete=True)
        self._pending.append(f"delete {canonical}")
        return {"path": canonical, "pending_changes": len(self._pending)}

    @_locked
    def commit(self) -> dict[str, Any]:
        """Commit every change since the last commit or abort (MCP-042)."""
        self._check_writes()
        done = list(self._pending)
        try:
            self.connection.commit()
        except DhruvaError:
            self.connection.abort()
            self._pending.clear()
            raise
        self._pending.clear()
        return {"committed": done}

    @_locked
    def abort(self) -> dict[str, Any]:
        """Drop every change since the last commit or abort."""
        self._check_writes()
        dropped = list(self._pending)
        self.connection.abort()
        self._pending.clear()
        return {"aborted": dropped}
