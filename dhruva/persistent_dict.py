"""PersistentDict: a dict that records its own changes.

Theory of operation (the same in ``persistent_list`` and ``persistent_set``):

The state is one attribute, ``data``, holding a plain ``dict``; the pickled
state is ``{"data": {...}}``, the layout Durus's PersistentDict uses, so Durus
databases convert without touching the records' state.

Every method delegates to ``self.data``.  Reading ``self.data`` on a ghost goes
through the ghost class's ``__getattribute__`` (see ``dhruva.persistent``),
which loads the state and swaps the real class back, so read-only methods need
nothing else and cost one attribute read more than the builtin call.

Every mutating method runs ``if self._p_status != UNSAVED:
self._p_note_change()`` *before* it touches ``data``.  ``_p_note_change``
loads a ghost first (so the state the commit writes is complete) and tells the
connection; the inline status test only saves a call when the object is
already marked.  ``_p_`` attributes never load a ghost, so reading
``_p_status`` is safe in any state.  A few methods that are often called
without effect (``setdefault`` on a present key, ``pop`` of a missing key,
``clear`` and ``popitem`` on an empty dict) look first and mark the object only
when it will change: a needless mark makes the next commit write the object
and can cause a needless write conflict with another client.

Equality compares contents, as for ``dict``, yet instances stay hashable by
identity (``__hash__ = object.__hash__``).  Caches and the connection keep
persistent objects as dict keys and in sets; the identity hash never changes
while the object is mutated, and two distinct live objects never have equal
identity hashes, so such keys behave exactly as identity keys.  Durus's
containers are hashable the same way.

Derived containers (``copy``, ``|``, ``fromkeys``) are new, unsaved instances
of the same class, as in Durus and ``collections.UserDict``, except that a
binary operator with a builtin container on its left returns a builtin
container (``{} | persistent_dict`` is a dict), as builtin operators return
the type of their left operand.
"""

from __future__ import annotations

from collections.abc import (
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

from dhruva.persistent import UNSAVED, PersistentObject

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

_MISSING: Any = object()


class PersistentDict(PersistentObject, MutableMapping[K, V]):
    """A persistent ``dict``: ``PersistentDict(mapping_or_iterable, **kwargs)``.

    Behaves as the builtin ``dict`` (every ``MutableMapping`` method, ``|``,
    ``|=``, ``fromkeys``, ``reversed``) and marks itself changed on every
    mutation.  Instance attribute: ``data``, the underlying ``dict``.  Mutate
    the contents through the PersistentDict, not through ``data``, or call
    ``_p_note_change()`` yourself.
    """

    # One slot, as in Durus: no per-instance __dict__ (less memory, and a
    # misspelt attribute raises AttributeError).  Subclasses without
    # __slots__ get a __dict__, which is stored with the slot (DM-013).
    __slots__ = ("data",)

    data: dict[K, V]

    # Content equality with identity hashing; see the module docstring.
    __hash__ = object.__hash__

    # The overloads are dict's, so that ``PersistentDict({1: "a"})`` infers
    # ``PersistentDict[int, str]`` as ``dict({1: "a"})`` infers ``dict[int, str]``.
    # (mypy wrongly finds that the implementation does not accept the
    # ``mapping, **kwargs`` forms; the ignore below is for that.)
    @overload
    def __init__(self) -> None: ...
    @overload
    def __init__(self: PersistentDict[str, V], **kwargs: V) -> None: ...
    @overload
    def __init__(self, mapping: SupportsKeysAndGetItem[K, V], /) -> None: ...
    @overload
    def __init__(
        self: PersistentDict[str, V], mapping: SupportsKeysAndGetItem[str, V], /, **kwargs: V
    ) -> None: ...
    @overload
    def __init__(self, iterable: Iterable[tuple[K, V]], /) -> None: ...
    @overload
    def __init__(
        self: PersistentDict[str, V], iterable: Iterable[tuple[str, V]], /, **kwargs: V
    ) -> None: ...
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
        self.data = dict(*args, **kwargs)

    @classmethod
    def fromkeys(cls, iterable: Iterable[Any], value: Any = None) -> Self:
        return cls(dict.fromkeys(iterable, value))

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: K) -> V:
        try:
            return self.data[key]
        except KeyError:
            # dict subclasses may define __missing__; so may ours.
            missing = getattr(type(self), "__missing__", None)
            if missing is None:
                raise
            return missing(self, key)  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __iter__(self) -> Iterator[K]:
        return iter(self.data)

    def __reversed__(self) -> Iterator[K]:
        return reversed(self.data)

    @overload
    def get(self, key: K, default: None = None) -> V | None: ...
    @overload
    def get(self, key: K, default: V | T) -> V | T: ...
    def get(self, key: K, default: Any = None) -> Any:
        return self.data.get(key, default)

    def keys(self) -> KeysView[K]:
        return self.data.keys()

    def values(self) -> ValuesView[V]:
        return self.data.values()

    def items(self) -> ItemsView[K, V]:
        return self.data.items()

    # Durus's Python 2 names (DM-016): iterators, and ``has_key`` for ``in``.
    def has_key(self, key: object) -> bool:
        """Durus's name for ``key in self``."""
        return key in self.data

    def iteritems(self) -> Iterator[tuple[K, V]]:
        """Durus's name for ``iter(self.items())``."""
        return iter(self.data.items())

    def iterkeys(self) -> Iterator[K]:
        """Durus's name for ``iter(self)``."""
        return iter(self.data)

    def itervalues(self) -> Iterator[V]:
        """Durus's name for ``iter(self.values())``."""
        return iter(self.data.values())

    def copy(self) -> Self:
        return self.__class__(self.data)

    # copy.copy() would otherwise share ``data`` between the two objects.
    __copy__ = copy

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return self.data == other
        if isinstance(other, PersistentDict):
            return self.data == other.data
        if isinstance(other, Mapping):
            return self.data == dict(other.items())
        return NotImplemented

    def __or__(self, other: Mapping[K, V]) -> Self:
        if isinstance(other, PersistentDict):
            return self.__class__(self.data | other.data)
        if isinstance(other, dict):
            return self.__class__(self.data | other)
        return NotImplemented

    def __ror__(self, other: Mapping[K, V]) -> dict[K, V]:
        # ``dict | PersistentDict``: the result is a dict, the type of the
        # left operand, as ``dict | OrderedDict`` is a dict.
        if isinstance(other, dict):
            return other | self.data
        return NotImplemented

    def __repr__(self) -> str:
        return f"<{self.__class__.__qualname__} {self._p_format_oid()} {self.data!r}>"

    # -- mutating ---------------------------------------------------------------------

    def __setitem__(self, key: K, value: V) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        self.data[key] = value

    def __delitem__(self, key: K) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        del self.data[key]

    def __ior__(self, other: Mapping[K, V] | Iterable[tuple[K, V]]) -> Self:
        if self._p_status != UNSAVED:
            self._p_note_change()
        if isinstance(other, PersistentDict):
            other = other.data
        # In place on a local name: ``self.data |= ...`` would
        # assign the attribute again and pass through __setattr__.
        data = self.data
        data |= other
        return self

    def clear(self) -> None:
        if self._p_status != UNSAVED and self.data:
            self._p_note_change()
        self.data.clear()

    @overload
    def pop(self, key: K) -> V: ...
    @overload
    def pop(self, key: K, default: V | T) -> V | T: ...
    def pop(self, key: K, default: Any = _MISSING) -> Any:
        if self._p_status != UNSAVED and key in self.data:
            self._p_note_change()
        if default is _MISSING:
            return self.data.pop(key)
        return self.data.pop(key, default)

    def popitem(self) -> tuple[K, V]:
        if self._p_status != UNSAVED and self.data:
            self._p_note_change()
        return self.data.popitem()

    def setdefault(self, key: K, default: V = None) -> V:  # type: ignore[assignment]
        if self._p_status != UNSAVED and key not in self.data:
            self._p_note_change()
        return self.data.setdefault(key, default)

    def update(self, *args: Any, **kwargs: V) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        if len(args) == 1 and isinstance(args[0], PersistentDict):
            args = (args[0].data,)
        self.data.update(*args, **kwargs)


__all__ = ["PersistentDict"]
