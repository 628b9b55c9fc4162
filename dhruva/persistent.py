"""Persistent objects: Persistent (state in ``__dict__``) and PersistentObject (slots).

Theory of operation (spec: ``spec/connection.md``, "Object states"):

A persistent object is in one of three states, kept in ``_p_status``:

* ``UNSAVED`` -- new, or changed since it was last loaded or committed; the
  next commit writes it.
* ``SAVED`` -- its state matches the last committed record.
* ``GHOST`` -- it has an oid and a connection but no state yet; the first
  access to an ordinary attribute loads the state.

Reading an attribute of a loaded object must cost what it costs on a plain
object, so loaded objects carry no ``__getattribute__`` hook at all.  Ghosts
get their hook by *class swapping*: a ghost's ``__class__`` is a hidden
subclass of its real class whose ``__getattribute__`` loads the state and
swaps the real class back.  A second hidden subclass ("tracked") serves the
cache: when the cache needs room it moves loaded objects into the tracked
class; the first access swaps them back, which tells the cache the object was
used since the sweep.  The same swap tells the connection which objects a
transaction *read*: at every transaction boundary the connection moves the
objects the transaction used back into the tracked class, so the first
access of each object in a transaction reports it (``note_read``) and every
later access costs what a plain object's does.  The hidden subclasses add no
slots, so CPython allows the swap, and they carry the real class's name and
module, so ``repr``, ``isinstance`` and ``obj.__class__`` behave as usual.
``type(obj)`` may return a hidden subclass; compare classes with
``isinstance`` or ``obj.__class__``.

Attribute assignment goes through ``__setattr__``, which loads a ghost first
and then notes the change with the connection.
"""

from __future__ import annotations

import copyreg
import threading
from sys import intern as _intern
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from dhruva import speedups

if TYPE_CHECKING:
    from collections.abc import Callable

GHOST = -1
SAVED = 0
UNSAVED = 1

_p_object_getattribute = object.__getattribute__
_dict_state_base: type | None = None  # Persistent, once it is defined
_p_object_setattr = object.__setattr__
_c_set_dict_state = speedups.set_dict_state


class ReferenceFound(Exception):
    """A persistent object was met while its state's pickle was probed (not an error).

    dhruva.serialize pickles a state with plain ``pickle.dumps`` first, with
    :data:`reference_probe` active, so a state that references no persistent
    object is written without a Python call per value; a persistent object
    inside it raises this from ``__reduce_ex__``, and the state is pickled
    again with persistent ids (OBJ-004).
    """


class _ReferenceProbe(threading.local):
    active = False


#: Per thread: while ``active``, pickling a persistent object raises ReferenceFound.
reference_probe = _ReferenceProbe()
#: Set when a persistent class defines its own ``__reduce_ex__`` (the probe would not run).
reduce_overridden = False
#: Set once a persistent class with ``_p_blob`` (Blob, a subclass) exists: until then a
#: commit has no blob to look for among the objects it writes.
blob_classes_defined = False


class ConnectionLike(Protocol):
    """What a persistent object needs from its connection."""

    def load_state(self, obj: PersistentBase) -> None: ...

    def note_change(self, obj: PersistentBase) -> None: ...

    def note_read(self, obj: PersistentBase) -> None: ...


def _ghost_getattribute(self: PersistentBase, name: str) -> Any:
    # Persistence bookkeeping never loads the state.
    if name[:3] == "_p_":
        return _p_object_getattribute(self, name)
    if name == "__class__":
        return type(self)._p_class
    # _p_load_state, inline: the ghost class is only ever set with the
    # status GHOST, so the state is due.
    connection = _p_object_getattribute(self, "_p_connection")
    if connection is None:
        raise RuntimeError(f"ghost {self!r} has no connection to load from")
    connection.load_state(self)
    return getattr(self, name)


def _tracked_getattribute(self: PersistentBase, name: str) -> Any:
    if name[:3] == "_p_":
        return _p_object_getattribute(self, name)
    real = type(self)._p_class
    _p_object_setattr(self, "__class__", real)
    # The first use of this object in the transaction: the connection counts
    # it as read (CONN-042).
    connection = _p_object_getattribute(self, "_p_connection")
    if connection is not None:
        connection.note_read(self)
    return getattr(self, name)


#: The hidden classes' ``__getattribute__``: ghost, tracked (the C versions
#: once dhruva.speedups installed them, below Persistent).
_getattribute_hooks: tuple[Callable[..., Any], Callable[..., Any]] = (
    _ghost_getattribute,
    _tracked_getattribute,
)


def _hidden_subclass(real: type, kind: str, getattribute: Callable[..., Any]) -> type:
    namespace = {
        "__slots__": (),
        "__getattribute__": getattribute,
        "__module__": real.__module__,
        "__qualname__": real.__qualname__,
        "__doc__": real.__doc__,
        "_p_class": real,
        "_p_hidden_kind": kind,
    }
    return type(real.__name__, (real,), namespace)


class PersistentBase:
    """What Persistent and PersistentObject share: the ``_p_`` bookkeeping.

    Subclass :class:`Persistent` or :class:`PersistentObject`, not this.
    """

    # ``_p_size`` is the connection's: the record bytes this object counts
    # for in its cache (0 when not counted), kept here rather than in a
    # dict by oid (8 bytes an object instead of about 75 for each loaded one).
    __slots__ = ("__weakref__", "_p_connection", "_p_oid", "_p_serial", "_p_size", "_p_status")

    _p_class: ClassVar[type]
    _p_ghost_class: ClassVar[type]
    _p_tracked_class: ClassVar[type]
    _p_hidden_kind: ClassVar[str | None] = None
    # True for Blob: its content is stored beside the record (a class
    # attribute here, so that a commit's test of it raises nothing).
    _p_blob: ClassVar[bool] = False

    _p_status: int
    _p_serial: int
    _p_size: int
    _p_oid: bytes | None
    _p_connection: ConnectionLike | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Creating the hidden subclasses below runs __init_subclass__ hooks
        # again, without keywords: a hook in an application class must accept
        # that and skip classes whose ``_p_hidden_kind`` is set.
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_p_hidden_kind") is not None:
            return
        if "__reduce_ex__" in cls.__dict__:
            global reduce_overridden
            reduce_overridden = True
        if cls._p_blob:
            global blob_classes_defined
            blob_classes_defined = True
        if _dict_state_base is not None and issubclass(cls, _dict_state_base):
            slots = cls.__dict__.get("__slots__", ())
            if isinstance(slots, str):
                slots = (slots,)
            state_slots = [name for name in slots if name not in ("__dict__", "__weakref__")]
            if state_slots:
                # Persistent's state is its __dict__ alone; slot values would
                # silently be lost at commit.
                raise TypeError(
                    f"{cls.__qualname__} declares __slots__ {state_slots}; a Persistent "
                    "subclass keeps its state in __dict__ -- subclass PersistentObject "
                    "for slots"
                )
        cls._p_class = cls
        ghost_hook, tracked_hook = _getattribute_hooks
        cls._p_ghost_class = _hidden_subclass(cls, "ghost", ghost_hook)
        cls._p_tracked_class = _hidden_subclass(cls, "tracked", tracked_hook)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = object.__new__(cls)
        _p_object_setattr(self, "_p_status", UNSAVED)
        _p_object_setattr(self, "_p_serial", 0)
        _p_object_setattr(self, "_p_size", 0)
        _p_object_setattr(self, "_p_oid", None)
        _p_object_setattr(self, "_p_connection", None)
        return self

    # -- state changes ----------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name[:3] != "_p_" and self._p_status != UNSAVED:
            self._p_note_change()
        _p_object_setattr(self, name, value)

    def __delattr__(self, name: str) -> None:
        if name[:3] != "_p_" and self._p_status != UNSAVED:
            self._p_note_change()
        object.__delattr__(self, name)

    def _p_note_change(self) -> None:
        """Mark this object changed so that the next commit writes it.

        Containers call this from every mutating method.  A ghost is loaded
        first, so that the state written is complete.
        """
        status = self._p_status
        if status == UNSAVED:
            return
        if status == GHOST:
            self._p_load_state()
        elif type(self) is not type(self)._p_class:
            _p_object_setattr(self, "__class__", type(self)._p_class)
        _p_object_setattr(self, "_p_status", UNSAVED)
        connection = self._p_connection
        if connection is not None:
            connection.note_change(self)

    def _p_load_state(self) -> None:
        """Load the state of a ghost from its connection; no-op otherwise."""
        if self._p_status == GHOST:
            connection = self._p_connection
            if connection is None:
                raise RuntimeError(f"ghost {self!r} has no connection to load from")
            connection.load_state(self)

    # -- status transitions used by the connection -----------------------------------------

    def _p_set_status_ghost(self) -> None:
        """Drop the state and become a ghost (used by the connection)."""
        cls = type(self)._p_class
        _p_object_setattr(self, "__class__", cls)
        self._p_clear_state()
        _p_object_setattr(self, "_p_status", GHOST)
        _p_object_setattr(self, "__class__", cls._p_ghost_class)  # type: ignore[attr-defined]

    def _p_set_status_saved(self) -> None:
        """Mark the object saved: its state matches the last committed record."""
        if type(self) is not type(self)._p_class:
            _p_object_setattr(self, "__class__", type(self)._p_class)
        _p_object_setattr(self, "_p_status", SAVED)

    def _p_set_status_unsaved(self) -> None:
        """Mark the object unsaved without telling the connection (used by the connection)."""
        if type(self) is not type(self)._p_class:
            _p_object_setattr(self, "__class__", type(self)._p_class)
        _p_object_setattr(self, "_p_status", UNSAVED)

    def _p_set_tracked(self) -> None:
        """Enter the tracked class: the next attribute access swaps it back."""
        if type(self) is type(self)._p_class:
            _p_object_setattr(self, "__class__", self._p_tracked_class)

    def _p_is_tracked(self) -> bool:
        return type(self)._p_hidden_kind == "tracked"

    def _p_is_ghost(self) -> bool:
        """Return whether the object is a ghost (its state not loaded yet)."""
        return self._p_status == GHOST

    def _p_is_saved(self) -> bool:
        """Return whether the object's state matches its last committed record."""
        return self._p_status == SAVED

    def _p_is_unsaved(self) -> bool:
        """Return whether the object is new or changed since its last load or commit."""
        return self._p_status == UNSAVED

    def _p_format_oid(self) -> str:
        """Return the oid as a decimal string, or "None" for an object not yet stored."""
        oid = self._p_oid
        return "None" if oid is None else str(int.from_bytes(oid, "big"))

    # -- state access: overridden by Persistent and PersistentObject ------------------------

    def _p_clear_state(self) -> None:
        raise NotImplementedError

    def __getstate__(self) -> Any:
        raise NotImplementedError

    def __setstate__(self, state: Any) -> None:
        raise NotImplementedError

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        if reference_probe.active:
            raise ReferenceFound
        # Pickling outside a database: a fresh unsaved copy of the state, of
        # the real class even when this object is a ghost or tracked.
        state = self.__getstate__()
        return (copyreg.__newobj__, (type(self)._p_class,), state)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        cls = type(self)._p_class
        return f"<{cls.__qualname__} {self._p_format_oid()}>"


class Persistent(PersistentBase):
    """A persistent object whose state is its ``__dict__``.

    Subclass it; instances are stored when reachable from the root at commit.
    Assigning or deleting an attribute marks the object changed.  Mutating a
    plain mutable attribute in place (``self.items.append(x)``) does not; call
    ``self._p_note_change()`` then, or use the persistent containers.
    """

    __slots__ = ("__dict__",)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        d = self.__dict__
        # The C version does the ordinary case (an exact dict), the same way.
        if _c_set_dict_state is not None and _c_set_dict_state(d, state) is None:
            return
        if state is d:
            # obj.__setstate__(obj.__getstate__()): the state is already in
            # place, and clearing d would empty it.
            return
        d.clear()
        # Unpickled attribute names are not interned strings, and CPython's
        # fast attribute lookup needs interned keys: without this, reading an
        # attribute of a loaded object costs ten times a plain object's.
        try:
            for k, v in state.items():
                d[_intern(k)] = v
        except TypeError:
            # A key that is not an exact str (sys.intern refuses it): kept as it is.
            d.clear()
            d.update({_intern(k) if type(k) is str else k: v for k, v in state.items()})

    def _p_clear_state(self) -> None:
        self.__dict__.clear()


_dict_state_base = Persistent

# The C versions of __new__, __setattr__ and the hidden classes'
# __getattribute__ hooks, when dhruva.speedups has them; the Python ones
# above stay the reference.
_c_hooks = speedups.install_persistent(
    PersistentBase, Persistent, UNSAVED, SAVED, _ghost_getattribute, _tracked_getattribute
)
if _c_hooks is not None:
    _getattribute_hooks = _c_hooks
    # Persistent's hidden classes were made before the hooks were known.
    Persistent._p_ghost_class.__getattribute__ = _c_hooks[0]  # type: ignore[method-assign]
    Persistent._p_tracked_class.__getattribute__ = _c_hooks[1]  # type: ignore[method-assign]


def _state_slot_names(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        for name in slots:
            if name[:3] == "_p_" or name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"
            if name not in names:
                names.append(name)
    return tuple(names)


_slot_names_cache: dict[type, tuple[str, ...]] = {}


class PersistentObject(PersistentBase):
    """A persistent object friendly to ``__slots__``.

    Subclasses declare ``__slots__``; the state is the values of those slots
    (and of ``__dict__``, when a subclass has one).
    """

    __slots__ = ()

    def _p_slot_names(self) -> tuple[str, ...]:
        cls = type(self)._p_class
        names = _slot_names_cache.get(cls)
        if names is None:
            names = _slot_names_cache[cls] = _state_slot_names(cls)
        return names

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for name in self._p_slot_names():
            try:
                state[name] = _p_object_getattribute(self, name)
            except AttributeError:
                pass
        instance_dict = getattr(self, "__dict__", None)
        if instance_dict:
            state.update(instance_dict)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._p_clear_state()
        slot_names = self._p_slot_names()
        for name, value in state.items():
            if name in slot_names or hasattr(self, "__dict__"):
                _p_object_setattr(self, name, value)

    def _p_clear_state(self) -> None:
        for name in self._p_slot_names():
            try:
                object.__delattr__(self, name)
            except AttributeError:
                pass
        instance_dict = getattr(self, "__dict__", None)
        if instance_dict:
            instance_dict.clear()


# The state constants live here, under Durus's names.  Durus's ComputedAttribute
# has no counterpart (see docs/guide/tools.md on importing Durus files).
__all__ = ["GHOST", "SAVED", "UNSAVED", "Persistent", "PersistentBase", "PersistentObject"]
