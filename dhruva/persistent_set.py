"""PersistentSet: a set that records its own changes.

The state is one attribute, ``s``, holding a plain ``set``; the pickled state
is ``{"s": {...}}``, Durus's layout.  The theory of operation is the one in
``dhruva.persistent_dict``: read-only methods read ``self.s`` (which loads a
ghost), mutating methods call ``self._p_note_change()`` first, and instances
are hashable by identity although they compare by contents.  ``add`` of a
present element and ``discard`` of a missing one do not mark the object.

Operators (``|``, ``&``, ``-``, ``^`` and the comparisons) accept what the
builtin ``set`` accepts -- sets, frozensets, PersistentSets -- and the other
``collections.abc.Set`` implementations (dict key views, ...); anything else
is ``NotImplemented``, so ``PersistentSet() | [1]`` raises TypeError as
``set() | [1]`` does.  The named methods (``union``, ``update``, ...) accept
any iterables.  Derived sets are new, unsaved instances of the same class, as
in Durus, except that with a builtin set on the left of an operator the
result is a builtin set (``{1} | persistent_set`` is a set,
``frozenset() | persistent_set`` a frozenset): builtin set operators return
the type of their left operand.  Durus returns a PersistentSet there; we do
not, because ``plain_set |= persistent_set`` falls back to the reflected
operator (``set.__ior__`` accepts only builtin sets) and would otherwise turn
``plain_set`` into a new persistent object.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, MutableSet
from collections.abc import Set as AbstractSet
from typing import Any, Self, TypeVar

from dhruva.persistent import UNSAVED, PersistentObject

T = TypeVar("T")


def _as_set(other: object) -> set[Any] | frozenset[Any] | None:
    """``other`` as an operand for a set operator, or None when it is not one.

    A PersistentSet is unwrapped to its ``s``: faster, and ``s -= s`` or
    ``s ^= s`` with the same set is defined, whereas iterating a set while
    changing it raises.  Other ``collections.abc.Set`` implementations are
    copied into a frozenset, so that every result is a builtin set and ``s``
    is always updated in place.
    """
    if isinstance(other, (set, frozenset)):
        return other
    if isinstance(other, PersistentSet):
        return other.s
    if isinstance(other, AbstractSet):
        return frozenset(other)
    return None


def _unwrap(others: tuple[Iterable[Any], ...]) -> list[Iterable[Any]]:
    return [other.s if isinstance(other, PersistentSet) else other for other in others]


class PersistentSet(PersistentObject, MutableSet[T]):
    """A persistent ``set``: ``PersistentSet(iterable=())``.

    Behaves as the builtin ``set`` (operators and in-place operators,
    ``update``/``difference_update``/..., ``issubset``, comparisons with sets
    and frozensets) and marks itself changed on every mutation.  Instance
    attribute: ``s``, the underlying ``set``.
    """

    # One slot, as in Durus: no per-instance __dict__ (less memory, and a
    # misspelt attribute raises AttributeError).  Subclasses without
    # __slots__ get a __dict__, which is stored with the slot (DM-013).
    __slots__ = ("s",)

    s: set[T]

    # Content equality with identity hashing; see dhruva.persistent_dict.
    __hash__ = object.__hash__

    def __init__(self, iterable: Iterable[T] = ()) -> None:
        self.s = set(iterable)

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.s)

    def __contains__(self, value: object) -> bool:
        return value in self.s

    def __iter__(self) -> Iterator[T]:
        return iter(self.s)

    def copy(self) -> Self:
        return self.__class__(self.s)

    # copy.copy() would otherwise share ``s`` between the two objects.
    __copy__ = copy

    def __repr__(self) -> str:
        return f"<{self.__class__.__qualname__} {self._p_format_oid()} {self.s!r}>"

    def isdisjoint(self, other: Iterable[Any]) -> bool:
        if isinstance(other, PersistentSet):
            other = other.s
        return self.s.isdisjoint(other)

    def issubset(self, other: Iterable[Any]) -> bool:
        if isinstance(other, PersistentSet):
            other = other.s
        return self.s.issubset(other)

    def issuperset(self, other: Iterable[Any]) -> bool:
        if isinstance(other, PersistentSet):
            other = other.s
        return self.s.issuperset(other)

    def union(self, *others: Iterable[T]) -> Self:
        return self.__class__(self.s.union(*_unwrap(others)))

    def intersection(self, *others: Iterable[Any]) -> Self:
        return self.__class__(self.s.intersection(*_unwrap(others)))

    def difference(self, *others: Iterable[Any]) -> Self:
        return self.__class__(self.s.difference(*_unwrap(others)))

    def symmetric_difference(self, other: Iterable[T]) -> Self:
        if isinstance(other, PersistentSet):
            other = other.s
        return self.__class__(self.s.symmetric_difference(other))

    # -- comparisons and operators ----------------------------------------------------

    def __eq__(self, other: object) -> bool:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return self.s == other_set

    def __le__(self, other: AbstractSet[Any]) -> bool:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return self.s <= other_set

    def __lt__(self, other: AbstractSet[Any]) -> bool:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return self.s < other_set

    def __ge__(self, other: AbstractSet[Any]) -> bool:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return self.s >= other_set

    def __gt__(self, other: AbstractSet[Any]) -> bool:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return self.s > other_set

    def __or__(self, other: AbstractSet[T]) -> Self:  # type: ignore[override]
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return self.__class__(self.s | other_set)

    def __and__(self, other: AbstractSet[Any]) -> Self:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return self.__class__(self.s & other_set)

    def __sub__(self, other: AbstractSet[Any]) -> Self:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return self.__class__(self.s - other_set)

    def __xor__(self, other: AbstractSet[T]) -> Self:  # type: ignore[override]
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return self.__class__(self.s ^ other_set)

    def __ror__(self, other: AbstractSet[T]) -> AbstractSet[Any]:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return other_set | self.s

    def __rand__(self, other: AbstractSet[Any]) -> AbstractSet[Any]:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return other_set & self.s

    def __rsub__(self, other: AbstractSet[Any]) -> AbstractSet[Any]:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return other_set - self.s

    def __rxor__(self, other: AbstractSet[T]) -> AbstractSet[Any]:
        other_set = _as_set(other)
        if other_set is None:
            return NotImplemented
        return other_set ^ self.s

    # -- mutating ---------------------------------------------------------------------

    def add(self, value: T) -> None:
        if self._p_status != UNSAVED and value not in self.s:
            self._p_note_change()
        self.s.add(value)

    def discard(self, value: T) -> None:
        if self._p_status != UNSAVED and value in self.s:
            self._p_note_change()
        self.s.discard(value)

    def remove(self, value: T) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        self.s.remove(value)

    def pop(self) -> T:
        if self._p_status != UNSAVED:
            self._p_note_change()
        return self.s.pop()

    def clear(self) -> None:
        if self._p_status != UNSAVED and self.s:
            self._p_note_change()
        self.s.clear()

    def update(self, *others: Iterable[T]) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        self.s.update(*_unwrap(others))

    def intersection_update(self, *others: Iterable[Any]) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        self.s.intersection_update(*_unwrap(others))

    def difference_update(self, *others: Iterable[Any]) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        self.s.difference_update(*_unwrap(others))

    def symmetric_difference_update(self, other: Iterable[T]) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        if isinstance(other, PersistentSet):
            other = other.s
        self.s.symmetric_difference_update(other)

    def __ior__(self, other: AbstractSet[T]) -> Self:  # type: ignore[override]
        if not _update_in_place(self, other, operator.ior):
            return NotImplemented
        return self

    def __iand__(self, other: AbstractSet[Any]) -> Self:
        if not _update_in_place(self, other, operator.iand):
            return NotImplemented
        return self

    def __isub__(self, other: AbstractSet[Any]) -> Self:
        if not _update_in_place(self, other, operator.isub):
            return NotImplemented
        return self

    def __ixor__(self, other: AbstractSet[T]) -> Self:  # type: ignore[override]
        if not _update_in_place(self, other, operator.ixor):
            return NotImplemented
        return self


def _update_in_place(
    target: PersistentSet[Any],
    other: object,
    update: Callable[[set[Any], AbstractSet[Any]], object],
) -> bool:
    """Apply the augmented set operator ``update`` (``|=`` ...) to ``target.s``.

    Returns False, changing nothing, for an ``other`` that is not a set: the
    caller then returns NotImplemented so that Python tries the reflected
    operator.  ``target.s`` is changed in place and never assigned:
    ``target.s |= ...`` would pass through __setattr__ again.
    """
    other_set = _as_set(other)
    if other_set is None:
        return False
    if target._p_status != UNSAVED:
        target._p_note_change()
    update(target.s, other_set)
    return True


__all__ = ["PersistentSet"]
