"""The C versions of the object model's and the loader's steps behave as the Python ones.

Theory of operation.  ``dhruva.speedups.install_persistent`` gives
PersistentBase a C ``__new__`` and ``__setattr__``; the Connection ends a load
with ``install_state`` and a commit with ``mark_all_saved``; ObjectWriter attaches
a new object with ``attach`` and pickles with the C ``persistent_id``; and
``read_pickle_state`` reads a plain state pickle with ``plain_loads``
(tests/test_speedups.py covers the other functions).  The behaviour tests
here pass on both paths -- ``nox -s tests`` runs them with the extension and
``nox -s tests_bare`` without it -- so they pin the C versions to what the
Python ones do; the tests marked ``needs_c`` look at the C functions directly
(``plain_loads`` against ``pickle.loads``, byte by byte).
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import random
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_connection import ConflictingStorage

from dhruva import speedups
from dhruva.connection import Connection
from dhruva.error import SerializationError
from dhruva.persistent import GHOST, SAVED, UNSAVED, Persistent, PersistentBase, PersistentObject
from dhruva.persistent_dict import PersistentDict
from dhruva.persistent_list import PersistentList
from dhruva.storage import MemoryStorage

_c: Any = importlib.import_module("dhruva._speedups") if speedups.ENABLED else None

needs_c = pytest.mark.skipif(
    _c is None,
    reason="the C extension dhruva._speedups is not in use (not built, or "
    f"{speedups.PURE_PYTHON_VARIABLE} is set)",
)


class Item(Persistent):
    def __init__(self, a: Any = None) -> None:
        self.a = a


class Slotted(PersistentObject):
    __slots__ = ("x", "y")


class OwnNew(Persistent):
    def __new__(cls, *args: Any, **kwargs: Any) -> OwnNew:
        self = super().__new__(cls, *args, **kwargs)
        self.made_by = "OwnNew.__new__"
        return self

    def __init__(self, a: Any) -> None:
        self.a = a


class Counting(Persistent):
    """A state set through a __setstate__ of its own."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__["restored"] = True


class Refusing(Persistent):
    fail = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        if Refusing.fail:
            raise ValueError("this state is refused")
        super().__setstate__(state)


def _fresh(obj: PersistentBase) -> tuple[Any, ...]:
    get = object.__getattribute__
    return tuple(
        get(obj, name) for name in ("_p_status", "_p_serial", "_p_size", "_p_oid", "_p_connection")
    )


@pytest.mark.req("CONV-006")
@pytest.mark.parametrize("cls", [Item, Slotted, OwnNew])
def test_a_new_object_starts_unsaved_with_no_oid_or_connection(cls: type) -> None:
    obj = cls.__new__(cls) if cls is not OwnNew else cls(1)
    assert _fresh(obj) == (UNSAVED, 0, 0, None, None)
    assert type(obj) is cls


def test_new_ignores_its_arguments_as_object_new_would_not() -> None:
    # PersistentBase.__new__ takes and drops the constructor's arguments.
    assert Item.__new__(Item, 1, 2, key=3)._p_status == UNSAVED
    assert OwnNew(5).made_by == "OwnNew.__new__"


@pytest.mark.req("CONV-008")
def test_the_c_versions_are_installed_exactly_when_the_extension_is_in_use() -> None:
    new = PersistentBase.__dict__["__new__"]
    hooks = [
        PersistentBase.__dict__["__setattr__"],
        *(
            hidden.__dict__["__getattribute__"]
            for cls in (Persistent, PersistentObject, Item, Slotted)
            for hidden in (cls._p_ghost_class, cls._p_tracked_class)
        ),
    ]
    if speedups.ENABLED:
        assert type(new.__func__).__name__ == "builtin_function_or_method"
        assert {type(hook).__name__ for hook in hooks} == {"method_descriptor"}
    else:
        assert type(new.__func__).__name__ == "function"
        assert {type(hook).__name__ for hook in hooks} == {"function"}


@pytest.mark.req("CONV-006")
def test_assigning_to_a_saved_object_notes_the_change_once() -> None:
    connection = Connection(MemoryStorage())
    root = connection.get_root()
    root["item"] = item = Item(1)
    connection.commit()
    assert item._p_status == SAVED and not connection.changed
    item.a = 2
    assert item._p_status == UNSAVED
    assert list(connection.changed.values()) == [item]
    item.b = 3  # already changed: noted once
    assert list(connection.changed.values()) == [item]
    connection.commit()
    assert item._p_status == SAVED


def test_assigning_a_p_name_notes_nothing() -> None:
    connection = Connection(MemoryStorage())
    connection.get_root()["item"] = item = Item(1)
    connection.commit()
    item._p_size = 7
    assert item._p_status == SAVED and not connection.changed


@pytest.mark.req("CONV-006")
def test_assigning_to_a_ghost_loads_it_first() -> None:
    storage = MemoryStorage()
    first = Connection(storage)
    first.get_root()["item"] = Item({"k": 1})
    first.commit()
    item = Connection(storage).get_root()["item"]
    assert item._p_status == GHOST
    item.b = 2
    assert item._p_status == UNSAVED
    assert item.a == {"k": 1} and item.b == 2


class Name(str):
    pass


def test_an_attribute_name_that_is_not_an_exact_str() -> None:
    item = Item(1)
    # A str subclass goes to the Python original, which stores it as CPython does.
    setattr(item, Name("c"), 3)
    assert item.c == 3
    with pytest.raises(TypeError):
        item.__setattr__(5, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PersistentBase.__setattr__(item)  # type: ignore[call-arg]


def test_a_ghost_hook_on_an_object_that_is_not_persistent_fails_as_in_python() -> None:
    class Plain:
        pass

    for hidden in (Item._p_ghost_class, Item._p_tracked_class):
        with pytest.raises(AttributeError, match=r"_p_connection|_p_class"):
            hidden.__dict__["__getattribute__"](Plain(), "a")


def test_a_ghost_without_a_connection_says_so() -> None:
    ghost = Item.__new__(Item)
    object.__setattr__(ghost, "_p_status", GHOST)
    object.__setattr__(ghost, "__class__", Item._p_ghost_class)
    with pytest.raises(RuntimeError, match="no connection"):
        ghost.a  # noqa: B018
    assert ghost._p_status == GHOST
    assert ghost.__class__ is Item


def test_a_tracked_object_reports_its_first_use_once() -> None:
    storage = MemoryStorage()
    first = Connection(storage)
    first.get_root()["item"] = Item(1)
    first.commit()
    second = Connection(storage)
    item = second.get_root()["item"]
    assert item.a == 1
    second.abort()  # a transaction boundary arms the object again (tracked) when reads count
    item._p_set_tracked()
    assert item._p_is_tracked()
    before = len(second._reads)
    assert item.a == 1
    assert not item._p_is_tracked()
    assert len(second._reads) == before + 1
    assert item.a == 1
    assert len(second._reads) == before + 1


class NotingOwnChange(Persistent):
    """A class with a _p_note_change of its own: setattr calls it."""

    notes = 0

    def _p_note_change(self) -> None:
        type(self).notes += 1
        super()._p_note_change()


class _NoteRecorder:
    """A connection stand-in that records note_change calls."""

    def __init__(self) -> None:
        self.noted: list[PersistentBase] = []

    def note_change(self, obj: PersistentBase) -> None:
        self.noted.append(obj)


def _saved_with(obj: PersistentBase, connection: Any) -> None:
    object.__setattr__(obj, "_p_oid", b"\0" * 7 + b"\1")
    object.__setattr__(obj, "_p_connection", connection)
    object.__setattr__(obj, "_p_status", SAVED)


def test_a_change_to_a_saved_object_is_noted_once_with_its_connection() -> None:
    # The C setattr notes the common case itself (a saved object in its class).
    recorder = _NoteRecorder()
    item = Item(1)
    _saved_with(item, recorder)
    item.a = 2
    item.b = 3
    assert recorder.noted == [item]
    assert item._p_status == UNSAVED and type(item) is Item
    assert (item.a, item.b) == (2, 3)


def test_a_change_to_a_saved_object_without_a_connection_only_marks_it() -> None:
    item = Item(1)
    _saved_with(item, None)
    item.a = 2
    assert item._p_status == UNSAVED and item.a == 2


def test_a_class_of_its_own_note_change_is_called_by_setattr() -> None:
    recorder = _NoteRecorder()
    item = NotingOwnChange()
    _saved_with(item, recorder)
    NotingOwnChange.notes = 0
    item.a = 1
    assert NotingOwnChange.notes == 1 and recorder.noted == [item]
    assert item._p_status == UNSAVED


def test_a_change_to_a_tracked_object_puts_it_back_in_its_class() -> None:
    storage = MemoryStorage()
    first = Connection(storage)
    first.get_root()["item"] = Item(1)
    first.commit()
    item = first.get_root()["item"]
    item._p_set_tracked()
    assert item._p_is_tracked()
    item.a = 5
    assert type(item) is Item and item._p_status == UNSAVED
    first.commit()
    assert Connection(storage).get_root()["item"].a == 5


def test_a_change_whose_connection_fails_raises_and_sets_nothing() -> None:
    class Refuses:
        def note_change(self, obj: PersistentBase) -> None:
            raise RuntimeError("refused")

    item = Item(1)
    _saved_with(item, Refuses())
    with pytest.raises(RuntimeError, match="refused"):
        item.a = 2
    assert item.__dict__["a"] == 1


def test_setattr_of_an_object_that_is_not_persistent_fails_as_in_python() -> None:
    class Plain:
        pass

    with pytest.raises(AttributeError, match="_p_status"):
        PersistentBase.__setattr__(Plain(), "a", 1)  # type: ignore[arg-type]


@pytest.mark.req("CONV-006")
def test_a_load_installs_the_state_whatever_the_class_sets_it_with() -> None:
    storage = MemoryStorage()
    first = Connection(storage)
    root = first.get_root()
    root["plain"] = Item(1)
    root["own"] = own = Counting()
    own.a = 2
    root["slots"] = slotted = Slotted()
    slotted.x = 3
    first.commit()
    second = Connection(storage)
    loaded = second.get_root()
    assert loaded["plain"].a == 1 and loaded["plain"]._p_status == SAVED
    assert loaded["own"].a == 2 and loaded["own"].restored is True
    assert loaded["slots"].x == 3 and not hasattr(loaded["slots"], "y")
    key = next(k for k in loaded["plain"].__dict__ if k == "a")
    assert sys.intern(key) is key  # interned, as the Python __setstate__ does


@pytest.mark.req("CONV-006")
def test_a_state_the_class_refuses_leaves_a_ghost_and_the_error() -> None:
    storage = MemoryStorage()
    first = Connection(storage)
    first.get_root()["item"] = Refusing()
    first.commit()
    second = Connection(storage)
    item = second.get_root()["item"]
    Refusing.fail = True
    try:
        with pytest.raises(ValueError, match="refused"):
            item.a  # noqa: B018
        assert item._p_status == GHOST
    finally:
        Refusing.fail = False
    assert item.__dict__ == {} or item._p_status == SAVED  # loads fine the next time
    assert item._p_status == SAVED


@pytest.mark.req("CONV-006")
def test_a_commit_marks_new_and_changed_objects_saved_with_their_sizes() -> None:
    connection = Connection(MemoryStorage())
    root = connection.get_root()
    root["a"] = first = Item("x" * 100)
    connection.commit()
    size = first._p_size
    assert first._p_status == SAVED and size > 100
    first.a = "y"
    root["b"] = second = Item(2)
    connection.commit()
    assert first._p_status == second._p_status == SAVED
    assert first._p_size < size and second._p_size > 0
    assert first._p_oid is not None and second._p_connection is connection
    assert connection.get(second._p_oid) is second


class Proxy:
    """An object that says it is an Item (isinstance follows ``__class__``)."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return Item


def test_persistent_id_follows_isinstance_as_the_python_one_does() -> None:
    connection = Connection(MemoryStorage())
    root = connection.get_root()
    root["item"] = Item([1, "two", 3.0, None])
    connection.commit()
    assert root["item"]._p_oid is not None
    root["proxy"] = Proxy()
    # Both versions take the proxy for a persistent object and fail on it alike.
    with pytest.raises(SerializationError) as failure:
        connection.commit()
    assert isinstance(failure.value.__cause__, AttributeError)
    assert "_p_connection" in str(failure.value.__cause__)
    connection.abort()


# -- plain_loads ------------------------------------------------------------------------------

_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary()
)


def _containers(children: Any, keys: Any) -> Any:
    """Lists, tuples of every length pickle writes differently, and dicts of ``children``."""
    return (
        st.lists(children)
        | st.tuples(children)
        | st.tuples(children, children)
        | st.tuples(children, children, children)
        | st.lists(children, min_size=4).map(tuple)
        | st.dictionaries(keys, children)
    )


_plain = st.recursive(
    _leaf, lambda children: _containers(children, st.text() | st.integers()), max_leaves=25
)


@needs_c
@pytest.mark.req("CONV-006", "CONV-007")
@settings(max_examples=400, deadline=None)
@given(_plain, st.sampled_from([4, 5]))
def test_plain_loads_reads_what_pickle_loads_reads(value: Any, protocol: int) -> None:
    data = pickle.dumps(value, protocol)
    handled, got = _c.plain_loads(data)
    assert handled, f"protocol {protocol} plain data left to pickle: {data!r}"
    expected = pickle.loads(data)
    assert repr(got) == repr(expected)
    assert type(got) is type(expected)


@needs_c
def test_plain_loads_keeps_shared_objects_shared() -> None:
    shared = [1, 2]
    handled, got = _c.plain_loads(pickle.dumps({"x": shared, "y": shared, "z": (shared,)}, 5))
    assert handled
    assert got["x"] is got["y"] is got["z"][0]


@needs_c
@pytest.mark.req("CONV-007")
@pytest.mark.parametrize(
    "value",
    [{1, 2}, frozenset([3]), Item, bytearray(b"x"), 1 + 2j, [Name("a")]],
    ids=["set", "frozenset", "class", "bytearray", "complex", "str-subclass"],
)
def test_plain_loads_leaves_anything_else_to_pickle(value: Any) -> None:
    assert _c.plain_loads(pickle.dumps(value, 5)) == (False, None)


@needs_c
@pytest.mark.req("CONV-007")
@pytest.mark.parametrize("protocol", [0, 1, 2, 3])
def test_plain_loads_leaves_older_protocols_to_pickle(protocol: int) -> None:
    # Protocols before 4 memoize with PUT opcodes, which plain_loads does not read.
    assert _c.plain_loads(pickle.dumps({"a": [1]}, protocol)) == (False, None)


@needs_c
@pytest.mark.req("CONV-007")
def test_plain_loads_never_accepts_what_pickle_refuses() -> None:
    value = {"a": 12345, "b": "item", "c": 0.5, "d": [1, 2, 3], "e": (None, True, b"x" * 300)}
    data = pickle.dumps(value, 5)
    for cut in range(len(data)):
        assert _c.plain_loads(data[:cut]) == (False, None), cut
    rng = random.Random(7)
    accepted = 0
    for _ in range(5000):
        damaged = bytearray(data)
        for _flip in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        handled, got = _c.plain_loads(bytes(damaged))
        if handled:
            accepted += 1
            expected = pickle.loads(bytes(damaged))  # raises if pickle refuses it
            assert repr(got) == repr(expected)
    assert accepted > 0  # the damage hit values as well as structure


@needs_c
def test_plain_loads_reads_big_and_negative_ints_and_special_floats() -> None:
    value = [2**64 + 5, -(2**70), -1, 255, 256, 65535, 65536, -(2**31), float("inf"), -0.0]
    handled, got = _c.plain_loads(pickle.dumps(value, 5))
    assert handled and repr(got) == repr(value)


# --- the cache's clock hand (Connection.shrink_cache) ----------------------------------------


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _clock_run(seed: int) -> list[Any]:
    """Reads, writes and shrinks of a mixed cache; what the cache holds after each step."""
    rng = random.Random(seed)
    connection = Connection(MemoryStorage())
    root = connection.get_root()
    objects: list[Any] = []
    for n in range(120):
        obj: Any = Item(n) if n % 3 else Slotted()
        if n % 3 == 0:
            obj.x = "s" * (n % 17)
        objects.append(obj)
    root["all"] = objects
    connection.commit()

    def seen() -> Any:
        return (
            [
                (int.from_bytes(oid, "big"), obj._p_status, obj._p_is_tracked())
                for oid, obj in connection._loaded.items()
            ],
            connection.get_loaded_bytes(),
            connection.get_cache_count(),
        )

    steps = []
    for _ in range(12):
        for obj in rng.sample(objects, 30):
            if obj._p_is_ghost() or rng.random() < 0.5:
                _ = obj.x if isinstance(obj, Slotted) else obj.a  # a read: loads or untracks
            else:
                setattr(obj, "x" if isinstance(obj, Slotted) else "a", rng.random())
        connection.set_cache_size(rng.randrange(0, 130))
        connection.set_cache_bytes(rng.choice([None, rng.randrange(0, 4000)]))
        connection.shrink_cache()
        steps.append(seen())
        connection.commit()
        steps.append(seen())
    return steps


@pytest.mark.req("CONV-006")
@pytest.mark.parametrize("seed", range(6))
def test_the_clock_hand_leaves_the_cache_as_the_python_one_does(seed: int) -> None:
    from unittest import mock

    from dhruva import connection as connection_module

    with mock.patch.object(connection_module, "_c_clock_batch", None):
        reference = _clock_run(seed)
    assert _clock_run(seed) == reference
    # The bounds hold after each shrink, except for objects that cannot go.
    for loaded, _bytes, _count in reference:
        assert all(status in (SAVED, UNSAVED, GHOST) for _oid, status, _tracked in loaded)


@needs_c
@pytest.mark.req("CONV-007")
def test_clock_batch_hands_back_what_is_not_the_cache() -> None:
    connection = Connection(MemoryStorage())
    root = connection.get_root()
    root["a"], root["b"] = Item(1), Item(2)
    connection.commit()
    loaded, changed = connection._loaded, connection._changed
    batch = list(loaded.items())
    before = [(oid, type(obj)) for oid, obj in loaded.items()]
    for unusual in (
        (tuple(batch), loaded, changed, 0, -1, 0, 10),
        ([*batch, (b"\0" * 8, object())], loaded, changed, 0, -1, 0, 10),
        ([*batch, (b"\0" * 8,)], loaded, changed, 0, -1, 0, 10),
        ([*batch, (bytearray(8), batch[0][1])], loaded, changed, 0, -1, 0, 10),
        (batch, loaded, changed, "0", -1, 0, 10),
        (batch, loaded, changed, 0, -1, 0, 2**70),
    ):
        assert _c.clock_batch(*unusual) is None
        # Nothing armed, ghosted or moved, even for the good entries before the bad one.
        assert [(oid, type(obj)) for oid, obj in loaded.items()] == before
    with pytest.raises(TypeError):
        _c.clock_batch(batch, loaded, changed, 0, -1, 0)  # the call itself is wrong
    assert _c.clock_batch(batch, loaded, changed, 10**6, -1, 0, 10) == (0, 10, True)
    assert [(oid, type(obj)) for oid, obj in loaded.items()] == before  # within bounds


def test_a_cache_entry_that_is_not_persistent_fails_as_in_python() -> None:
    """What the C hand hands back, the Python hand decides: its AttributeError."""
    from unittest import mock

    from dhruva import connection as connection_module

    def shrink_with_a_stranger(pure: bool) -> str:
        connection = Connection(MemoryStorage())
        connection.get_root()["a"] = Item(1)
        connection.commit()
        connection._loaded[(9).to_bytes(8, "big")] = object()  # type: ignore[assignment]
        connection.set_cache_size(0)
        path = mock.patch.object(connection_module, "_c_clock_batch", None) if pure else _nothing()
        with path, pytest.raises(AttributeError) as info:
            connection.shrink_cache()
        return type(info.value).__name__

    assert shrink_with_a_stranger(True) == shrink_with_a_stranger(False) == "AttributeError"


# -- the commit's writer: reference and mark_all_saved ------------------------------------------


class OwnState(Persistent):
    """A state made by a __getstate__ of its own (the C records loop hands it back)."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "extra": len(self.__dict__)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({k: v for k, v in state.items() if k != "extra"})


def _new_object(rng: random.Random, made: list[Any]) -> Any:
    """One new object of the kinds a commit meets: plain states, references, others."""
    kind = rng.random()
    if kind < 0.4:
        return Item(rng.random())
    if kind < 0.55:
        obj: Any = Slotted()
        obj.x = rng.choice(made) if made else None
        return obj
    if kind < 0.65:
        return OwnState(rng.randrange(100))
    if kind < 0.75:
        return Item({rng.randrange(5), "a set is not plain data"})
    if kind < 0.8:
        return Item(Item(Item(rng.random())))  # new objects inside new objects
    if made:
        return Item([rng.choice(made), Item(len(made)), rng.choice(made)])
    return Item(None)


def _commit_run(seed: int) -> list[Any]:
    """Commits of new objects reaching new objects, and of changed ones; what each leaves."""
    rng = random.Random(seed)
    storage = MemoryStorage()
    connection = Connection(storage)
    root = connection.get_root()
    made: list[Any] = []
    steps: list[Any] = []
    for _ in range(6):
        for _ in range(rng.randrange(1, 40)):
            made.append(_new_object(rng, made))
        root[len(steps)] = made[-rng.randrange(1, len(made) + 1) :]
        for obj in rng.sample(made, min(5, len(made))):
            if obj._p_oid is not None and not obj._p_is_ghost():
                setattr(obj, "y" if isinstance(obj, Slotted) else "a", rng.random())
        connection.commit()
        steps.append(
            (
                [
                    (int.from_bytes(oid, "big"), type(obj).__name__, obj._p_status, obj._p_size)
                    for oid, obj in connection._loaded.items()
                ],
                connection.get_loaded_bytes(),
                sorted(
                    (oid, storage.load(oid).data, storage.load(oid).refs)
                    for oid in connection._loaded
                ),
            )
        )
    return steps


@pytest.mark.req("CONV-006")
@pytest.mark.parametrize("seed", range(5))
def test_a_commit_writes_and_marks_as_the_python_one_does(seed: int) -> None:
    from unittest import mock

    from dhruva import connection as connection_module
    from dhruva import serialize

    with (
        mock.patch.object(connection_module, "_c_mark_all_saved", None),
        mock.patch.object(serialize, "_c_reference", None),
        mock.patch.object(serialize, "_c_encode_records", None),
    ):
        reference = _commit_run(seed)
    assert _commit_run(seed) == reference


@pytest.mark.req("CONV-006")
@pytest.mark.parametrize("seed", range(5))
def test_the_records_loop_writes_what_the_python_loop_writes(seed: int) -> None:
    from unittest import mock

    from dhruva import serialize

    with mock.patch.object(serialize, "_c_encode_records", None):
        reference = _commit_run(seed)
    assert _commit_run(seed) == reference


def test_the_records_loop_runs_in_c_only_for_the_pickle_writer() -> None:
    from dhruva import serialize
    from dhruva.serialize import ObjectWriter

    class Own(ObjectWriter):
        def _encode_one(self, seen: Any, append: Any, obj: PersistentBase) -> None:
            super()._encode_one(seen, append, obj)

    connection = Connection(MemoryStorage())
    assert connection._writer._c_records is (serialize._c_encode_records is not None)
    assert not Own(connection)._c_records
    for name in ("msgspec", "dill"):
        try:
            other = Connection(MemoryStorage(), serializer=name)
        except SerializationError:
            continue  # its optional package is not installed
        assert not other._writer._c_records


def test_a_state_that_cannot_be_stored_fails_alike_on_both_paths() -> None:
    from unittest import mock

    from dhruva import serialize

    def failure() -> tuple[str, str, bool]:
        connection = Connection(MemoryStorage())
        root = connection.get_root()
        root["ok"] = Item(1)
        root["bad"] = Item([1, lambda: None])
        with pytest.raises(SerializationError) as raised:
            connection.commit()
        connection.abort()
        return type(raised.value).__name__, str(raised.value), root._p_is_ghost()

    with mock.patch.object(serialize, "_c_encode_records", None):
        expected = failure()
    assert failure() == expected
    assert "lambda" in expected[1]


@needs_c
def test_encode_records_refuses_arguments_of_the_wrong_kinds() -> None:
    from dhruva import serialize

    getstate = serialize._default_getstate
    with pytest.raises(TypeError):
        _c.encode_records((), set(), [], {}, getstate, print)
    with pytest.raises(TypeError):
        _c.encode_records([], [], [], {}, getstate, print)
    with pytest.raises(TypeError):
        _c.encode_records([], set(), (), {}, getstate, print)
    with pytest.raises(TypeError):
        _c.encode_records([], set(), [], [], getstate, print)
    # Anything that is not an ordinary persistent object goes to the fallback.
    handed: list[Any] = []
    _c.encode_records([object(), Item(1)], set(), [], {}, getstate, handed.append)
    assert [type(obj) for obj in handed] == [Item, object]


def test_an_object_of_another_connection_is_refused_on_both_paths() -> None:
    from unittest import mock

    from dhruva import serialize
    from dhruva.error import InvalidObjectReference

    def refusal() -> str:
        other = Connection(MemoryStorage())
        other.get_root()["x"] = stranger = Item(1)
        other.commit()
        connection = Connection(MemoryStorage())
        connection.get_root()["y"] = Item([stranger])
        with pytest.raises(InvalidObjectReference) as failure:
            connection.commit()
        connection.abort()
        return str(failure.value)

    with mock.patch.object(serialize, "_c_reference", None):
        expected = refusal()
    assert refusal() == expected
    assert "another connection" in expected


def test_a_writer_subclass_keeps_its_own_reference() -> None:
    from dhruva.serialize import ObjectWriter

    seen: list[Any] = []

    class Noting(ObjectWriter):
        def reference(self, obj: PersistentBase) -> tuple[bytes, type]:
            seen.append(obj)
            return super().reference(obj)

    connection = Connection(MemoryStorage())
    inner = Item(1)
    outer = Item(inner)
    connection.get_root()["o"] = outer
    writer = Noting(connection)
    records = writer.records([connection.get_root()])
    assert seen == [outer, inner]
    assert [oid for oid, _data, _refs in records] == [
        connection.get_root()._p_oid,
        outer._p_oid,
        inner._p_oid,
    ]
    for obj in writer.attached:
        connection._detach(obj)


class Other(Persistent):
    """A second persistent class: its global is written once per state, then from the memo."""

    def __init__(self, a: Any = None) -> None:
        self.a = a


def _value_with_references(rng: random.Random, made: list[Any], key: int) -> Any:
    """A value of a state that holds persistent objects, new and stored, in every place."""
    kind = rng.random()
    if kind < 0.4:
        return Item(key)
    if kind < 0.5 and made:
        return rng.choice(made)  # met again, in this state or another
    if kind < 0.6:
        return (Other(key), Item(key), key)
    if kind < 0.7 and made:
        stored = [obj for obj in made if obj._p_oid is not None]
        # An oid bytes object as a plain value too: memoized once, for both uses.
        return [rng.choice(made), rng.choice(made), stored[0]._p_oid if stored else None]
    if kind < 0.8:
        return {Item(key): Other(key)}  # a persistent object as a dict key
    if kind < 0.9:
        slotted = Slotted()
        slotted.x = Item([key, "in a slot"])
        return slotted
    return PersistentList([Item(key), f"s{key}"])


def _reference_run(seed: int) -> list[Any]:
    """Commits of PersistentDicts of up to 1,000 values that reference persistent objects."""
    rng = random.Random(seed)
    storage = MemoryStorage()
    connection = Connection(storage)
    root = connection.get_root()
    made: list[Any] = []
    for step in range(6):
        chunk: PersistentDict[Any, Any] = PersistentDict()
        for key in range(rng.choice((1, 10, 300, 1000))):
            value = _value_with_references(rng, made, key)
            chunk[key if rng.random() < 0.7 else f"k{key}"] = value
            if isinstance(value, PersistentBase):
                made.append(value)
        root[step] = chunk
        if step % 2:
            root[step - 1]["again"] = chunk  # a changed chunk, written again
        connection.commit()
    return sorted(
        (oid, storage.load(oid).data, storage.load(oid).refs) for oid in connection._loaded
    )


@pytest.mark.req("CONV-006")
@pytest.mark.parametrize("seed", range(4))
def test_the_records_loop_writes_references_as_the_python_pickler_does(seed: int) -> None:
    """Byte for byte, refs in order: the C loop's persistent ids against the C Pickler's."""
    from unittest import mock

    from dhruva import serialize

    with mock.patch.object(serialize, "_c_encode_records", None):
        reference = _reference_run(seed)
    assert _reference_run(seed) == reference


class HookedStorage(MemoryStorage):
    """A storage whose new_oid runs a hook: Python code in the middle of a state's pickle."""

    hook: Any = None

    def new_oid(self) -> bytes:
        if self.hook is not None:
            self.hook()
        return super().new_oid()


def _changed_while_written() -> list[Any]:
    from dhruva import serialize

    storage = HookedStorage()
    connection = Connection(storage)
    root = connection.get_root()
    victim: list[Any] = [f"s{n}" for n in range(300)] + [Item(n) for n in range(8)]
    calls = []

    def hook() -> None:
        calls.append(None)
        if len(calls) == 3:  # the list's second Item is being written
            # The list is emptied, which frees the strs already written, and refilled
            # with strs made after that: the memo must not take one at a freed one's
            # address for a str it knows.
            del victim[:]
            victim.extend([0] * 302)
            victim.extend(f"s{n}" for n in range(300))
            # Another state encoded now (from this hook) is answered without the
            # writer's buffer, which is in use.
            assert serialize.PickleSerializer().encode(Item, {"a": [1, "b"]}, print) == (
                serialize._class_prefix(Item) + pickle.dumps({"a": [1, "b"]}, 5)
            )

    root["v"] = Item(victim)
    storage.hook = hook
    connection.commit()
    storage.hook = None
    assert len(calls) == 3
    return sorted(
        (oid, storage.load(oid).data, storage.load(oid).refs) for oid in connection._loaded
    )


def test_a_state_changed_by_a_new_oid_is_written_as_the_python_pickler_writes_it() -> None:
    from unittest import mock

    from dhruva import serialize

    with mock.patch.object(serialize, "_c_encode_records", None):
        expected = _changed_while_written()
    assert _changed_while_written() == expected


def test_an_interrupt_in_new_oid_is_not_swallowed_on_either_path() -> None:
    from unittest import mock

    from dhruva import serialize

    def interrupted() -> str:
        storage = HookedStorage()
        connection = Connection(storage)
        connection.get_root()["v"] = Item([Item(1)])

        def hook() -> None:
            if len(connection._writer.attached) == 1:
                storage.hook = None  # once: a path that swallowed it would then commit
                raise KeyboardInterrupt("stop")

        storage.hook = hook
        with pytest.raises(KeyboardInterrupt) as raised:
            connection.commit()
        storage.hook = None
        connection.abort()
        return str(raised.value)

    with mock.patch.object(serialize, "_c_encode_records", None):
        expected = interrupted()
    assert interrupted() == expected == "stop"


def _unfindable_class_failure() -> tuple[str, str]:
    class Local(Persistent):  # pickle cannot name it: its qualname holds <locals>
        pass

    connection = Connection(MemoryStorage())
    connection.get_root()["v"] = Item([Local()])
    with pytest.raises(SerializationError) as raised:
        connection.commit()
    connection.abort()
    return type(raised.value).__name__, str(raised.value)


def test_a_reference_to_a_class_pickle_cannot_name_fails_alike_on_both_paths() -> None:
    from unittest import mock

    from dhruva import serialize

    with mock.patch.object(serialize, "_c_encode_records", None):
        expected = _unfindable_class_failure()
    assert _unfindable_class_failure() == expected


def test_a_class_with_an_extension_code_is_written_as_pickle_writes_it() -> None:
    import copyreg
    from unittest import mock

    from dhruva import serialize

    def written() -> list[Any]:
        storage = MemoryStorage()
        connection = Connection(storage)
        connection.get_root()["v"] = Item([Other(1), Other(2)])
        connection.commit()
        return sorted((oid, storage.load(oid).data) for oid in connection._loaded)

    copyreg.add_extension(Other.__module__, Other.__qualname__, 0x7FFF0001)
    try:
        with mock.patch.object(serialize, "_c_encode_records", None):
            expected = written()
        assert written() == expected
        assert any(b"\x84\x01\x00\xff\x7f" in data for _oid, data in expected)  # EXT4
    finally:
        copyreg.remove_extension(Other.__module__, Other.__qualname__, 0x7FFF0001)


@needs_c
def test_mark_all_saved_refuses_what_the_python_loop_cannot_take() -> None:
    connection = Connection(MemoryStorage())
    root = connection.get_root()
    root["a"] = item = Item(1)
    connection.commit()
    loaded = connection._loaded
    with pytest.raises(TypeError):
        _c.mark_all_saved((item,), {}, 1, loaded)
    with pytest.raises(TypeError):
        _c.mark_all_saved([object()], {}, 1, loaded)
    with pytest.raises(KeyError):
        _c.mark_all_saved([item], {}, 1, loaded)
    assert _c.mark_all_saved([item], {item._p_oid: item._p_size + 5}, 7, loaded) == 5
    assert item._p_serial == 7 and item._p_status == SAVED


# -- encode_plain -------------------------------------------------------------------------------


class _Str(str):
    pass


class _Dict(dict):  # type: ignore[type-arg]
    pass


def _encode_both(state: Any) -> tuple[bytes, bytes]:
    """PickleSerializer.encode of ``state`` with encode_plain and without it."""
    from unittest import mock

    from dhruva import serialize

    serializer = serialize.PickleSerializer()
    with mock.patch.object(serialize, "_c_encode_plain", None):
        expected = serializer.encode(Item, state, lambda obj: (b"\0" * 8, Item))
    return serializer.encode(Item, state, lambda obj: (b"\0" * 8, Item)), expected


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), _plain))
def test_encode_writes_a_plain_state_as_the_python_path_does(state: dict[str, Any]) -> None:
    got, expected = _encode_both(state)
    assert got == expected


@needs_c
@pytest.mark.req("CONV-007")
def test_encode_plain_hands_back_every_state_that_is_not_plain_data() -> None:
    prefix = b"p"
    assert _c.encode_plain(prefix, {"a": [1, (2.5, "x"), {b"k": None}], 3: True}, pickle.dumps) == (
        prefix + pickle.dumps({"a": [1, (2.5, "x"), {b"k": None}], 3: True}, 5)
    )
    deep: Any = 1
    for _ in range(16):
        deep = [deep]
    assert _c.encode_plain(prefix, deep, pickle.dumps) is not None
    for unusual in (
        {"a": Item(1)},  # a persistent object inside
        {"a": [1, [Item(1)]]},
        {"a": _Str("x")},  # subclasses of plain types
        _Dict(a=1),
        {"a": {1, 2}},  # a set
        {"a": object()},
        [deep],  # 17 levels
        [{1, 2}] * 3000,  # not plain, and more entries than is_plain's budget
    ):
        assert _c.encode_plain(prefix, unusual, pickle.dumps) is None
    for state in ({"a": _Str("x")}, _Dict(a=1), {"a": {1, 2}}, [deep], list(range(5000))):
        got, expected = _encode_both(state)
        assert got == expected
    with pytest.raises(TypeError):
        _c.encode_plain("p", {}, pickle.dumps)


def test_a_persistent_object_in_a_state_is_a_reference_on_both_paths() -> None:
    from unittest import mock

    from dhruva import serialize

    def records() -> list[tuple[bytes, bytes, bytes]]:
        connection = Connection(MemoryStorage())
        connection.get_root()["x"] = Item({"plain": [1, 2], "inner": Item(5)})
        connection.commit()
        storage = connection.get_storage()
        return [(oid, storage.load(oid).data, storage.load(oid).refs) for oid in connection._loaded]

    with mock.patch.object(serialize, "_c_encode_plain", None):
        expected = records()
    assert records() == expected
    assert any(refs for _oid, _data, refs in expected)


def _refusing_dumps(*args: Any) -> bytes:
    raise AssertionError("encode_plain called pickle.dumps for a value it writes itself")


_written_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**31), 2**31 - 1)
    | st.floats()
    | st.text(st.characters(max_codepoint=127), max_size=300)
    | st.binary(max_size=300)
)
#: Values encode_plain pickles itself: plain data without big ints or non-ASCII strs.
_written = st.recursive(
    _written_leaf,
    lambda children: _containers(
        children, st.text(st.characters(max_codepoint=127)) | st.integers(0, 300)
    ),
    max_leaves=40,
)


@needs_c
@pytest.mark.req("CONV-006")
@settings(max_examples=500, deadline=None)
@given(_written)
def test_encode_plain_writes_what_pickle_dumps_writes_byte_for_byte(value: Any) -> None:
    assert _c.encode_plain(b"p", value, _refusing_dumps) == b"p" + pickle.dumps(value, 5)


@needs_c
@pytest.mark.req("CONV-006")
@settings(max_examples=300, deadline=None)
@given(_plain)
def test_encode_plain_of_any_plain_value_is_pickle_dumps(value: Any) -> None:
    assert _c.encode_plain(b"p", value, pickle.dumps) == b"p" + pickle.dumps(value, 5)


@needs_c
@pytest.mark.req("CONV-006")
def test_encode_plain_batches_frames_and_memo_as_pickle_does() -> None:
    shared_str, shared_tuple, shared_list = "shared", (1, 2), [1]
    values: list[Any] = [
        None,
        0,
        255,
        256,
        65535,
        65536,
        -1,
        -(2**31),
        2**31 - 1,
        -0.0,
        float("inf"),
        "",
        "x" * 300,
        b"",
        b"y" * 300,
        [],
        [1],
        list(range(1000)),
        list(range(1001)),
        list(range(2500)),
        {},
        {"a": 1},
        {n: n for n in range(1000)},  # pickle ends a multiple of 1000 with an empty batch
        {n: n for n in range(2000)},
        {n: n for n in range(1001)},
        (),
        (1,),
        (1, 2, 3),
        (1, 2, 3, 4),
        [shared_str, shared_str, {"k": shared_list, "j": shared_list}],
        [shared_tuple, shared_tuple, (), ()],
        [str(n) for n in range(300)],  # more than 256 memoized objects
        [str(n) for n in range(300)] * 2,  # ... and met again: LONG_BINGET past the 256th
        list(range(5000)),  # more entries than is_plain's budget, written by plain_dump
    ]
    recursive: list[Any] = [1]
    recursive.append(recursive)  # the memo answers the inner reference, as in pickle
    values.append(recursive)
    for value in values:
        assert _c.encode_plain(b"p", value, pickle.dumps) == b"p" + pickle.dumps(value, 5), value
    # Handed to pickle.dumps: beyond 32-bit ints, non-ASCII strs, a pickle over 32 KiB.
    for value in (2**31, -(2**31) - 1, "é", ["x" * 40_000]):
        with pytest.raises(AssertionError):
            _c.encode_plain(b"p", value, _refusing_dumps)
    # More than 4096 memoized objects (in under 32 KiB) is handed back too; so many
    # entries are past is_plain's budget, so the Python path decides.
    assert _c.encode_plain(b"p", [str(n) for n in range(4100)], _refusing_dumps) is None


# -- the ghost hook's load: Connection.load_state's steps in C --------------------------------


def _load_run(python: bool, seed: int) -> list[Any]:
    """Ghost loads of every kind, and what each leaves: through the C steps or Python's."""
    from unittest import mock

    from dhruva.error import ReadConflictError

    rng = random.Random(seed)
    storage = ConflictingStorage()
    writer = Connection(storage)
    root = writer.get_root()
    kinds = [Item, Counting, OwnState, Refusing, Slotted]
    for n in range(60):
        cls = kinds[rng.randrange(len(kinds))]
        obj: Any = cls() if cls is Slotted else cls(n) if cls is not Counting else Counting()
        if cls is Slotted:
            obj.x = n
        root[n] = obj
    writer.commit()
    original = Connection.load_state
    patch: Any = contextlib.nullcontext()
    if python:  # a load_state of the class's own: the hook calls it as a method
        patch = mock.patch.object(Connection, "load_state", lambda self, obj: original(self, obj))
    seen: list[Any] = []
    with patch:
        reader = Connection(storage)
        chunk = reader.get_root()
        for n in rng.sample(range(60), 60):
            obj = chunk[n]
            Refusing.fail = rng.random() < 0.1
            if rng.random() < 0.1:
                storage.stale = {obj._p_oid}
                storage.invalid = [obj._p_oid]
            try:
                read = obj.x if isinstance(obj, Slotted) else obj.__dict__.get("a")
                value = (read, obj._p_status)
            except (ValueError, ReadConflictError) as error:
                value = (type(error).__name__, str(error), obj._p_status)
            Refusing.fail = False
            seen.append(value)
            if rng.random() < 0.2:
                reader.abort()
        seen.append(
            (
                [(k, o._p_status, o._p_size) for k, o in reader._loaded.items()],
                [o._p_oid for o in reader._reads],
                reader.get_loaded_bytes(),
                reader.get_load_count(),
            )
        )
    return seen


@pytest.mark.req("CONN-015")
@pytest.mark.parametrize("seed", range(6))
def test_the_c_load_does_what_load_state_does(seed: int) -> None:
    assert _load_run(True, seed) == _load_run(False, seed)


def test_a_load_that_cannot_find_the_class_names_the_oid_on_both_paths() -> None:
    import types
    from unittest import mock

    module = types.ModuleType("dhruva_test_vanishing")

    class Thing(Persistent):
        pass

    Thing.__module__, Thing.__qualname__ = module.__name__, "Thing"
    module.Thing = Thing  # type: ignore[attr-defined]
    storage = MemoryStorage()
    with mock.patch.dict(sys.modules, {module.__name__: module}):
        writer = Connection(storage)
        writer.get_root()["v"] = Thing()
        writer.commit()

    def failure() -> tuple[str, list[str]]:
        reader = Connection(storage)
        with mock.patch.dict(sys.modules, {module.__name__: module}):
            ghost = reader.get_root()["v"]  # the root's state names the class: it is there
        with pytest.raises(SerializationError) as raised:
            ghost.anything  # noqa: B018 -- the ghost's own record: the class is gone
        return type(raised.value).__name__, getattr(raised.value, "__notes__", [])

    original = Connection.load_state
    with mock.patch.object(Connection, "load_state", lambda self, obj: original(self, obj)):
        expected = failure()
    assert failure() == expected
    assert expected[0] == "MissingClassError"
    assert any("while loading the object with oid" in note for note in expected[1])


@needs_c
def test_load_state_in_c_refuses_what_it_is_not_configured_for() -> None:
    with pytest.raises(TypeError):
        _c.load_state(Connection(MemoryStorage()))
    with pytest.raises(TypeError):
        _c.configure_connection(Connection, Connection.load_state, 1, SerializationError)


# -- the cache's map: dead weak references swept -----------------------------------------------


def _sweep_run(seed: int) -> list[Any]:
    """An oid -> weak reference map with some referents gone, swept; what is left, in order."""
    import weakref

    from dhruva.connection import _ObjectMap

    rng = random.Random(seed)
    objects = _ObjectMap()
    kept: list[Any] = []
    for n in range(200):
        obj = Item(n)
        key = n.to_bytes(8, "big")
        objects.data[key] = weakref.ref(obj)  # a plain weak reference, as weakref.ref makes
        if rng.random() < 0.6:
            kept.append(obj)
    objects.data[b"callable"] = lambda: None  # not a weak reference: called, as in Python
    objects._sweep()
    return [(key, ref() is not None) for key, ref in objects.data.items()]


@pytest.mark.parametrize("seed", range(3))
def test_the_sweep_keeps_what_the_python_sweep_keeps(seed: int) -> None:
    from unittest import mock

    from dhruva import connection as connection_module

    with mock.patch.object(connection_module, "_c_sweep_refs", None):
        expected = _sweep_run(seed)
    assert _sweep_run(seed) == expected
    assert all(alive for _key, alive in expected) and len(expected) < 200


@needs_c
def test_sweep_refs_takes_a_dict_only() -> None:
    with pytest.raises(TypeError):
        _c.sweep_refs([])
    failing = {b"x": lambda: 1 / 0}
    with pytest.raises(ZeroDivisionError):
        _c.sweep_refs(failing)
    assert list(failing) == [b"x"]


# --- the state decoded straight into the object's __dict__ (read_into_dict) ----------------


class Plain(Persistent):
    pass


def _states_loaded(python: bool, states: list[Any]) -> list[Any]:
    """Each state committed on a Plain, then loaded by a new connection's ghost hook.

    ``python``: Connection.load_state called as a method (the Python steps);
    else the C hook's own, which decodes a dict state into the __dict__.
    """
    from unittest import mock

    storage = MemoryStorage()
    writer = Connection(storage)
    root = writer.get_root()
    for n, state in enumerate(states):
        obj = Plain()
        obj.__dict__.update(state)
        root[n] = obj
    writer.commit()
    original = Connection.load_state
    patch: Any = contextlib.nullcontext()
    if python:
        patch = mock.patch.object(Connection, "load_state", lambda self, obj: original(self, obj))
    seen: list[Any] = []
    with patch:
        reader = Connection(storage)
        for n in range(len(states)):
            obj = reader.get_root()[n]
            assert obj._p_status == GHOST
            d = obj.__dict__  # through the ghost hook: the load
            seen.append(
                (
                    repr(d),
                    [type(k).__name__ for k in d],
                    # Every str key interned, as Persistent.__setstate__ interns them.
                    all(sys.intern(k) is k for k in d if type(k) is str),
                    # The same dict layout (its size): memory per loaded object.
                    sys.getsizeof(d),
                    obj._p_status,
                    obj._p_size,
                    type(obj).__name__,
                )
            )
        seen.append((reader.get_loaded_bytes(), reader.get_load_count()))
    return seen


_attribute_states = st.dictionaries(
    # Attribute names (none a method's: a state may not shadow __getstate__).
    st.text(min_size=1, max_size=12).filter(lambda name: not name.startswith("_")),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=8,
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_attribute_states, min_size=1, max_size=6))
def test_a_state_decoded_into_the_dict_is_the_state_setstate_installs(
    states: list[dict[str, Any]],
) -> None:
    assert _states_loaded(False, states) == _states_loaded(True, states)


def test_a_state_that_holds_itself_or_is_unusual_loads_as_in_python() -> None:
    shared: list[int] = [1, 2]
    states: list[Any] = [
        {},
        {"a": shared, "b": shared},  # one list twice: the memo
        {"x" * 40: 1, "caf\u00e9": "\u00e9t\u00e9", "n": 2**80, "f": -0.0},
        {"t": (1, (2, 3)), "b": b"bytes", "s": {1, 2}},  # a set: pickle.loads reads it
    ]
    assert _states_loaded(False, states) == _states_loaded(True, states)


@needs_c
def test_the_dict_decode_leaves_a_self_referencing_state_to_its_own_dict() -> None:
    storage = MemoryStorage()
    writer = Connection(storage)
    obj = Plain()
    obj.me = obj.__dict__  # the state holds itself
    writer.get_root()["o"] = obj
    writer.get_root()["first"] = Plain()
    writer.commit()
    reader = Connection(storage)
    # The first Plain read teaches the reader its class pickle; the C read is then taken.
    reader.get_root()["first"].__dict__  # noqa: B018
    loaded = reader.get_root()["o"]
    assert loaded._p_status == GHOST
    loaded.__dict__  # noqa: B018 -- the ghost hook's load
    # As Persistent.__setstate__ leaves it: the attribute is the state pickle's own dict,
    # a copy, not the object's __dict__.
    assert loaded.me is not loaded.__dict__
    assert loaded.me["me"] is loaded.me


@needs_c
def test_the_state_reader_is_read_pickle_state_with_its_two_arguments_bound() -> None:
    import gc

    calls: list[Any] = []

    def fallback(data: bytes, refs: bytes | None) -> str:
        calls.append((data, refs))
        return "fallback"

    known: dict[bytes, bool] = {}
    reader = _c.state_reader(known, fallback)
    assert reader(b"not a pickle", b"") == "fallback" and calls == [(b"not a pickle", b"")]
    assert known in gc.get_referents(reader) and fallback in gc.get_referents(reader)
    for bad in ((), (b"x",), (b"x", b"", b"")):
        with pytest.raises(TypeError):
            reader(*bad)
    with pytest.raises(TypeError):
        reader(b"x", refs=b"")
    with pytest.raises(TypeError):
        _c.state_reader(known)
