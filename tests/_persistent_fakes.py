"""A fake connection for testing persistent objects without a storage.

``FakeConnection`` records every call a persistent object makes to its
connection and keeps, per oid, the state a ghost reloads.  ``attach`` gives an
object an oid and this connection and marks it saved; ``make_ghost`` stores a
deep copy of the object's state (what a commit would write) and turns the
object into a ghost; ``make_tracked`` moves a saved object into the cache's
tracked class.  ``load_state`` follows the connection contract of
``dhruva.persistent``: swap the real class back with ``_p_set_status_saved()``
and only then call ``__setstate__`` (on a ghost, looking ``__setstate__`` up
would itself try to load).

``check_against_builtin`` runs a sequence of operations on a builtin container
and on its persistent twin and checks that they agree, and that the twin's
persistence bookkeeping is right after every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from dataclasses import dataclass
from typing import Any

from dhruva.persistent import PersistentBase
from dhruva.persistent_dict import PersistentDict
from dhruva.persistent_list import PersistentList
from dhruva.persistent_set import PersistentSet


class FakeConnection:
    def __init__(self) -> None:
        self.states: dict[bytes, Any] = {}
        self.loaded: list[PersistentBase] = []
        self.changed: list[PersistentBase] = []
        self.read: list[PersistentBase] = []
        self._next_oid = 1

    # -- the connection interface persistent objects use ---------------------------------

    def load_state(self, obj: PersistentBase) -> None:
        self.loaded.append(obj)
        oid = obj._p_oid
        assert oid is not None
        state = copy.deepcopy(self.states[oid], {id(obj): obj})
        obj._p_set_status_saved()
        obj.__setstate__(state)

    def note_change(self, obj: PersistentBase) -> None:
        self.changed.append(obj)

    def note_read(self, obj: PersistentBase) -> None:
        self.read.append(obj)

    # -- test helpers ----------------------------------------------------------------

    def attach(self, obj: PersistentBase) -> PersistentBase:
        """Give ``obj`` an oid and this connection, and mark it saved."""
        if obj._p_oid is None:
            oid = self._next_oid.to_bytes(8, "big")
            self._next_oid += 1
            object.__setattr__(obj, "_p_oid", oid)
            object.__setattr__(obj, "_p_connection", self)
        obj._p_set_status_saved()
        return obj

    def make_saved(self, obj: PersistentBase) -> None:
        """Mark ``obj`` saved (its current state counts as committed)."""
        self.attach(obj)
        assert obj._p_oid is not None
        # A reference from the state to the object itself stays a reference,
        # as a stored reference by oid would.
        self.states[obj._p_oid] = copy.deepcopy(obj.__getstate__(), {id(obj): obj})

    def make_ghost(self, obj: PersistentBase) -> None:
        """Commit ``obj``'s current state here and turn it into a ghost."""
        self.make_saved(obj)
        obj._p_set_status_ghost()

    def make_tracked(self, obj: PersistentBase) -> None:
        """Mark ``obj`` saved and move it into the tracked class."""
        self.make_saved(obj)
        obj._p_set_tracked()

    def reset(self) -> None:
        self.loaded.clear()
        self.changed.clear()


# -- comparing a persistent container with its builtin -------------------------------------

PRIOR_STATES = ("unsaved", "saved", "ghost", "tracked")


@dataclass(frozen=True)
class Op:
    """One operation applied alike to a builtin container and its persistent twin.

    ``mutating`` says the operation may change the contents (only those may
    mark the object changed).  ``arbitrary`` marks ``set.pop``, whose result
    depends on the set's internal layout: it is applied to the persistent
    object first and the model then removes the same element.  ``reads`` is
    False for operations that may answer without reading the contents (a
    comparison with an unrelated type returns NotImplemented first).
    """

    name: str
    apply: Callable[[Any], Any]
    mutating: bool = False
    arbitrary: bool = False
    reads: bool = True

    def __repr__(self) -> str:
        return self.name


def _normalize(value: Any) -> Any:
    """A result as a builtin value, so that the two sides compare by content."""
    if isinstance(value, PersistentDict):
        return dict(value.data)
    if isinstance(value, PersistentList):
        return list(value.data)
    if isinstance(value, PersistentSet):
        return set(value.s)
    if isinstance(value, KeysView | ValuesView | ItemsView | Iterator):
        return list(value)
    return value


def _outcome(op: Op, target: Any) -> tuple[str, Any, bool]:
    """("ok", normalized result, result is target) or ("raise", exception type, False)."""
    try:
        result = op.apply(target)
    except Exception as exc:
        return ("raise", type(exc), False)
    return ("ok", _normalize(result), result is target)


def _set_prior_state(obj: PersistentBase, connection: FakeConnection, prior: str) -> None:
    if prior == "unsaved":
        obj._p_set_status_unsaved()
    elif prior == "saved":
        connection.make_saved(obj)
    elif prior == "ghost":
        connection.make_ghost(obj)
    else:
        connection.make_tracked(obj)


def check_against_builtin(
    initial: Any,
    make: Callable[[Any], PersistentBase],
    contents: Callable[[Any], Any],
    steps: list[tuple[str, Op]],
) -> None:
    """Run ``steps`` on a copy of ``initial`` and on ``make(initial)``; they must agree.

    Before each step the persistent object is put in the step's prior state
    (unsaved, saved, ghost or tracked).  After each step: the results (or the
    exception types) are equal, contents are equal, a ghost that answered was
    loaded exactly once, a step that changed the contents marked the object
    changed through the connection, and a non-mutating step did not.
    """
    model = copy.deepcopy(initial)
    obj = make(copy.deepcopy(initial))
    real_class = type(obj)
    connection = FakeConnection()
    for prior, op in steps:
        _set_prior_state(obj, connection, prior)
        connection.reset()
        before = copy.deepcopy(model)
        if op.arbitrary:
            got = _outcome(op, obj)
            expected = got if got[0] == "ok" else _outcome(op, model)
            if got[0] == "ok":
                model.remove(got[1])
        else:
            expected = _outcome(op, model)
            got = _outcome(op, obj)
        assert got == expected, (prior, op)
        assert len(connection.loaded) <= 1
        if got[0] == "ok" and op.reads:
            if prior == "ghost":
                assert connection.loaded == [obj], (prior, op)
            assert type(obj) is real_class, (prior, op)
        assert obj.__class__ is real_class
        changed = model != before
        if changed:
            assert obj._p_is_unsaved(), (prior, op)
        if prior != "unsaved":
            if changed:
                assert connection.changed == [obj], (prior, op)
            if not op.mutating:
                assert connection.changed == [], (prior, op)
                assert not obj._p_is_unsaved(), (prior, op)
        assert contents(obj) == model, (prior, op)
