"""Turning persistent objects into record bytes and back (spec: object-encoding.md).

Theory of operation.  A record's data starts with one byte, the serializer
code (OBJ-001), and the rest is that serializer's payload:

    data := serializer-code payload

==========  ==============  ==========================================
code        serializer      module
==========  ==============  ==========================================
``P`` 0x50  pickle          here (also "pickle-restricted": same bytes)
``M`` 0x4D  msgspec         ``dhruva.serialize_msgspec`` (optional)
``D`` 0x44  dill            ``dhruva.serialize_dill`` (optional)
==========  ==============  ==========================================

Writing: a Connection has one :class:`Serializer` that writes every record
of its commits (:class:`ObjectWriter`).  Reading: :class:`ObjectReader`
dispatches on each record's code with one dict lookup, so a database may mix
serializers; the decoder of an optional serializer is created the first time
one of its records is read, and a missing package is reported then, naming
what to install (OBJ-022).

Restricted reading: when the reader has a :class:`ClassRegistry`, every
class a record names is checked against it before anything is imported or
called (OBJ-020); pickle records go through a ``find_class`` that asks the
registry, dill records are refused outright (dill exists to pickle code).

Storages never run any of this: they see ``data`` and ``refs`` as bytes.
"""

from __future__ import annotations

import copyreg
import functools
import io
import pickle
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from dhruva import persistent, speedups
from dhruva.class_registry import AllowEntry, ClassMap, ClassRegistry, as_registry
from dhruva.error import (
    FormatError,
    InvalidObjectReference,
    MissingClassError,
    SerializationError,
)
from dhruva.persistent import UNSAVED, PersistentBase

PICKLE_CODE = b"P"
"""The serializer code of the pickle encoding (OBJ-002)."""
MSGSPEC_CODE = b"M"
"""The serializer code of the msgspec (MessagePack) encoding (OBJ-030)."""
DILL_CODE = b"D"
"""The serializer code of the dill encoding (OBJ-040)."""

PICKLE_PROTOCOL = 5
_loads = pickle.loads
_c_read_pickle_state = speedups.read_pickle_state
_c_state_reader = speedups.state_reader
_c_persistent_id = speedups.persistent_id
_c_attach = speedups.attach
_c_reference = speedups.reference
_c_encode_plain = speedups.encode_plain
_c_encode_records = speedups.encode_records
#: Persistent's own ``__getstate__`` (its ``__dict__``): what the C records loop reads itself.
_default_getstate = persistent.Persistent.__dict__["__getstate__"]
#: PersistentObject's (its slots' values): a state the C loop asks for, then writes itself.
_slots_getstate = persistent.PersistentObject.__dict__["__getstate__"]
#: The bound of each per-class cache below (class pickles, verdicts, referencing classes).
_CLASS_CACHE_MAX = 4096

Reference = Callable[[PersistentBase], tuple[bytes, type]]
"""Called by an encoder for each persistent object in a state: returns ``(oid, class)``."""
GetGhost = Callable[[bytes, type], PersistentBase]
"""The connection's ``get_ghost(oid, class)``."""


def describe(obj: PersistentBase) -> str:
    """``"Class (oid N)"`` for error messages; never loads a ghost."""
    return f"{type(obj)._p_class.__qualname__} (oid {obj._p_format_oid()})"


class RecordDecoder(Protocol):
    """Reads the records of one serializer for one connection."""

    def get_class(self, data: bytes) -> type:
        """Return the persistent class a record names, without reading its state."""
        ...

    def get_class_and_state(self, data: bytes) -> tuple[type, Any]:
        """Return ``(class, state)``; references in the state become ghosts."""
        ...


#: A decoder MAY also have ``get_state(data)``, returning the state alone
#: (the load path knows the class already); ObjectReader falls back to
#: ``get_class_and_state(data)[1]`` for one that has not.


class Serializer:
    """One way of turning states into record data (subclass it; spec OBJ-001).

    ``code`` is the one-byte serializer code written first in every record;
    ``name`` is what ``Connection(serializer=...)`` accepts; ``restricted``
    asks the Connection to read with a ClassRegistry even when no
    ``allowed_classes`` were given.
    """

    name: str = ""
    code: bytes = b""
    restricted: bool = False

    def encode(self, cls: type, state: Any, reference: Reference) -> bytes:
        """Return the record data (code byte first) for ``cls`` and ``state``.

        ``reference(obj)`` MUST be called for every persistent object in the
        state, in the order written.  Any exception other than
        InvalidObjectReference is turned into a SerializationError by the
        writer, using :meth:`explain_failure`.
        """
        raise NotImplementedError

    def decoder(
        self,
        get_ghost: GetGhost,
        registry: ClassRegistry | None,
        class_map: ClassMap | None = None,
    ) -> RecordDecoder:
        """Return a decoder for this serializer's records (restricted when ``registry``).

        ``class_map`` renames classes before they are resolved (OBJ-050).
        """
        raise NotImplementedError

    def explain_failure(self, obj: PersistentBase, state: Any, exc: Exception) -> str:
        """Return the message of the SerializationError for a failed ``encode``."""
        return f"cannot store {describe(obj)}: {type(exc).__name__}: {exc}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# -- pickle ------------------------------------------------------------------------------


def persistent_id_function(reference: Reference) -> Callable[[Any], Any]:
    """The ``persistent_id`` of a record pickler: ``reference(obj)`` for persistent objects.

    Persistent objects become persistent ids (OBJ-004).
    The pickler calls it for every object it writes (every int and str of
    every state), so it is a function with its names bound as defaults
    rather than a method of a Pickler subclass; and a plain pickler that
    takes it as an attribute is built by the C constructor alone, without a
    Python ``__init__``.  With dhruva.speedups it is the C version, bound
    to ``reference`` with functools.partial.
    """
    if _c_persistent_id is not None:
        return functools.partial(_c_persistent_id, PersistentBase, reference)

    def persistent_id(obj: Any, _isinstance: Any = isinstance, _base: type = PersistentBase) -> Any:
        if _isinstance(obj, _base):
            return reference(obj)
        return None

    return persistent_id


def check_persistent_id(pid: Any) -> tuple[bytes, type]:
    """Return ``pid`` as ``(oid, class)`` or raise SerializationError (OBJ-004)."""
    if (
        type(pid) is tuple
        and len(pid) == 2
        and type(pid[0]) is bytes
        and len(pid[0]) == 8
        and isinstance(pid[1], type)
        and issubclass(pid[1], PersistentBase)
    ):
        return pid
    raise SerializationError(f"a record holds a malformed persistent reference {pid!r:.80}")


_CLASS_PREFIXES: dict[type, bytes] = {}


def _class_prefix(cls: type) -> bytes:
    """``P`` and the class pickle of ``cls`` that dhruva writes (OBJ-002, OBJ-009).

    Pickled in pickle's "fast" mode, which memoizes nothing: the state
    pickle that follows is written by a fresh pickler, so it refers to
    nothing of the class pickle and a reader may read it alone.  Made once
    per class (pickle still checks that the class is importable by its name).
    """
    prefix = _CLASS_PREFIXES.get(cls)
    if prefix is None:
        file = io.BytesIO()
        file.write(PICKLE_CODE)
        pickler = pickle.Pickler(file, PICKLE_PROTOCOL)
        pickler.fast = True
        pickler.dump(cls)
        prefix = file.getvalue()
        if len(_CLASS_PREFIXES) >= _CLASS_CACHE_MAX:
            _CLASS_PREFIXES.clear()
        _CLASS_PREFIXES[cls] = prefix
    return prefix


class _StatePickler(pickle.Pickler):
    """The C Pickler, subclassed so that an instance takes a ``persistent_id`` of its own.

    Python 3.11 and 3.12 let a ``pickle.Pickler`` instance be given one;
    3.13 makes the attribute read-only there, but an instance of a subclass
    keeps it in its ``__dict__``, and the C pickler calls it from there.
    """


_REFERENCING_CLASSES: set[type] = set()
_dumps = pickle.dumps
_dispatch_seen = -1  # the size of copyreg.dispatch_table when last scanned
_dispatch_sound = True  # and whether it named no persistent class then


def _probe_is_sound() -> bool:
    """Whether pickling a persistent object is sure to reach the probe (its ``__reduce_ex__``).

    Not when a persistent class defines its own ``__reduce_ex__``, or when
    ``copyreg.dispatch_table`` (which plain pickling consults first) names
    a persistent class; the table is scanned again whenever it changes size.
    """
    global _dispatch_seen, _dispatch_sound
    if persistent.reduce_overridden:
        return False
    table = copyreg.dispatch_table
    if len(table) != _dispatch_seen:
        _dispatch_sound = not any(
            isinstance(t, type) and issubclass(t, PersistentBase) for t in table
        )
        _dispatch_seen = len(table)
    return _dispatch_sound


_FRAMED_PROTO_5 = b"\x80\x05\x95"  # PROTO 5, FRAME: how a protocol 5 class pickle starts
_MEMO_FREE_CLASS_OPS = ("PROTO", "FRAME", "SHORT_BINUNICODE", "SHORT_BINUNICODE", "STACK_GLOBAL")


def _is_memo_free_class_pickle(class_pickle: bytes) -> bool:
    """Whether ``class_pickle`` is exactly OBJ-009's form: nothing memoized, one frame.

    PROTO 5, FRAME (covering the rest), two short strings, STACK_GLOBAL,
    STOP, and nothing after it.  A record whose class pickle has this form
    has a state pickle that refers to nothing before it (the memo is empty
    where it starts), so the state can be read by a fresh unpickler.
    """
    import pickletools

    try:
        ops = list(pickletools.genops(class_pickle))
    except Exception:
        return False
    names = tuple(op.name for op, _arg, _pos in ops)
    if names[:-1] != _MEMO_FREE_CLASS_OPS or names[-1] != "STOP":
        return False
    frame_length = ops[1][1]
    stop_position = ops[-1][2]
    return stop_position == len(class_pickle) - 1 and frame_length == len(class_pickle) - 11


class _RecordUnpickler(pickle.Unpickler):
    """The unpickler of ``P`` records: references become ghosts, globals may be checked.

    Its configuration lives in class attributes, so that making one per
    record is only the C constructor (no Python ``__init__``): a decoder
    makes one subclass of it with :meth:`bound` and instantiates that.
    """

    _get_ghost: GetGhost
    _find_class_hook: Callable[[str, str], Any] | None = None
    _class_map: ClassMap | None = None

    @classmethod
    def bound(
        cls,
        get_ghost: GetGhost,
        find_class: Callable[[str, str], Any] | None,
        class_map: ClassMap | None = None,
    ) -> type[_RecordUnpickler]:
        """A subclass whose instances use ``get_ghost``, ``find_class`` and ``class_map``."""
        namespace = {
            "_get_ghost": staticmethod(get_ghost),
            "_find_class_hook": None if find_class is None else staticmethod(find_class),
            "_class_map": class_map,
        }
        return type(cls.__name__, (cls,), namespace)

    def persistent_load(self, pid: Any) -> Any:
        # The shape test of check_persistent_id, inline: this runs for every
        # reference of every record loaded.
        if type(pid) is tuple and len(pid) == 2:
            oid, cls = pid
            if (
                type(oid) is bytes
                and len(oid) == 8
                and isinstance(cls, type)
                and issubclass(cls, PersistentBase)
            ):
                return self._get_ghost(oid, cls)
        oid, cls = check_persistent_id(pid)  # raises SerializationError
        return self._get_ghost(oid, cls)

    def find_class(self, module: str, name: str) -> Any:
        if self._class_map is not None:
            # [OBJ-050] Renamed classes are translated before anything is resolved.
            target = self._class_map.translate(module, name)
            if isinstance(target, type):
                if self._find_class_hook is None:
                    return target
                # A restricted reader judges a mapped class by its own name.
                module, name = target.__module__, target.__qualname__
            else:
                module, name = target
        try:
            if self._find_class_hook is not None:
                return self._find_class_hook(module, name)
            return super().find_class(module, name)
        except (ImportError, AttributeError) as exc:
            # [OBJ-051] Say which class is missing, and how to map it.
            raise MissingClassError(f"{module}.{name}", str(exc)) from exc


class TwoPickleDecoder:
    """Base of the decoders whose payload is a class pickle, then a state pickle.

    The pickle (OBJ-002) and dill (OBJ-040) records share this layout;
    a subclass supplies ``_unpickler(data)``, an unpickler positioned just
    after the serializer code byte.
    """

    def _unpickler(self, data: bytes) -> pickle.Unpickler:
        raise NotImplementedError

    def get_class(self, data: bytes) -> type:
        cls = self._unpickler(data).load()
        return check_record_class(cls)

    def get_class_and_state(self, data: bytes) -> tuple[type, Any]:
        unpickler = self._unpickler(data)
        cls = unpickler.load()
        state = unpickler.load()
        return cls, state

    def get_state(self, data: bytes) -> Any:
        """Return the state alone (one unpickler; the class pickle is read and dropped).

        The class pickle cannot be skipped: the pickler's memo spans both
        pickles, so the state pickle may refer to objects (the class, its
        name strings) that only the class pickle defines.
        """
        unpickler = self._unpickler(data)
        unpickler.load()
        return unpickler.load()


class PickleDecoder(TwoPickleDecoder):
    """Reads ``P`` records; with ``find_class`` every global goes through it (OBJ-020)."""

    def __init__(
        self,
        get_ghost: GetGhost,
        find_class: Callable[[str, str], Any] | None,
        class_map: ClassMap | None = None,
    ) -> None:
        self._get_ghost = get_ghost
        self._find_class = find_class
        self._class_map = class_map or None
        self._unpickler_class = _RecordUnpickler.bound(get_ghost, find_class, self._class_map)
        # pickle.loads resolves globals exactly as this decoder does.
        self._plain = find_class is None and self._class_map is None
        self._class_pickles: dict[bytes, bool] = {}

    def _unpickler(self, data: bytes) -> _RecordUnpickler:
        file = io.BytesIO(data)
        file.seek(1)
        return self._unpickler_class(file)

    def get_state(self, data: bytes) -> Any:
        # One C-constructed unpickler, the class pickle read and dropped,
        # the state returned: any P record, whoever wrote it.
        file = io.BytesIO(data)
        file.seek(1)
        unpickler = self._unpickler_class(file)
        unpickler.load()
        return unpickler.load()

    def state_reader(self) -> Callable[[bytes, bytes | None], Any]:
        """Return :meth:`read_state`, or its C version where that applies (dhruva.speedups).

        The C version does read_state's fast case (no references, globals
        resolved as pickle's own) and calls read_state for anything else.
        """
        if _c_read_pickle_state is not None and _c_state_reader is not None and self._plain:
            # read_pickle_state with these two bound; the ghost hook's load also
            # decodes a dict state through it straight into the object's __dict__.
            return _c_state_reader(self._class_pickles, self.read_state)
        return self.read_state

    def read_state(self, data: bytes, refs: bytes | None) -> Any:
        """Return the state of ``data``; ``refs`` is its reference list (None: unknown).

        The load hot path (Connection.load_state).  A record whose class
        pickle is memo-free (OBJ-009, what dhruva writes) has its state
        pickle read alone, by a fresh unpickler started after the class
        pickle; and when the record references nothing and globals resolve
        as pickle's own (no restriction, no class map), by ``pickle.loads``,
        which builds no Python-level unpickler at all.  The class pickle is
        judged once per distinct byte string (through this decoder's
        ``find_class``, so a restricted reader still refuses a forbidden
        class) and remembered.  Anything else, and any failure of the fast
        reading, goes to :meth:`get_state`, whose answer or error is the
        authoritative one.
        """
        if data[1:4] == _FRAMED_PROTO_5:
            end = 12 + int.from_bytes(data[4:12], "little")  # pickle's own little-endian integer
            class_pickle = data[1:end]
            memo_free = self._class_pickles.get(class_pickle)
            if memo_free is None:
                memo_free = self._learn_class_pickle(class_pickle)
            if memo_free:
                if refs is not None and not refs and self._plain:
                    try:
                        return _loads(data[end:])
                    except (pickle.UnpicklingError, ImportError, AttributeError):
                        pass  # get_state below raises the error it would have raised
                else:
                    file = io.BytesIO(data)
                    file.seek(end)
                    return self._unpickler_class(file).load()
        return self.get_state(data)

    def _learn_class_pickle(self, class_pickle: bytes) -> bool:
        """Judge ``class_pickle`` (see :meth:`read_state`) and remember the verdict."""
        # Resolved through this decoder: a refused class raises here, as get_state would.
        self._unpickler_class(io.BytesIO(class_pickle)).load()
        memo_free = _is_memo_free_class_pickle(class_pickle)
        if len(self._class_pickles) >= _CLASS_CACHE_MAX:
            self._class_pickles.clear()
        self._class_pickles[class_pickle] = memo_free
        return memo_free


def check_record_class(cls: Any) -> type:
    """Return ``cls`` if it is a persistent class, else raise SerializationError."""
    if not (isinstance(cls, type) and issubclass(cls, PersistentBase)):
        raise SerializationError(f"record names {cls!r}, which is not a persistent class")
    return cls


class PickleSerializer(Serializer):
    """The default serializer: pickle protocol 5 (OBJ-002 .. OBJ-008).

    ``PickleSerializer(restricted=True)`` ("pickle-restricted") writes the
    same bytes but makes the Connection read every record through an
    allow-list (OBJ-020).
    """

    code = PICKLE_CODE

    def __init__(self, restricted: bool = False) -> None:
        self.restricted = restricted
        self.name = "pickle-restricted" if restricted else "pickle"

    def encode(self, cls: type, state: Any, reference: Reference) -> bytes:
        # [OBJ-009] The code and the memo-free class pickle, made once per
        # class; then the state by a fresh pickler (clear_memo() would cost
        # time proportional to the largest memo seen so far).
        prefix = _CLASS_PREFIXES.get(cls) or _class_prefix(cls)
        if _c_encode_plain is not None:
            # A state of plain data (ints, strs, lists, dicts...) holds no
            # persistent object: the same bytes as below, without the probe.
            data = _c_encode_plain(prefix, state, _dumps)
            if data is not None:
                return data
        if cls not in _REFERENCING_CLASSES and (
            # _probe_is_sound(), its answer when nothing changed since it last ran
            (
                _dispatch_sound
                and not persistent.reduce_overridden
                and len(copyreg.dispatch_table) == _dispatch_seen
            )
            or _probe_is_sound()
        ):
            # A state without persistent objects pickles to the same bytes
            # with or without persistent_id; plain dumps makes no Python call
            # per value.  A persistent object inside stops it (ReferenceFound).
            probe = persistent.reference_probe
            probe.active = True
            try:
                return prefix + _dumps(state, PICKLE_PROTOCOL)
            except persistent.ReferenceFound:
                # This class's states reference objects: go straight to the
                # pickler with persistent ids next time.
                if len(_REFERENCING_CLASSES) >= _CLASS_CACHE_MAX:
                    _REFERENCING_CLASSES.clear()
                _REFERENCING_CLASSES.add(cls)
            finally:
                probe.active = False
        file = io.BytesIO()
        file.write(prefix)
        pickler = _StatePickler(file, PICKLE_PROTOCOL)
        # The C Pickler takes persistent_id as an instance attribute (a
        # subclass's instance: Python 3.13 refuses it on the base class's).
        pickler.persistent_id = persistent_id_function(reference)  # type: ignore[method-assign]
        pickler.dump(state)
        return file.getvalue()

    def decoder(
        self,
        get_ghost: GetGhost,
        registry: ClassRegistry | None,
        class_map: ClassMap | None = None,
    ) -> RecordDecoder:
        # [OBJ-020] A restricted reader resolves every global through the registry.
        find_class = None if registry is None else registry.resolve
        return PickleDecoder(get_ghost, find_class, class_map)

    def explain_failure(self, obj: PersistentBase, state: Any, exc: Exception) -> str:
        return explain_pickling_failure(obj, state, exc, pickle.dumps, "cannot be pickled")


def explain_pickling_failure(
    obj: PersistentBase,
    state: Any,
    exc: Exception,
    dumps: Callable[..., bytes],
    inability: str,
) -> str:
    """Return the OBJ-008 message for a pickle-like ``encode`` that raised ``exc``.

    When ``state`` is a dict, each non-persistent value is pickled alone
    with ``dumps`` to find the attribute at fault; the message then names
    it and says the value's type ``inability`` (e.g. "cannot be pickled").
    A failure that only comes from a persistent reference (no
    ``persistent_id`` outside a record pickler) is not the culprit.
    """
    what = describe(obj)
    if isinstance(state, dict):
        for name, value in state.items():
            if isinstance(value, PersistentBase):
                continue
            try:
                dumps(value, protocol=PICKLE_PROTOCOL)
            except Exception as inner:
                if "persistent" in str(inner).lower():
                    continue
                return (
                    f"cannot store {what}: attribute {name!r} holds a "
                    f"{type(value).__qualname__} that {inability} ({inner})"
                )
    return f"cannot store {what}: {type(exc).__name__}: {exc}"


# -- choosing a serializer -------------------------------------------------------------------


def _load_msgspec() -> Serializer:
    from dhruva.serialize_msgspec import MsgspecSerializer

    return MsgspecSerializer()


def _load_dill() -> Serializer:
    from dhruva.serialize_dill import DillSerializer

    return DillSerializer()


_BY_NAME: dict[str, Callable[[], Serializer]] = {
    "pickle": PickleSerializer,
    "pickle-restricted": lambda: PickleSerializer(restricted=True),
    "msgspec": _load_msgspec,
    "dill": _load_dill,
}
_BY_CODE: dict[bytes, Callable[[], Serializer]] = {
    PICKLE_CODE: PickleSerializer,
    MSGSPEC_CODE: _load_msgspec,
    DILL_CODE: _load_dill,
}
SERIALIZER_NAMES: tuple[str, ...] = tuple(_BY_NAME)
"""The names ``Connection(serializer=...)`` and ``dhruva --serializer`` accept."""


def get_serializer(name: str | Serializer) -> Serializer:
    """Return the serializer called ``name`` (or ``name`` itself if it is one).

    Raises ValueError for an unknown name, SerializationError naming the
    package to install when an optional serializer's package is missing.
    """
    if isinstance(name, Serializer):
        return name
    factory = _BY_NAME.get(name)
    if factory is None:
        raise ValueError(
            f"unknown serializer {name!r}; choose one of {', '.join(SERIALIZER_NAMES)}"
        )
    return factory()


def serializer_for_code(code: bytes) -> Serializer:
    """Return the serializer whose records start with ``code`` (OBJ-001).

    Raises FormatError naming an unknown code, SerializationError naming
    the package to install for a known code whose package is missing.
    """
    factory = _BY_CODE.get(code)
    if factory is None:
        # [OBJ-001] Name the code; never guess.
        shown = code.hex() or "nothing"
        known = ", ".join(repr(c.decode()) for c in _BY_CODE)
        raise FormatError(
            "<record>", None, f"unknown serializer code 0x{shown} (this reader knows {known})"
        )
    return factory()


def select_serializer(requested: str | Serializer | None, root_data: bytes | None) -> Serializer:
    """Return the serializer a Connection writes with (OBJ-023).

    An explicit ``requested`` serializer wins.  Otherwise the serializer that
    wrote the root record (``root_data``) is the database's default, and a
    new database (no root yet) gets pickle.
    """
    if requested is not None:
        return get_serializer(requested)
    if root_data:
        # [OBJ-023] The root record's code is the database's default serializer.
        return serializer_for_code(root_data[:1])
    return PickleSerializer()


def reading_registry(
    serializer: Serializer, allowed_classes: ClassRegistry | list[AllowEntry] | None
) -> ClassRegistry | None:
    """Return the registry a Connection reads through, or None for unrestricted reading."""
    registry = as_registry(allowed_classes)
    if registry is None and serializer.restricted:
        registry = ClassRegistry()
    return registry


# -- the writer and the reader a Connection uses ----------------------------------------------


class ObjectWriter:
    """Serializes the objects one commit writes (Durus's name).

    ``reference`` attaches new persistent objects found inside states to the
    connection, giving them oids; ``attached`` lists them so that a failed
    commit can detach them again.  ``serializer`` writes every record
    (pickle by default).
    """

    def __init__(
        self,
        connection: Any,
        serializer: Serializer | None = None,
        new_oid: Callable[[], bytes] | None = None,
    ) -> None:
        self.connection = connection
        self.serializer = serializer if serializer is not None else PickleSerializer()
        self._encode = self.serializer.encode
        # What a serializer calls for each persistent object in a state: the
        # C version of reference() where it can stand in for it (not for a
        # subclass's own reference).
        self._reference: Reference = self.reference
        self._c_own_reference: Reference | None = None
        if _c_reference is not None and type(self).reference is ObjectWriter.reference:
            self._reference = self._c_own_reference = functools.partial(_c_reference, self)
        # Where new oids come from: ``connection.new_oid`` unless the caller
        # names its source (the Connection names its storage's, a call fewer).
        self._new_oid = new_oid if new_oid is not None else connection.new_oid
        # records() in C: only where it makes the very bytes encode() would
        # (the pickle serializer's own encode, the writer's own _encode_one;
        # a state it encodes itself references nothing, so whichever
        # reference the writer has is not needed there).
        self._c_records = (
            _c_encode_records is not None
            and type(self.serializer).encode is PickleSerializer.encode
            and type(self)._encode_one is ObjectWriter._encode_one
        )
        # The oids the state being encoded references, once each in
        # first-seen order (a dict of bytes keys: no set beside a list, and
        # nothing for the garbage collector to track).
        self._refs: dict[bytes, None] = {}
        self.attached: list[PersistentBase] = []
        self.queue: list[PersistentBase] = []

    def restart(self) -> None:
        """Begin a new commit with this writer: nothing attached, nothing queued.

        ``attached`` becomes a new list, so a list the caller took from the
        previous commit stays as it was.
        """
        self._refs = {}
        self.attached = []
        self.queue = []

    def reference(self, obj: PersistentBase) -> tuple[bytes, type]:
        """Return the persistent id of ``obj``, attaching it if it is new."""
        connection = obj._p_connection
        if connection is None:
            # [OBJ-006] A new object is stored in the same transaction.
            oid = self._new_oid()
            if _c_attach is not None:
                _c_attach(obj, oid, self.connection)  # the three slots below, in C
            else:
                object.__setattr__(obj, "_p_oid", oid)
                object.__setattr__(obj, "_p_connection", self.connection)
                object.__setattr__(obj, "_p_status", UNSAVED)
            self.attached.append(obj)
            self.queue.append(obj)
        elif connection is not self.connection:
            # [OBJ-007]
            raise InvalidObjectReference(
                f"{describe(obj)} belongs to another connection; an object can be stored "
                "in one database connection only (copy it instead)"
            )
        oid = obj._p_oid
        assert oid is not None
        # [OBJ-005] Each referenced oid once, in first-seen order.
        self._refs[oid] = None
        return (oid, type(obj)._p_class)

    def get_state(self, obj: PersistentBase) -> tuple[bytes, bytes]:
        """Return ``(data, refs)`` for ``obj`` (OBJ-003).

        Raises SerializationError naming the class and attribute when the
        state cannot be encoded (OBJ-008), InvalidObjectReference for a
        foreign object.
        """
        self._refs = {}
        data = self._encoded(obj, obj.__getstate__())
        return data, b"".join(self._refs)

    def _encoded(self, obj: PersistentBase, state: Any) -> bytes:
        """``obj``'s record data for ``state``; an encoder's failure as SerializationError."""
        try:
            return self._encode(type(obj)._p_class, state, self._reference)
        except (InvalidObjectReference, SerializationError):
            raise
        except Exception as exc:
            raise SerializationError(self.serializer.explain_failure(obj, state, exc)) from exc

    def records(self, changed: list[PersistentBase]) -> list[tuple[bytes, bytes, bytes]]:
        """Return ``(oid, data, refs)`` of the changed objects and of every new object they reach.

        Each once, as ``get_state`` encodes it, in the order of a stack:
        ``changed`` is pushed, and each new object a state references is
        pushed as it is found (``reference``).  With dhruva.speedups and the
        pickle serializer the loop runs in C, which encodes the ordinary
        object itself (Persistent's or PersistentObject's ``__getstate__``, a
        state of plain data and persistent objects, these through the C
        ``reference`` of this writer) and hands each other one to
        ``_encode_one``.
        """
        records: list[tuple[bytes, bytes, bytes]] = []
        seen: set[bytes] = set()
        queue = self.queue
        queue.extend(changed)
        self._refs = {}
        if self._c_records:
            assert _c_encode_records is not None
            _c_encode_records(
                queue,
                seen,
                records,
                _CLASS_PREFIXES,
                _default_getstate,
                functools.partial(self._encode_one, seen, records.append),
                # The C step writes the persistent objects in a state only
                # as the C reference() of this writer would (its own).
                self if self._reference is self._c_own_reference else None,
                _slots_getstate,
            )
            return records
        encode_one = self._encode_one
        append = records.append
        pop = queue.pop
        while queue:
            encode_one(seen, append, pop())
        return records

    def _encode_one(
        self,
        seen: set[bytes],
        append: Callable[[tuple[bytes, bytes, bytes]], None],
        obj: PersistentBase,
    ) -> None:
        """Append ``obj``'s record unless its oid is in ``seen`` (one step of ``records``).

        ``self._refs`` is empty on entry, and left empty: a state that
        referenced nothing leaves the same dict for the next one.
        """
        oid = obj._p_oid
        assert oid is not None
        if oid in seen:
            return
        seen.add(oid)
        refs = self._refs
        data = self._encoded(obj, obj.__getstate__())
        if refs:
            append((oid, data, b"".join(refs)))
            self._refs = {}
        else:
            append((oid, data, b""))

    def gen_records(self, changed: list[PersistentBase]) -> Iterator[tuple[bytes, bytes, bytes]]:
        """Yield ``(oid, data, refs)`` for the changed objects and every new object they reach."""
        yield from self.records(changed)


class ObjectReader:
    """Turns record data back into classes and states (Durus's name).

    ``get_ghost(oid, cls)`` of the connection resolves references, so they
    come back as the connection's (possibly ghost) objects.  Each record is
    read by the decoder of its serializer code (OBJ-001).  With a
    ``registry`` every class a record names must pass it (OBJ-020); a custom
    ``find_class`` hook replaces pickle's global lookup (it wins over
    ``registry`` for pickle records).
    """

    def __init__(
        self,
        get_ghost: GetGhost,
        find_class: Callable[[str, str], Any] | None = None,
        registry: ClassRegistry | None = None,
        class_map: ClassMap | None = None,
    ) -> None:
        self._get_ghost = get_ghost
        self.registry = registry
        self.class_map = class_map or None
        if find_class is None and registry is not None:
            find_class = registry.resolve
        pickle_decoder = PickleDecoder(get_ghost, find_class, self.class_map)
        # Keyed by the code byte as an int: ``data[0]`` is the cheapest lookup.
        self._decoders: dict[int, RecordDecoder] = {PICKLE_CODE[0]: pickle_decoder}
        #: The state reader of each serializer code met so far (keyed by the
        #: code byte as an int), filled by :meth:`get_state`: a caller may look
        #: one up itself, falling back to get_state on KeyError or IndexError.
        self.state_readers: dict[int, Callable[[bytes, bytes | None], Any]] = {
            PICKLE_CODE[0]: pickle_decoder.state_reader()
        }

    def decoder_for(self, data: bytes) -> RecordDecoder:
        """Return the decoder for ``data``'s serializer code, creating it on first use."""
        try:
            return self._decoders[data[0]]
        except (KeyError, IndexError):
            pass
        code = bytes(data[:1])
        decoder = serializer_for_code(code).decoder(self._get_ghost, self.registry, self.class_map)
        self._decoders[code[0]] = decoder
        return decoder

    def get_class(self, data: bytes) -> type:
        """Return the class recorded in ``data`` without reading the state."""
        return self.decoder_for(data).get_class(data)

    def get_class_and_state(self, data: bytes) -> tuple[type, Any]:
        """Return ``(class, state)`` from ``data``, in one decoder pass."""
        # One dict lookup on the code byte, no extra call.
        try:
            decoder = self._decoders[data[0]]
        except (KeyError, IndexError):
            decoder = self.decoder_for(data)
        return decoder.get_class_and_state(data)

    def get_state(self, data: bytes, refs: bytes | None = None) -> Any:
        """Return the state in ``data`` alone, for an object whose class is known.

        ``refs`` is the record's reference list when the caller has it (a
        pickle record that references nothing is then read faster).  The
        class is not checked against the record's (the object's class came
        from the reference that made it), but every global inside the state
        is resolved as by :meth:`get_class_and_state`, restrictions and
        class map included.
        """
        try:
            return self.state_readers[data[0]](data, refs)
        except (KeyError, IndexError):
            pass
        decoder = self.decoder_for(data)
        state_of = getattr(decoder, "get_state", None)
        if state_of is None:

            def reader(data: bytes, refs: bytes | None) -> Any:
                return decoder.get_class_and_state(data)[1]

        else:

            def reader(data: bytes, refs: bytes | None) -> Any:
                return state_of(data)

        self.state_readers[data[0]] = reader
        return reader(data, refs)
