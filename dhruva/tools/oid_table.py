"""Compact per-oid tables for the read-only tools: slots by oid number, and bitmaps.

Spec: ``spec/tools.md`` (TOOL-008: verify and stats in bounded memory).

Theory of operation.  ``verify`` and ``stats`` keep a few numbers per object
(where its current record is, its size, its class) and a few bits (present,
reachable, seen in the index).  A dict or set keyed by 8-byte oids costs
about 100 bytes an entry; these tables cost the numbers themselves.

:class:`OidSlots` gives every oid number a *slot*, an index into the
parallel arrays (*columns*) a caller attaches.  Oids are dense in practice
(``new_oid`` counts up), so while they are, the slot is the oid number
itself and no mapping is kept.  An oid far beyond the others (a sparse
file: more than twice the slots plus 65536) switches the table to a dict
from oid number to slot holding only the numbers ``present`` says are in
use, so memory follows the number of objects, never the largest oid.
Columns are extended together, so every column always has one entry per
slot; a slot made to fill a gap holds the column's fill value.

:class:`Bitmap` is one bit per slot (1M slots: 125 KB).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator

#: A dense table grows to this many slots past the largest before it turns sparse.
DENSE_SLACK = 1 << 16


class Bitmap:
    """A growable set of small non-negative integers, one bit each."""

    def __init__(self, size: int = 0) -> None:
        self._bits = bytearray((size + 7) >> 3)

    def add(self, index: int) -> None:
        byte = index >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits)))
        self._bits[byte] |= 1 << (index & 7)

    def __contains__(self, index: int) -> bool:
        byte = index >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (index & 7)))

    def count(self) -> int:
        """Return how many integers are in the set."""
        return sum(bin(byte).count("1") for byte in self._bits if byte)

    @property
    def size_bytes(self) -> int:
        return len(self._bits)


class OidSlots:
    """Oid number -> slot: the number itself while oids are dense, a dict once sparse.

    ``present(slot)`` tells which slots hold an oid in use; it is asked only
    when the table turns sparse, to leave the gaps out of the dict.
    """

    def __init__(self, present: Callable[[int], bool]) -> None:
        self._present = present
        self._columns: list[tuple[array[int], int]] = []
        self._count = 0  # slots made so far
        self._slot_of: dict[int, int] | None = None  # None: dense, slot == number
        self._numbers: array[int] | None = None  # the number of each slot, once sparse

    def column(self, typecode: str, fill: int) -> array[int]:
        """Attach and return a new column (an :class:`array.array`) of ``fill`` per slot."""
        values = array(typecode, [fill]) * self._count
        self._columns.append((values, fill))
        return values

    def __len__(self) -> int:
        """The number of slots (present or not)."""
        return self._count

    @property
    def dense(self) -> bool:
        return self._slot_of is None

    def find(self, number: int) -> int | None:
        """Return the slot of ``number``, or None when it has none (not whether it is present)."""
        if self._slot_of is None:
            return number if 0 <= number < self._count else None
        return self._slot_of.get(number)

    def make(self, number: int) -> int:
        """Return the slot of ``number``, making it (and, while dense, the gap before it)."""
        if self._slot_of is None:
            if number < self._count:
                return number
            if number <= 2 * self._count + DENSE_SLACK:
                self._extend(number + 1 - self._count)
                return number
            # Sparse from now on: map the present numbers to their slots.
            self._slot_of = {slot: slot for slot in range(self._count) if self._present(slot)}
            self._numbers = array("Q", range(self._count))
        slot = self._slot_of.get(number)
        if slot is None:
            slot = self._slot_of[number] = self._count
            assert self._numbers is not None
            self._numbers.append(number)
            self._extend(1)
        return slot

    def number(self, slot: int) -> int:
        """Return the oid number of ``slot``."""
        return slot if self._numbers is None else self._numbers[slot]

    def iter_slots(self) -> Iterator[int]:
        """Yield every slot that ``present`` says is in use, by slot."""
        present = self._present
        return (slot for slot in range(self._count) if present(slot))

    def _extend(self, count: int) -> None:
        for values, fill in self._columns:
            values.extend(array(values.typecode, [fill]) * count)
        self._count += count
