"""Which records travel with a LOAD answer (spec: ``spec/wire-protocol.md``, "Prefetch").

Theory of operation.  Per client the server keeps a :class:`PrefetchState`
until the client's next synchronization: ``prefetched``, the oids whose
records it sent (asked for or prefetched); ``frontier``, the oids those
records reference that were not sent yet, in order; ``window``, how many
records the next answer may carry; and ``readahead_next``, the oid after the
last one sent in ascending order.  :meth:`Prefetcher.choose` picks the
records for one answer; :meth:`PrefetchState.forget` clears the state at a
synchronization [WIRE-057].  The one rule every choice obeys [WIRE-056]: an oid in the
session's invalidation set is never sent, so every record sent is the one
as of the session's last synchronization, which is what a LOAD would return.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from dhruva import wire
from dhruva.error import DhruvaError
from dhruva.record import Record
from dhruva.storage import Storage
from dhruva.utils import int8_to_str, str_to_int8

DEFAULT_PREFETCH_RECORDS = 64
"""The most records one LOAD answer carries besides the one asked for."""
DEFAULT_PREFETCH_BYTES = 64 << 10
"""About the most bytes of prefetched records in one LOAD answer."""

_PREFETCHED_MAX = 1 << 16
_FRONTIER_MAX = 16384
_OID_LIMIT = 1 << 64
#: How far into the frontier a LOAD counts as predicted, at least.
_PREDICTED_REACH_MIN = 8


class PrefetchState:
    """What one client was sent since its last synchronization (see the module docstring)."""

    __slots__ = ("frontier", "prefetched", "readahead_next", "window")

    def __init__(self) -> None:
        self.prefetched: set[bytes] = set()
        """Oids whose records were sent since the client last synchronized."""
        self.frontier: dict[bytes, None] = {}
        """Oids referenced by records sent since the last sync, not sent yet (in order)."""
        self.window = 8
        """How many records the next LOAD answer may prefetch (adapts per load)."""
        self.readahead_next = -1
        """The oid after the last one this client received in ascending order."""

    def forget(self) -> None:
        """[WIRE-057] The client synchronized: it dropped what it was sent."""
        self.prefetched.clear()
        self.frontier.clear()

    def extend_frontier(self, refs: bytes) -> None:
        """Add the oids of ``refs`` not sent yet to the frontier (bounded)."""
        frontier = self.frontier
        sent = self.prefetched
        for start in range(0, len(refs), 8):
            if len(frontier) >= _FRONTIER_MAX:
                return  # bounded: the dropped references are simply not predicted
            oid = refs[start : start + 8]
            if oid not in sent:
                frontier[oid] = None


def _near_head(frontier: dict[bytes, None], oid: bytes, reach: int) -> bool:
    """Whether ``oid`` is among the first ``reach`` oids of ``frontier``."""
    if oid not in frontier:
        return False
    return any(each == oid for each in itertools.islice(frontier, reach))


class Prefetcher:
    """Chooses the records a LOAD answer carries, within ``max_records`` and ``max_bytes``.

    It owns no per-client state (that is each client's :class:`PrefetchState`),
    only the storage it reads and its bounds; ``max_records`` 0 turns
    prefetch off (:attr:`enabled`).
    """

    def __init__(self, storage: Storage, max_records: int, max_bytes: int) -> None:
        self.storage = storage
        self.max_records = max(0, max_records)
        self.max_bytes = max(0, max_bytes)
        self.enabled = self.max_records > 0
        """True when a LOAD answer may carry prefetched records."""

    def choose(self, state: PrefetchState, invalid: set[bytes], record: Record) -> list[Record]:
        """The records to send along with ``record`` [WIRE-056].

        Candidates, in order: the oids ``record`` references; then the
        client's *frontier*, the oids referenced by records sent to it
        since its last sync and not sent yet, oldest first; then, when the
        client reads oids in ascending order (this LOAD asks for the oid
        after the last one it received), the oids that follow (read-ahead:
        objects committed together get neighbouring oids and are often read
        together).  Each record sent adds its references to the frontier, so
        a client walking the graph finds most records it needs in memory.

        At most the client's *window* of records (and about ``max_bytes``
        bytes, four window's worth of look-ups) go with one answer.  The
        window doubles, up to ``max_records``, when the client loads an oid
        the server predicted: the next oid in order, or one of the first
        ``2 * window`` (at least 8) oids of the frontier, what the next
        answers would have carried; it halves otherwise, down to none.  So
        a client walking the graph gets more per answer, and one reading at
        random, even among the references of what it loaded (the items of a
        big mapping), does not make the server read records nobody wants.

        Only oids outside ``invalid`` (the client's invalidation set)
        qualify: their current record is then the one as of the client's
        last sync, which is exactly what a LOAD now would return.  Oids
        already sent since that sync are skipped (the client keeps them
        until its next sync), as are missing ones.
        """
        storage = self.storage
        max_records = self.max_records
        sent = state.prefetched
        frontier = state.frontier
        oid = record.oid
        number = int.from_bytes(oid, "big")  # str_to_int8, inline (every LOAD comes here)
        in_order = number == state.readahead_next
        reach = max(2 * state.window, _PREDICTED_REACH_MIN)
        if in_order or (oid in frontier and _near_head(frontier, oid, reach)):
            state.window = min(max(2 * state.window, 1), max_records)
        else:
            # Not predicted: what the answers carried was not what the client
            # needed next (also when the frontier, full, dropped the oid).
            state.window //= 2  # down to 0: a client reading at random gets no extra
        frontier.pop(oid, None)
        window = min(state.window, max_records)
        state.readahead_next = number + 1
        if len(sent) >= _PREFETCHED_MAX:
            # Forgetting only costs resending; memory stays bounded.
            sent.clear()
        sent.add(oid)
        if record.refs:
            state.extend_frontier(record.refs)
        if window == 0:
            return []
        budget = self.max_bytes
        lookups = 4 * window
        records: list[Record] = []
        refs = record.refs
        candidates: Iterable[bytes] = itertools.chain(
            [refs[i : i + 8] for i in range(0, len(refs), 8)],
            # A copy of the frontier's head: the loop pops from the frontier.
            list(itertools.islice(frontier, lookups)),
            (
                int8_to_str(n)
                for n in range(number + 1, min(number + 1 + lookups, _OID_LIMIT))
                if in_order
            ),
        )
        for oid in candidates:
            if len(records) >= window or budget <= 0 or lookups <= 0:
                break
            if oid in sent:
                continue
            frontier.pop(oid, None)
            # [WIRE-056] Never an invalidated oid: its current record is not
            # the one as of the client's last sync (a LOAD of it is answered
            # READ_CONFLICT, or at a snapshot session's snapshot, SRV-100).
            if oid in invalid:
                continue
            lookups -= 1
            try:
                child = storage.load(oid)
            except DhruvaError:
                continue
            size = wire.record_size(child)
            if size > budget:
                continue
            sent.add(oid)
            records.append(child)
            budget -= size
            state.extend_frontier(child.refs)
            if in_order and str_to_int8(oid) == state.readahead_next:
                state.readahead_next += 1
        return records
