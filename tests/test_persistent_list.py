"""PersistentList behaves as list and records every change (dhruva/persistent_list.py)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import MutableSequence
from typing import Any

import pytest
from _persistent_fakes import PRIOR_STATES, FakeConnection, Op, check_against_builtin
from hypothesis import given, settings
from hypothesis import strategies as st

from dhruva.persistent import Persistent, PersistentObject
from dhruva.persistent_list import PersistentList

items = st.integers(0, 5)
lists = st.lists(items, max_size=8)
indexes = st.integers(-9, 9)
bounds = st.none() | st.integers(-9, 9)
slices = st.builds(slice, bounds, bounds, st.none() | st.sampled_from([-3, -2, -1, 0, 1, 2, 3]))
counts = st.integers(-1, 3)


def _inplace(operator: str, other: Any) -> Any:
    def apply(c: Any) -> Any:
        if operator == "+=":
            c += other
        else:
            c *= other
        return c

    return apply


def _extend_plain_list(other: list[int]) -> Any:
    """``plain += c`` gives the concatenation as a plain list.

    With a PersistentList on the right, ``__radd__`` takes over and ``plain``
    is rebound to a new list (DM-014); ``test_radd_*`` below checks that.
    """

    def apply(c: Any) -> Any:
        plain = list(other)
        plain += c
        return (type(plain), plain)

    return apply


def _add_persistent(other: list[int]) -> Any:
    """``c + PersistentList(other)``; the builtin model adds the plain list."""

    def apply(c: Any) -> Any:
        return c + (PersistentList(other) if isinstance(c, PersistentList) else other)

    return apply


def _iadd_persistent(other: list[int]) -> Any:
    """``c += PersistentList(other)``; the builtin model adds the plain list."""

    def apply(c: Any) -> Any:
        c += PersistentList(other) if isinstance(c, PersistentList) else other
        return c

    return apply


def _iadd_self(c: Any) -> Any:
    c += c
    return c


def _comparisons(other: list[int]) -> st.SearchStrategy[Op]:
    return st.sampled_from(
        [
            Op(f"== {other}", lambda c: c == other),
            Op(f"!= {other}", lambda c: c != other),
            Op(f"< {other}", lambda c: c < other),
            Op(f"<= {other}", lambda c: c <= other),
            Op(f"> {other}", lambda c: c > other),
            Op(f">= {other}", lambda c: c >= other),
            Op(f"== PersistentList({other})", lambda c: c == PersistentList(other)),
            Op(f"< PersistentList({other})", lambda c: c < PersistentList(other)),
            Op(f"PersistentList({other}) <=", lambda c: PersistentList(other) <= c),
            Op(f"{other} >", lambda c: other > c),
            Op(f"== tuple({other})", lambda c: c == tuple(other), reads=False),
            Op(f"< tuple({other})", lambda c: c < tuple(other), reads=False),
        ]
    )


READ_OPS = st.one_of(
    st.just(Op("len", len)),
    st.just(Op("bool", bool)),
    st.just(Op("iter", iter)),
    st.just(Op("reversed", reversed)),
    st.just(Op("copy", lambda c: c.copy())),
    st.just(Op("eq copy", lambda c: c == c.copy())),
    indexes.map(lambda i: Op(f"getitem {i}", lambda c: c[i])),
    slices.map(lambda s: Op(f"getitem {s}", lambda c: c[s])),
    items.map(lambda x: Op(f"contains {x}", lambda c: x in c)),
    items.map(lambda x: Op(f"count {x}", lambda c: c.count(x))),
    items.map(lambda x: Op(f"index {x}", lambda c: c.index(x))),
    st.tuples(items, indexes, indexes).map(lambda a: Op(f"index {a}", lambda c: c.index(*a))),
    lists.flatmap(_comparisons),
    lists.map(lambda other: Op(f"+ {other}", lambda c: c + other)),
    lists.map(lambda other: Op(f"{other} += c", _extend_plain_list(other))),
    lists.map(lambda other: Op(f"+ PersistentList({other})", _add_persistent(other))),
    st.just(Op("+ tuple", lambda c: c + (1,))),  # noqa: RUF005 -- the TypeError is the point
    st.just(Op("+ self", lambda c: c + c)),
    counts.map(lambda n: Op(f"* {n}", lambda c: c * n)),
    counts.map(lambda n: Op(f"{n} *", lambda c: n * c)),
    st.just(Op("* 'x'", lambda c: c * "x")),
)

WRITE_OPS = st.one_of(
    st.tuples(indexes, items).map(
        lambda a: Op(f"setitem {a}", lambda c: c.__setitem__(*a), mutating=True)
    ),
    st.tuples(slices, lists).map(
        lambda a: Op(f"setitem {a}", lambda c: c.__setitem__(*a), mutating=True)
    ),
    st.tuples(slices, lists).map(
        lambda a: Op(
            f"setitem {a[0]} PersistentList",
            lambda c: c.__setitem__(a[0], PersistentList(a[1])),
            mutating=True,
        )
    ),
    slices.map(lambda s: Op(f"setitem {s} self", lambda c: c.__setitem__(s, c), mutating=True)),
    slices.map(lambda s: Op(f"setitem {s} 5", lambda c: c.__setitem__(s, 5), mutating=True)),
    indexes.map(lambda i: Op(f"delitem {i}", lambda c: c.__delitem__(i), mutating=True)),
    slices.map(lambda s: Op(f"delitem {s}", lambda c: c.__delitem__(s), mutating=True)),
    items.map(lambda x: Op(f"append {x}", lambda c: c.append(x), mutating=True)),
    lists.map(lambda other: Op(f"extend {other}", lambda c: c.extend(other), mutating=True)),
    lists.map(
        lambda other: Op(f"extend iter {other}", lambda c: c.extend(iter(other)), mutating=True)
    ),
    st.just(Op("extend self", lambda c: c.extend(c), mutating=True)),
    st.just(Op("extend 5", lambda c: c.extend(5), mutating=True)),
    st.tuples(indexes, items).map(
        lambda a: Op(f"insert {a}", lambda c: c.insert(*a), mutating=True)
    ),
    st.just(Op("pop", lambda c: c.pop(), mutating=True)),
    indexes.map(lambda i: Op(f"pop {i}", lambda c: c.pop(i), mutating=True)),
    items.map(lambda x: Op(f"remove {x}", lambda c: c.remove(x), mutating=True)),
    st.just(Op("clear", lambda c: c.clear(), mutating=True)),
    st.just(Op("reverse", lambda c: c.reverse(), mutating=True)),
    st.just(Op("sort", lambda c: c.sort(), mutating=True)),
    st.just(Op("sort reverse", lambda c: c.sort(reverse=True), mutating=True)),
    st.just(Op("sort key", lambda c: c.sort(key=lambda x: -x), mutating=True)),
    st.just(Op("sort positional", lambda c: c.sort(None), mutating=True)),
    lists.map(lambda other: Op(f"+= {other}", _inplace("+=", other), mutating=True)),
    lists.map(lambda other: Op(f"+= tuple {other}", _inplace("+=", tuple(other)), mutating=True)),
    lists.map(
        lambda other: Op(f"+= PersistentList({other})", _iadd_persistent(other), mutating=True)
    ),
    st.just(Op("+= self", _iadd_self, mutating=True)),
    st.just(Op("+= 5", _inplace("+=", 5), mutating=True)),
    counts.map(lambda n: Op(f"*= {n}", _inplace("*=", n), mutating=True)),
)

STEPS = st.lists(st.tuples(st.sampled_from(PRIOR_STATES), st.one_of(READ_OPS, WRITE_OPS)))


@settings(deadline=None, max_examples=300)
@given(lists, STEPS)
def test_behaves_as_list_and_marks_changes(initial: list[int], steps: list[Any]) -> None:
    check_against_builtin(initial, PersistentList, lambda pl: pl.data, steps)


# -- construction and derived lists -----------------------------------------------------------


def test_constructor_accepts_what_list_accepts() -> None:
    assert PersistentList().data == []
    assert PersistentList([1, 2]).data == [1, 2]
    assert PersistentList(range(3)).data == [0, 1, 2]
    assert PersistentList(PersistentList("ab")).data == ["a", "b"]
    with pytest.raises(TypeError):
        PersistentList(5)  # type: ignore[arg-type]


def test_constructor_copies_its_argument() -> None:
    source = [1]
    pl = PersistentList(source)
    pl.append(2)
    assert source == [1]


def test_slices_are_plain_lists_and_derived_lists_keep_the_class() -> None:
    class Sub(PersistentList[int]):
        pass

    sub = Sub([1, 2, 3])
    assert type(sub[1:]) is list
    assert type(sub + [4]) is Sub  # noqa: RUF005
    assert type(sub * 2) is Sub
    assert type(2 * sub) is Sub
    assert type(sub.copy()) is Sub
    assert type(copy.copy(sub)) is Sub


@pytest.mark.req("DM-014")
def test_radd_a_list_or_tuple_on_the_left_gives_the_left_type() -> None:
    pl = PersistentList([1, 2])
    assert [0] + pl == [0, 1, 2] and type([0] + pl) is list  # noqa: RUF005
    assert (0,) + pl == (0, 1, 2) and type((0,) + pl) is tuple  # noqa: RUF005
    assert pl.data == [1, 2] and pl._p_is_unsaved()
    with pytest.raises(TypeError):
        _ = "ab" + pl  # type: ignore[operator]


@pytest.mark.req("DM-014")
def test_radd_makes_plain_list_plus_equals_rebind() -> None:
    # The documented cost of __radd__: ``items += pl`` is ``items = items + pl``.
    items = [0]
    alias = items
    items += PersistentList([1])
    assert items == [0, 1] and type(items) is list
    assert alias == [0] and items is not alias
    alias.extend(PersistentList([1]))
    assert alias == [0, 1]


def test_copy_is_an_independent_unsaved_instance() -> None:
    connection = FakeConnection()
    pl = PersistentList([[1]])
    connection.make_saved(pl)
    for duplicate in (pl.copy(), copy.copy(pl)):
        assert duplicate == pl
        assert duplicate._p_is_unsaved() and duplicate._p_oid is None
        duplicate.append(2)
        assert len(pl) == 1
        assert duplicate[0] is pl[0]  # shallow, as list.copy()
    deep = copy.deepcopy(pl)
    assert deep == pl and deep[0] is not pl[0]


def test_repr_shows_class_oid_and_contents() -> None:
    pl = PersistentList([1, "x"])
    assert repr(pl) == "<PersistentList None [1, 'x']>"
    FakeConnection().make_ghost(pl)
    assert repr(pl) == "<PersistentList 1 [1, 'x']>"
    pl.append(pl)
    assert "[...]" in repr(pl)


def test_is_a_mutable_sequence_and_generic() -> None:
    pl: PersistentList[int] = PersistentList()
    assert isinstance(pl, MutableSequence)
    # As in Durus, the containers are PersistentObjects (slots), not Persistents.
    assert isinstance(pl, PersistentObject) and not isinstance(pl, Persistent)
    assert PersistentList[int].__origin__ is PersistentList  # type: ignore[attr-defined]


def test_equality_and_order_with_other_types() -> None:
    pl = PersistentList([1, 2])
    assert pl != (1, 2)
    assert pl != 5
    assert pl == [1, 2]
    assert [1, 2] == pl  # noqa: SIM300 -- the reflected comparison is the point
    with pytest.raises(TypeError):
        _ = pl < (1, 2)
    with pytest.raises(TypeError):
        _ = pl < 5


def test_hashable_by_identity() -> None:
    a = PersistentList([1])
    b = PersistentList([1])
    assert a == b
    assert hash(a) == object.__hash__(a)
    cache = {a: "a", b: "b"}
    a.append(2)
    assert cache[a] == "a" and cache[b] == "b"


# -- persistence bookkeeping ------------------------------------------------------------------


def test_state_layout_is_durus_layout() -> None:
    pl = PersistentList([1, 2])
    assert pl.__getstate__() == {"data": [1, 2]}
    fresh = PersistentList.__new__(PersistentList)
    fresh.__setstate__({"data": [3]})
    assert fresh == [3]


def test_ghost_loads_on_first_read() -> None:
    connection = FakeConnection()
    pl = PersistentList([1, 2])
    connection.make_ghost(pl)
    assert pl[0] == 1
    assert connection.loaded == [pl] and connection.changed == []
    assert pl._p_is_saved()


def test_ghost_loads_on_first_mutation_and_is_marked_changed() -> None:
    connection = FakeConnection()
    pl = PersistentList([1, 2])
    connection.make_ghost(pl)
    pl.append(3)
    assert connection.loaded == [pl] and connection.changed == [pl]
    assert pl._p_is_unsaved()
    assert pl == [1, 2, 3]


def test_clear_of_an_empty_list_does_not_mark() -> None:
    connection = FakeConnection()
    pl = PersistentList[int]()
    connection.make_saved(pl)
    pl.clear()
    assert pl._p_is_saved() and connection.changed == []


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(protocol: int) -> None:
    pl = PersistentList([1, [2], PersistentList([3])])
    copied = pickle.loads(pickle.dumps(pl, protocol))
    assert type(copied) is PersistentList
    assert copied == pl and copied is not pl
    assert copied._p_is_unsaved() and copied._p_oid is None


def test_pickle_of_a_ghost_loads_it_and_copies_the_state() -> None:
    connection = FakeConnection()
    pl = PersistentList([1])
    connection.make_ghost(pl)
    copied = pickle.loads(pickle.dumps(pl))
    assert copied == [1] and copied._p_connection is None
