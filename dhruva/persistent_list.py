"""PersistentList: a list that records its own changes.

The state is one attribute, ``data``, holding a plain ``list``; the pickled
state is ``{"data": [...]}``, Durus's layout.  The theory of operation is the
one in ``dhruva.persistent_dict``: read-only methods read ``self.data`` (which
loads a ghost), mutating methods call ``self._p_note_change()`` first, and
instances are hashable by identity although they compare by contents.

Reading a slice returns a plain ``list`` (as Durus does on Python 3, and at
the cost of the builtin slice alone); ``+``, ``*`` and ``copy`` return new,
unsaved instances of the same class, as in Durus and ``collections.UserList``.

``list + persistent_list`` and ``tuple + persistent_list`` work, as in
Durus, and return the type of the left operand (a list, a tuple), the rule
``dhruva.persistent_dict`` follows for ``|``; Durus returns a PersistentList.
One consequence of having ``__radd__`` at all: ``list`` has no numeric
``__iadd__`` slot, so Python tries ``__radd__`` before ``list.extend`` and
``items += persistent_list`` rebinds ``items`` to a new list (as
``items = items + persistent_list`` does) instead of extending the list in
place.  Code that relies on the list's identity writes
``items.extend(persistent_list)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, MutableSequence
from typing import Any, Self, SupportsIndex, TypeVar, overload

from dhruva.persistent import UNSAVED, PersistentObject

T = TypeVar("T")


class PersistentList(PersistentObject, MutableSequence[T]):
    """A persistent ``list``: ``PersistentList(iterable=())``.

    Behaves as the builtin ``list`` (indexing and slicing, ``+``, ``+=``,
    ``*``, ``*=``, ``sort``, ``reverse``, ``index``, ``count``, comparisons,
    ``copy``) and marks itself changed on every mutation.  Instance
    attribute: ``data``, the underlying ``list``.
    """

    # One slot, as in Durus: no per-instance __dict__ (less memory, and a
    # misspelt attribute raises AttributeError).  Subclasses without
    # __slots__ get a __dict__, which is stored with the slot (DM-013).
    __slots__ = ("data",)

    data: list[T]

    # Content equality with identity hashing; see dhruva.persistent_dict.
    __hash__ = object.__hash__

    def __init__(self, iterable: Iterable[T] = ()) -> None:
        self.data = list(iterable)

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.data)

    @overload
    def __getitem__(self, index: SupportsIndex) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> T | list[T]:
        return self.data[index]

    def __contains__(self, value: object) -> bool:
        return value in self.data

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def __reversed__(self) -> Iterator[T]:
        return reversed(self.data)

    def index(self, value: Any, start: SupportsIndex = 0, stop: SupportsIndex = sys.maxsize) -> int:
        return self.data.index(value, start, stop)

    def count(self, value: Any) -> int:
        return self.data.count(value)

    def copy(self) -> Self:
        return self.__class__(self.data)

    # copy.copy() would otherwise share ``data`` between the two objects.
    __copy__ = copy

    def __add__(self, other: Iterable[T]) -> Self:
        if isinstance(other, list):
            return self.__class__(self.data + other)
        if isinstance(other, PersistentList):
            return self.__class__(self.data + other.data)
        return NotImplemented

    @overload
    def __radd__(self, other: list[T]) -> list[T]: ...
    @overload
    def __radd__(self, other: tuple[T, ...]) -> tuple[T, ...]: ...
    def __radd__(self, other: list[T] | tuple[T, ...]) -> list[T] | tuple[T, ...]:
        # [DM-014] ``[0] + persistent_list`` and ``(0,) + persistent_list``:
        # the result has the type of the left operand, as builtin operators
        # do (see the module docstring for ``+=``).
        if isinstance(other, list):
            return other + self.data
        if isinstance(other, tuple):
            return other + tuple(self.data)
        return NotImplemented

    def __mul__(self, count: SupportsIndex) -> Self:
        return self.__class__(self.data * count)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"<{self.__class__.__qualname__} {self._p_format_oid()} {self.data!r}>"

    # -- comparisons: with lists and PersistentLists, as list compares with lists ------------

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return self.data == other
        if isinstance(other, PersistentList):
            return self.data == other.data
        return NotImplemented

    def __lt__(self, other: object) -> bool:
        if isinstance(other, list):
            return self.data < other
        if isinstance(other, PersistentList):
            return self.data < other.data
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, list):
            return self.data <= other
        if isinstance(other, PersistentList):
            return self.data <= other.data
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, list):
            return self.data > other
        if isinstance(other, PersistentList):
            return self.data > other.data
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, list):
            return self.data >= other
        if isinstance(other, PersistentList):
            return self.data >= other.data
        return NotImplemented

    # -- mutating ---------------------------------------------------------------------

    @overload
    def __setitem__(self, index: SupportsIndex, value: T) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[T]) -> None: ...
    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        if isinstance(value, PersistentList):
            value = value.data
        self.data[index] = value

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        del self.data[index]

    def __iadd__(self, other: Iterable[T]) -> Self:
        if self._p_status != UNSAVED:
            self._p_note_change()
        # Unwrap: extending a list from an iterator over itself never ends.
        if isinstance(other, PersistentList):
            other = other.data
        # In place on a local name: ``self.data += ...`` would
        # assign the attribute again and pass through __setattr__.
        data = self.data
        data += other
        return self

    def __imul__(self, count: SupportsIndex) -> Self:
        if self._p_status != UNSAVED:
            self._p_note_change()
        # In place on a local name: ``self.data *= ...`` would
        # assign the attribute again and pass through __setattr__.
        data = self.data
        data *= count
        return self

    def append(self, value: T) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        self.data.append(value)

    def extend(self, values: Iterable[T]) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        if isinstance(values, PersistentList):
            values = values.data
        self.data.extend(values)

    def insert(self, index: SupportsIndex, value: T) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        self.data.insert(index, value)

    def pop(self, index: SupportsIndex = -1) -> T:
        if self._p_status != UNSAVED:
            self._p_note_change()
        return self.data.pop(index)

    def remove(self, value: T) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        self.data.remove(value)

    def clear(self) -> None:
        if self._p_status != UNSAVED and self.data:
            self._p_note_change()
        self.data.clear()

    def reverse(self) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        self.data.reverse()

    def sort(self, *, key: Callable[[T], Any] | None = None, reverse: bool = False) -> None:
        if self._p_status != UNSAVED:
            self._p_note_change()
        self.data.sort(key=key, reverse=reverse)


__all__ = ["PersistentList"]
