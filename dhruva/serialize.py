"""Turning persistent objects into record bytes and back (spec: object-encoding.md).

The pickle encoding of a record's data (spec OBJ-001 .. OBJ-010):

    data := serializer-code class-pickle state-pickle

``serializer-code`` is one byte, ``P`` (0x50) for this encoding.  The class
pickle is ``pickle.dumps(cls)``; the state pickle is the object's
``__getstate__()``.  Both are written by one pickler, so the state pickle may
refer to the class pickle's memo.  Every persistent object inside the state is
written as a persistent id ``(oid, class)``; the oids of those references,
in first-seen order without repeats, are the record's reference list.

Storages never run any of this: they see ``data`` and ``refs`` as bytes.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterator
from typing import Any

from dhruva.error import FormatError, InvalidObjectReference, SerializationError
from dhruva.persistent import UNSAVED, PersistentBase

PICKLE_CODE = b"P"
"""The serializer code of the pickle encoding (OBJ-002)."""

PICKLE_PROTOCOL = 5


def _describe(obj: PersistentBase) -> str:
    return f"{type(obj)._p_class.__qualname__} (oid {obj._p_format_oid()})"


class _RecordPickler(pickle.Pickler):
    """A pickler whose persistent ids are persistent objects."""

    def __init__(self, file: io.BytesIO, writer: ObjectWriter) -> None:
        super().__init__(file, protocol=PICKLE_PROTOCOL)
        self._writer = writer

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, PersistentBase):
            return None
        return self._writer.reference(obj)


class ObjectWriter:
    """Serializes the objects one commit writes (Durus's name).

    ``reference`` attaches new persistent objects found inside states to the
    connection, giving them oids; ``attached`` lists them so that a failed
    commit can detach them again.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._file = io.BytesIO()
        self._refs: list[bytes] = []
        self._ref_set: set[bytes] = set()
        self.attached: list[PersistentBase] = []
        self.queue: list[PersistentBase] = []

    def reference(self, obj: PersistentBase) -> tuple[bytes, type]:
        """Return the persistent id of ``obj``, attaching it if it is new."""
        connection = obj._p_connection
        if connection is None:
            oid = self.connection.new_oid()
            object.__setattr__(obj, "_p_oid", oid)
            object.__setattr__(obj, "_p_connection", self.connection)
            object.__setattr__(obj, "_p_status", UNSAVED)
            self.attached.append(obj)
            self.queue.append(obj)
        elif connection is not self.connection:
            raise InvalidObjectReference(
                f"{_describe(obj)} belongs to another connection; an object can be stored "
                "in one database connection only (copy it instead)"
            )
        oid = obj._p_oid
        assert oid is not None
        if oid not in self._ref_set:
            self._ref_set.add(oid)
            self._refs.append(oid)
        return (oid, type(obj)._p_class)

    def get_state(self, obj: PersistentBase) -> tuple[bytes, bytes]:
        """Return ``(data, refs)`` for ``obj`` (OBJ-003).

        Raises SerializationError naming the class and attribute when the
        state cannot be pickled, InvalidObjectReference for a foreign object.
        """
        # A fresh pickler per object: clear_memo() costs time proportional to
        # the largest memo seen so far, which a big container makes huge.
        file = self._file = io.BytesIO()
        file.write(PICKLE_CODE)
        self._refs = []
        self._ref_set = set()
        pickler = _RecordPickler(file, self)
        cls = type(obj)._p_class
        state = obj.__getstate__()
        try:
            pickler.dump(cls)
            pickler.dump(state)
        except InvalidObjectReference:
            raise
        except Exception as exc:
            raise SerializationError(_explain_failure(obj, state, exc)) from exc
        return file.getvalue(), b"".join(self._refs)

    def gen_records(self, changed: list[PersistentBase]) -> Iterator[tuple[bytes, bytes, bytes]]:
        """Yield ``(oid, data, refs)`` for the changed objects and every new object they reach."""
        seen: set[bytes] = set()
        queue = self.queue
        queue.extend(changed)
        while queue:
            obj = queue.pop()
            oid = obj._p_oid
            assert oid is not None
            if oid in seen:
                continue
            seen.add(oid)
            data, refs = self.get_state(obj)
            yield oid, data, refs


def _explain_failure(obj: PersistentBase, state: Any, exc: Exception) -> str:
    what = _describe(obj)
    if isinstance(state, dict):
        for name, value in state.items():
            try:
                pickle.dumps(value, protocol=PICKLE_PROTOCOL)
            except Exception as inner:
                if isinstance(value, PersistentBase):
                    continue
                if "persistent" in str(inner).lower():
                    continue
                return (
                    f"cannot store {what}: attribute {name!r} holds a "
                    f"{type(value).__qualname__} that cannot be pickled ({inner})"
                )
    return f"cannot store {what}: {type(exc).__name__}: {exc}"


class _RecordUnpickler(pickle.Unpickler):
    def __init__(
        self,
        file: io.BytesIO,
        persistent_load: Callable[[Any], Any],
        find_class: Callable[[str, str], Any] | None,
    ) -> None:
        super().__init__(file)
        self._load_ref = persistent_load
        self._find_class_hook = find_class

    def persistent_load(self, pid: Any) -> Any:
        return self._load_ref(pid)

    def find_class(self, module: str, name: str) -> Any:
        if self._find_class_hook is not None:
            return self._find_class_hook(module, name)
        return super().find_class(module, name)


class ObjectReader:
    """Turns record data back into classes and states (Durus's name).

    ``get_ghost(oid, cls)`` of the connection resolves persistent ids, so
    references come back as the connection's (possibly ghost) objects.
    """

    def __init__(
        self,
        get_ghost: Callable[[bytes, type], PersistentBase],
        find_class: Callable[[str, str], Any] | None = None,
    ) -> None:
        self._get_ghost = get_ghost
        self._find_class = find_class

    def _persistent_load(self, pid: Any) -> PersistentBase:
        oid, cls = pid
        return self._get_ghost(oid, cls)

    def _unpickler(self, data: bytes) -> _RecordUnpickler:
        if data[:1] != PICKLE_CODE:
            code = data[:1].hex() or "nothing"
            raise FormatError(
                "<record>", None, f"unknown serializer code 0x{code} (this reader knows 'P')"
            )
        file = io.BytesIO(data)
        file.seek(1)
        return _RecordUnpickler(file, self._persistent_load, self._find_class)

    def get_class(self, data: bytes) -> type:
        """Return the class recorded in ``data`` without unpickling the state."""
        cls = self._unpickler(data).load()
        if not (isinstance(cls, type) and issubclass(cls, PersistentBase)):
            raise SerializationError(f"record names {cls!r}, which is not a persistent class")
        return cls

    def get_class_and_state(self, data: bytes) -> tuple[type, Any]:
        """Return ``(class, state)`` from ``data``."""
        unpickler = self._unpickler(data)
        cls = unpickler.load()
        state = unpickler.load()
        return cls, state
