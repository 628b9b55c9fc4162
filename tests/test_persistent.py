"""Persistent and PersistentObject: states, ghosts, class swapping (dhruva/persistent.py).

These tests use a fake connection (tests/_persistent_fakes.py) so that they
test the object layer alone; tests/test_connection.py tests it with a real
Connection and storage.
"""

from __future__ import annotations

import copy
import pickle
import weakref
from typing import Any, Generic, TypeVar

import pytest
from _persistent_fakes import FakeConnection

from dhruva.persistent import GHOST, SAVED, UNSAVED, Persistent, PersistentObject

T = TypeVar("T")


class Point(Persistent):
    def __init__(self, x: int = 0, y: int = 0) -> None:
        self.x = x
        self.y = y

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


class Slotted(PersistentObject):
    __slots__ = ("__secret", "a", "b")

    def __init__(self, a: Any = None, secret: Any = None) -> None:
        self.a = a
        self.__secret = secret

    def secret(self) -> Any:
        return self.__secret


class SlottedWithDict(Slotted):
    """A subclass without __slots__: it has a __dict__ besides the slots."""


class Box(Persistent, Generic[T]):
    def __init__(self, content: T) -> None:
        self.content = content


def _ghost(obj: Any) -> FakeConnection:
    connection = FakeConnection()
    connection.make_ghost(obj)
    connection.reset()
    return connection


def _saved(obj: Any) -> FakeConnection:
    connection = FakeConnection()
    connection.make_saved(obj)
    return connection


def _tracked(obj: Any) -> FakeConnection:
    connection = FakeConnection()
    connection.make_tracked(obj)
    return connection


# -- states -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Point, Slotted])
def test_a_new_object_is_unsaved_and_detached(cls: type) -> None:
    obj = cls()
    assert obj._p_status == UNSAVED and obj._p_is_unsaved()
    assert obj._p_oid is None and obj._p_connection is None and obj._p_serial == 0
    assert obj._p_size == 0
    assert type(obj) is cls


def test_status_transitions() -> None:
    point = Point(1, 2)
    point._p_set_status_saved()
    assert point._p_status == SAVED and point._p_is_saved()
    point._p_set_status_unsaved()
    assert point._p_is_unsaved()
    _ghost(point)
    assert point._p_status == GHOST and point._p_is_ghost()
    assert object.__getattribute__(point, "__dict__") == {}


# -- class swapping is invisible ------------------------------------------------------------


@pytest.mark.req("CONN-003")
@pytest.mark.parametrize("make_state", [_ghost, _tracked], ids=["ghost", "tracked"])
@pytest.mark.parametrize("cls", [Point, Slotted, SlottedWithDict])
def test_class_swapping_is_invisible(make_state: Any, cls: type) -> None:
    obj = cls()
    plain_repr = repr(obj).replace("None", "1")
    make_state(obj)
    hidden = type(obj)
    assert hidden is not cls and issubclass(hidden, cls)
    assert (hidden.__name__, hidden.__qualname__, hidden.__module__) == (
        cls.__name__,
        cls.__qualname__,
        cls.__module__,
    )
    assert isinstance(obj, cls)
    assert obj.__class__ is cls
    assert repr(obj) == plain_repr
    assert hidden.__dict__["__slots__"] == ()


@pytest.mark.req("CONN-003")
def test_inspection_does_not_load_a_ghost() -> None:
    point = Point(1, 2)
    connection = _ghost(point)
    assert isinstance(point, Point) and point.__class__ is Point
    repr(point)
    hash(point)
    weakref.ref(point)
    assert connection.loaded == []
    assert point._p_is_ghost()


def test_every_class_gets_its_own_hidden_classes() -> None:
    for cls in (Point, Slotted, SlottedWithDict, Box):
        assert cls._p_class is cls
        assert cls._p_ghost_class._p_class is cls
        assert cls._p_tracked_class._p_class is cls
        assert cls._p_ghost_class is not cls._p_tracked_class


def test_generic_subclass_swaps_like_any_other() -> None:
    box = Box[int](3)
    _ghost(box)
    assert box.__class__ is Box
    assert box.content == 3
    assert type(box) is Box


# -- ghosts load on first access ----------------------------------------------------------


@pytest.mark.req("CONN-001")
@pytest.mark.parametrize("name", ["_p_oid", "_p_status", "_p_connection", "_p_serial", "_p_size"])
def test_reading_p_attributes_does_not_load(name: str) -> None:
    point = Point(1, 2)
    connection = _ghost(point)
    getattr(point, name)
    point._p_is_ghost()
    point._p_format_oid()
    assert connection.loaded == [] and point._p_is_ghost()


@pytest.mark.req("CONN-001")
@pytest.mark.parametrize(
    "read",
    [
        lambda p: p.x,
        lambda p: p.norm1(),
        lambda p: p.__dict__,
        lambda p: vars(p),
        lambda p: getattr(p, "missing", None),
        lambda p: hasattr(p, "y"),
    ],
    ids=["attribute", "method", "__dict__", "vars", "missing attribute", "hasattr"],
)
def test_reading_an_attribute_loads_a_ghost(read: Any) -> None:
    point = Point(1, -2)
    connection = _ghost(point)
    read(point)
    assert connection.loaded == [point]
    assert point._p_is_saved() and type(point) is Point
    assert (point.x, point.y, point.norm1()) == (1, -2, 3)
    assert connection.loaded == [point] and connection.changed == []


@pytest.mark.req("CONN-001")
def test_slots_object_loads_on_slot_access() -> None:
    slotted = Slotted(a=[1], secret="s")
    connection = _ghost(slotted)
    with pytest.raises(AttributeError):
        object.__getattribute__(slotted, "a")  # the ghost's slots are empty
    assert slotted.a == [1]
    assert slotted.secret() == "s"
    assert connection.loaded == [slotted] and type(slotted) is Slotted


def test_loading_a_ghost_without_a_connection_raises() -> None:
    point = Point()
    point._p_set_status_ghost()
    with pytest.raises(RuntimeError, match="no connection"):
        _ = point.x


def test_a_failed_load_leaves_a_ghost_that_can_load_later() -> None:
    point = Point(1, 2)
    connection = _ghost(point)
    states = connection.states
    connection.states = {}
    with pytest.raises(KeyError):
        _ = point.x
    assert point._p_is_ghost() and type(point) is Point._p_ghost_class
    connection.states = states
    assert point.x == 1


# -- changes ------------------------------------------------------------------------------------


@pytest.mark.req("CONN-002")
@pytest.mark.parametrize(
    "change",
    [lambda p: setattr(p, "x", 5), lambda p: delattr(p, "y"), lambda p: setattr(p, "z", 0)],
    ids=["set", "delete", "add"],
)
def test_setattr_and_delattr_mark_a_saved_object_changed(change: Any) -> None:
    point = Point(1, 2)
    connection = _saved(point)
    change(point)
    assert point._p_is_unsaved()
    assert connection.changed == [point]
    point.x = 7
    assert connection.changed == [point]  # told once per transaction


@pytest.mark.req("CONN-002")
def test_setattr_on_a_ghost_loads_it_first() -> None:
    point = Point(1, 2)
    connection = _ghost(point)
    point.x = 5
    assert connection.loaded == [point] and connection.changed == [point]
    assert point._p_is_unsaved() and type(point) is Point
    assert (point.x, point.y) == (5, 2)


@pytest.mark.req("CONN-002")
def test_delattr_on_a_ghost_loads_it_first() -> None:
    point = Point(1, 2)
    connection = _ghost(point)
    del point.y
    assert connection.loaded == [point] and connection.changed == [point]
    assert point.__dict__ == {"x": 1}


@pytest.mark.req("CONN-002")
def test_setattr_on_a_slots_object_marks_it_changed() -> None:
    slotted = Slotted(a=1)
    connection = _ghost(slotted)
    slotted.b = 2
    assert connection.loaded == [slotted] and connection.changed == [slotted]
    assert slotted.__getstate__() == {"a": 1, "b": 2, "_Slotted__secret": None}


def test_setting_p_attributes_does_not_mark() -> None:
    point = Point(1, 2)
    connection = _saved(point)
    point._p_serial = 9
    assert point._p_is_saved() and connection.changed == []


def test_an_unsaved_object_does_not_call_the_connection_again() -> None:
    point = Point(1, 2)
    connection = _saved(point)
    point._p_set_status_unsaved()
    point.x = 3
    point._p_note_change()
    assert connection.changed == []


def test_note_change_loads_a_ghost_and_marks_it() -> None:
    point = Point(1, 2)
    connection = _ghost(point)
    point._p_note_change()
    assert connection.loaded == [point] and connection.changed == [point]
    assert point._p_is_unsaved() and point.__dict__ == {"x": 1, "y": 2}


def test_in_place_mutation_of_a_plain_attribute_needs_note_change() -> None:
    point = Point(1, 2)
    point.x = [1]  # type: ignore[assignment]
    connection = _saved(point)
    point.x.append(2)  # type: ignore[attr-defined]
    assert point._p_is_saved() and connection.changed == []
    point._p_note_change()
    assert connection.changed == [point]


# -- tracked objects (the cache's second chance) --------------------------------------------


def test_any_access_swaps_a_tracked_object_back() -> None:
    point = Point(1, 2)
    connection = _tracked(point)
    assert point._p_is_tracked()
    _ = point._p_status  # bookkeeping does not count as use
    assert point._p_is_tracked()
    assert point.x == 1
    assert not point._p_is_tracked() and type(point) is Point
    assert point._p_is_saved() and connection.loaded == []


def test_changing_a_tracked_object_swaps_it_back_and_marks_it() -> None:
    point = Point(1, 2)
    connection = _tracked(point)
    point.x = 3
    assert type(point) is Point and point._p_is_unsaved()
    assert connection.changed == [point]


def test_tracking_is_only_for_loaded_objects() -> None:
    point = Point(1, 2)
    _ghost(point)
    point._p_set_tracked()
    assert type(point) is Point._p_ghost_class


def test_ghosting_a_tracked_object_makes_a_ghost() -> None:
    point = Point(1, 2)
    connection = _tracked(point)
    point._p_set_status_ghost()
    assert type(point) is Point._p_ghost_class
    assert point.x == 1 and connection.loaded == [point]


# -- slots --------------------------------------------------------------------------------


def test_slots_state_includes_mangled_names_and_the_dict() -> None:
    slotted = SlottedWithDict(a=1, secret=2)
    slotted.extra = 3
    assert slotted.__getstate__() == {"a": 1, "_Slotted__secret": 2, "extra": 3}
    _ghost(slotted)
    assert object.__getattribute__(slotted, "__dict__") == {}
    assert slotted.extra == 3  # type: ignore[attr-defined]
    assert (slotted.a, slotted.secret()) == (1, 2)


def test_unset_slots_are_left_out_of_the_state() -> None:
    slotted = Slotted(a=1)
    assert "b" not in slotted.__getstate__()
    fresh = Slotted.__new__(Slotted)
    fresh.__setstate__({"a": 5})
    assert fresh.a == 5
    with pytest.raises(AttributeError):
        _ = fresh.b


def test_setting_an_objects_own_state_back_keeps_it() -> None:
    """``obj.__setstate__(obj.__getstate__())``: for a Persistent the same dict."""
    from dhruva.persistent_dict import PersistentDict
    from dhruva.persistent_list import PersistentList
    from dhruva.persistent_set import PersistentSet

    objects = [*_persistent_objects(), PersistentDict(a=1), PersistentList([1]), PersistentSet([1])]
    for obj in objects:
        state = obj.__getstate__()
        expected = copy.deepcopy(state)
        obj.__setstate__(state)
        assert obj.__getstate__() == expected, type(obj).__name__


# -- pickling and copying outside a database --------------------------------------------------


def _persistent_objects() -> list[Any]:
    return [Point(1, 2), Slotted(a=[1], secret="s"), SlottedWithDict(a=1), Box("c")]


def _state(obj: Any) -> Any:
    return obj.__getstate__()


@pytest.mark.req("CONN-004")
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip_gives_a_new_unsaved_object(protocol: int) -> None:
    for obj in _persistent_objects():
        _saved(obj)
        copied = pickle.loads(pickle.dumps(obj, protocol))
        assert type(copied) is obj.__class__
        assert _state(copied) == _state(obj)
        assert copied._p_is_unsaved()
        assert copied._p_oid is None and copied._p_connection is None


@pytest.mark.req("CONN-004")
@pytest.mark.parametrize("make_state", [_ghost, _tracked], ids=["ghost", "tracked"])
def test_pickling_a_ghost_or_tracked_object_pickles_the_real_class(make_state: Any) -> None:
    point = Point(1, 2)
    make_state(point)
    copied = pickle.loads(pickle.dumps(point))
    assert type(copied) is Point and copied.__dict__ == {"x": 1, "y": 2}


@pytest.mark.req("CONN-004")
def test_copy_is_shallow_and_independent() -> None:
    for obj in _persistent_objects():
        _saved(obj)
        duplicate = copy.copy(obj)
        assert type(duplicate) is obj.__class__ and duplicate is not obj
        assert _state(duplicate) == _state(obj)
        assert duplicate._p_is_unsaved() and duplicate._p_oid is None
    point = Point([1], 2)  # type: ignore[arg-type]
    duplicate = copy.copy(point)
    assert duplicate.x is point.x
    duplicate.y = 5
    assert point.y == 2


@pytest.mark.req("CONN-004")
def test_deepcopy_copies_the_graph_including_cycles() -> None:
    point = Point([1], 2)  # type: ignore[arg-type]
    point.me = point
    connection = _ghost(point)
    deep = copy.deepcopy(point)
    assert connection.loaded == [point]
    assert type(deep) is Point and deep.me is deep  # type: ignore[attr-defined]
    assert deep.x == [1] and deep.x is not point.x
    assert deep._p_is_unsaved() and deep._p_connection is None


def test_weak_references_survive_state_changes() -> None:
    point = Point(1, 2)
    ref = weakref.ref(point)
    _ghost(point)
    assert ref() is point
    assert point.x == 1 and ref() is point


def test_persistent_subclass_with_state_slots_is_refused() -> None:
    # Persistent keeps its state in __dict__; slot values would be lost at commit.
    with pytest.raises(TypeError, match="PersistentObject"):

        class Slotted(Persistent):
            __slots__ = ("x",)


@pytest.mark.req("CONN-022")
def test_p_size_holds_the_record_bytes_each_loaded_object_counts_for() -> None:
    # The connection keeps each loaded object's record size in its _p_size
    # slot (not in a dict by oid); get_loaded_bytes is their sum.
    from dhruva.connection import Connection
    from dhruva.storage import MemoryStorage

    storage = MemoryStorage()
    writer = Connection(storage)
    writer.get_root()["points"] = [Point(n, n) for n in range(5)]
    writer.commit()
    sizes = [p._p_size for p in writer.get_root()["points"]]
    assert all(size > 0 for size in sizes)
    reader = Connection(storage, cache_size=0)
    root = reader.get_root()
    points = root["points"]
    assert all(p._p_size == 0 and p._p_is_ghost() for p in points)
    for point in points:
        point.x  # noqa: B018 -- loads the point
    assert [p._p_size for p in points] == sizes
    assert reader.get_loaded_bytes() == sum(sizes) + root._p_size
    points[0].x = 99
    reader.commit()  # the changed point is counted at its new size; the cache shrinks to 0
    assert reader.get_loaded_bytes() == 0
    assert all(p._p_size == 0 and p._p_is_ghost() for p in points)
