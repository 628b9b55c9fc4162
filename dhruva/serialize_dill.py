"""The dill serializer (code ``D``; spec: object-encoding.md, OBJ-040 .. OBJ-042).

dill extends pickle to lambdas, closures, nested functions and classes
defined in ``__main__``.  The record layout is the pickle one -- a class
pickle, then a state pickle, both written by one pickler, persistent objects
as persistent ids ``(oid, class)`` -- but the pickles are dill's.

dill exists to pickle code, so a dill record is code: it is never loaded by a
restricted connection (OBJ-041), and a database that holds dill records is
only as trustworthy as its file.  ``dill`` is an optional extra:
``pip install 'dhruva[dill]'``.
"""

from __future__ import annotations

import io
from typing import Any

from dhruva.class_registry import ClassMap, ClassRegistry
from dhruva.error import SerializationError
from dhruva.persistent import PersistentBase
from dhruva.serialize import (
    DILL_CODE,
    PICKLE_PROTOCOL,
    GetGhost,
    RecordDecoder,
    Reference,
    Serializer,
    TwoPickleDecoder,
    check_persistent_id,
    explain_pickling_failure,
)

try:
    import dill  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised by test_serializers_missing
    # [OBJ-022] Name the package to install.
    raise SerializationError(
        "this record or connection uses the dill serializer, but the 'dill' package "
        "is not installed; install it with: pip install 'dhruva[dill]' (or: pip install dill)"
    ) from exc


class _DillPickler(dill.Pickler):  # type: ignore[misc]
    def __init__(self, file: io.BytesIO, reference: Reference) -> None:
        super().__init__(file, protocol=PICKLE_PROTOCOL)
        self._reference = reference

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, PersistentBase):
            return None
        return self._reference(obj)


class _DillUnpickler(dill.Unpickler):  # type: ignore[misc]
    def __init__(self, file: io.BytesIO, get_ghost: GetGhost) -> None:
        super().__init__(file)
        self._get_ghost = get_ghost

    def persistent_load(self, pid: Any) -> Any:
        oid, cls = check_persistent_id(pid)
        return self._get_ghost(oid, cls)


class DillDecoder(TwoPickleDecoder):
    """Reads ``D`` records (unrestricted connections only)."""

    def __init__(self, get_ghost: GetGhost) -> None:
        self._get_ghost = get_ghost

    def _unpickler(self, data: bytes) -> _DillUnpickler:
        file = io.BytesIO(data)
        file.seek(1)
        return _DillUnpickler(file, self._get_ghost)


class RefusedDecoder:
    """Stands in for dill on a restricted connection: every record is refused."""

    def _refuse(self) -> SerializationError:
        # [OBJ-041] A dill record carries code; a restricted reader never runs it.
        return SerializationError(
            "refusing to load a record written by the dill serializer: dill records can "
            "run arbitrary code, and this connection loads only allow-listed classes "
            "(open it without allowed_classes= only if you trust the database)"
        )

    def get_class(self, data: bytes) -> type:
        raise self._refuse()

    def get_class_and_state(self, data: bytes) -> tuple[type, Any]:
        raise self._refuse()


class DillSerializer(Serializer):
    """Pickle extended to functions and closures, via dill (optional extra)."""

    name = "dill"
    code = DILL_CODE

    def encode(self, cls: type, state: Any, reference: Reference) -> bytes:
        file = io.BytesIO()
        file.write(DILL_CODE)
        pickler = _DillPickler(file, reference)
        pickler.dump(cls)
        pickler.dump(state)
        return file.getvalue()

    def decoder(
        self,
        get_ghost: GetGhost,
        registry: ClassRegistry | None,
        class_map: ClassMap | None = None,
    ) -> RecordDecoder:
        # dill resolves its own globals; class_map is not applied to dill records.
        if registry is not None:
            return RefusedDecoder()
        return DillDecoder(get_ghost)

    def explain_failure(self, obj: PersistentBase, state: Any, exc: Exception) -> str:
        return explain_pickling_failure(obj, state, exc, dill.dumps, "dill cannot pickle")
